"""Train the two-tower model and write a versioned artefact (optionally publish it to Firestore).

    python -m pipelines.training --data synthetic --epochs 1 --model-dir artifacts/models
    python -m pipelines.training --data ../shared/data/ml-latest-small --epochs 10 --publish
    python -m pipelines.training --data events/ --init-from v20260101-120000-abc123   # warm start

``--data`` is a data set name (``synthetic``, ``ml-latest-small``, ``gowalla``, ``ml-100k``), a
JSON-lines/CSV events file, or a directory (e.g. the pipeline's event archive of JSON-lines files),
all read by :func:`pipelines.data.load_dataset`. ``--model-dir`` may be a ``gs://`` URI.

Warm start (``--init-from VERSION``): the parent's vocabularies are extended with the new users and
items (old ids keep their rows; a new row starts as the parent's out-of-vocabulary row, i.e. where
an unknown id was), the parent's content encoder is kept, and only events newer than the parent's
training data (``metadata.data_max_timestamp``, or ``--since``) become training targets; older
events in ``--data`` still serve as the users' histories. Unless given, epochs default to 2 and the
learning rate to 0.2x the parent's.

Serving defaults (``--tune-defaults``, on unless warm starting): a model with the same settings is
trained on the events minus a validation slice (each user's newest 10% of items; a random 10% with
``--validation-holdout random``), and the function's ranking (:mod:`scoring.rank`) is swept over
alpha and the pool on that slice (:func:`pipelines.evaluation.served.choose_defaults`); the choice
goes into ``metadata.json``, the snapshot and ``models/{version}``, used when a request gives no
``alpha``. A warm-started version keeps its parent's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import uris

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines.training import artifact  # noqa: E402
from pipelines.training.features import (  # noqa: E402
    RESERVED,
    BatchMaker,
    Examples,
    FeatureSpace,
    Sequences,
    build_examples,
    fingerprint,
    item_content_table,
)
from pipelines.training.model import (  # noqa: E402
    ModelConfig,
    TowerSizes,
    TwoTowerModel,
    assign_weights,
    build_model,
    candidate_vectors,
    epoch_learning_rate,
    user_table,
)
from schemas.catalog import CatalogItem  # noqa: E402
from schemas.content import ContentEncoder  # noqa: E402

log = logging.getLogger("pipelines.training.train")

# Warm-start defaults (override with --epochs / --learning-rate). On ml-latest-small (newest 5% of
# train events, 2 epochs) a 0.2x learning rate kept Recall@20 of old test users at the parent's
# level (0.139 -> 0.144) where the full rate lost 5.6% (0.149 -> 0.141).
WARM_EPOCHS = 2
WARM_LR_SCALE = 0.2
CURRENT = "current"  # --init-from current: the version models/current names


@dataclass
class TrainingInput:
    """Interactions as parallel arrays of ids and times, plus the catalogue."""

    user_ids: np.ndarray  # str [n]
    item_ids: np.ndarray  # str [n]
    timestamps: np.ndarray  # int64 [n]
    catalogue: list[CatalogItem]

    @classmethod
    def from_dataset(cls, dataset: Any) -> TrainingInput:
        """From a :class:`pipelines.data.Dataset` (its training events only)."""
        inter = dataset.interactions()
        users = np.asarray(inter.user_ids, dtype=object)
        items = np.asarray(inter.item_ids, dtype=object)
        return cls(user_ids=users[inter.user_idx], item_ids=items[inter.item_idx],
                   timestamps=np.asarray(inter.timestamps, dtype=np.int64), catalogue=list(dataset.items))

    def __len__(self) -> int:
        return int(len(self.user_ids))

    def fingerprint(self) -> str:
        users, u = np.unique(self.user_ids.astype(str), return_inverse=True)
        items, i = np.unique(self.item_ids.astype(str), return_inverse=True)
        return fingerprint(users.tolist(), items.tolist(), u, i, self.timestamps)


@dataclass
class TrainedModel:
    """A trained model with its vocabularies and the sequences it was trained on."""

    model: TwoTowerModel
    space: FeatureSpace
    config: ModelConfig
    seqs: Sequences
    catalogue: list[CatalogItem]
    popularity: dict[str, float]
    data_fingerprint: str
    data_max_timestamp: int
    history_mode: str
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    n_examples: int = 0
    parent_version: str | None = None
    epoch_metrics: list[dict[str, Any]] = field(default_factory=list)

    def user_embeddings(self, users: np.ndarray, histories: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Query embeddings for model user indices and index histories ``[B, N]``."""
        out = [self.model.query_tower({"user": users[s:s + chunk], "history": histories[s:s + chunk]},
                                      training=False).numpy() for s in range(0, len(users), chunk)]
        return np.concatenate(out) if out else np.zeros((0, self.config.dim), np.float32)

    def neighbor_means(self) -> np.ndarray | None:
        """Per item row, the mean embedding of its training users (``item_graph``; else None)."""
        adjacency = self.seqs.inverted(len(self.space.items) + RESERVED) if self.config.item_graph else None
        return None if adjacency is None else adjacency.row_means(user_table(self.model.query_tower))

    def item_embeddings(self, chunk: int = 16384) -> np.ndarray:
        """Candidate embeddings of every row of the item table (rows 0, 1 are padding and OOV)."""
        table = item_content_table(self.space, {i.item_id: i for i in self.catalogue})
        rows = len(self.space.items) + RESERVED
        items = np.arange(rows, dtype=np.int32)
        means = self.neighbor_means()
        out = []
        for s in range(0, rows, chunk):
            feats = {k: v[s:s + chunk] for k, v in table.items()}
            feats["item"] = items[s:s + chunk]
            out.append(candidate_vectors(self.model.candidate_tower, feats, means))
        return np.concatenate(out)

    def candidate_embeddings(self, item_ids: Sequence[str], chunk: int = 16384) -> np.ndarray:
        """Candidate embeddings of items by id; ids outside the vocabulary use their content alone."""
        catalogue = {i.item_id: i for i in self.catalogue}
        empty = CatalogItem(item_id="", title="", category="", brand="", price=0.0, tags=(),
                            in_stock=True, updated_at=0)
        means = self.neighbor_means()
        out = []
        for s in range(0, len(item_ids), chunk):
            ids = list(item_ids[s:s + chunk])
            feats = self.space.encode_content([catalogue.get(i, empty) for i in ids])
            feats["item"] = self.space.encode_items(ids)
            out.append(candidate_vectors(self.model.candidate_tower, feats, means))
        return np.concatenate(out) if out else np.zeros((0, self.config.dim), np.float32)

    def params(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "history_mode": self.history_mode}


def _vocab_in_order(ids: np.ndarray, timestamps: np.ndarray, known: Sequence[str] = ()) -> list[str]:
    """``known`` followed by the ids not in it, in order of first appearance in time."""
    order = np.argsort(timestamps, kind="stable")
    seen = set(known)
    out = list(known)
    for x in dict.fromkeys(ids[order].tolist()):
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def _encode(data: TrainingInput, space: FeatureSpace) -> tuple[np.ndarray, np.ndarray]:
    return (space.encode_users(data.user_ids.tolist()), space.encode_items(data.item_ids.tolist()))


def _item_probability(items: np.ndarray, n_rows: int) -> np.ndarray:
    counts = np.bincount(items, minlength=n_rows).astype(np.float64)
    counts[counts == 0] = 1.0  # never sampled in-batch; any positive value avoids log(0)
    return (counts / counts.sum()).astype(np.float32)


def _tf_dataset(maker: BatchMaker, ex: Examples, batch_size: int, rng: np.random.Generator,
                sample: dict[str, np.ndarray]) -> tf.data.Dataset:
    signature = {k: tf.TensorSpec(shape=(None,) + v.shape[1:], dtype=tf.as_dtype(v.dtype))
                 for k, v in sample.items()}
    return tf.data.Dataset.from_generator(lambda: maker.epoch(ex, batch_size, rng),
                                          output_signature=signature).prefetch(2)


EpochCallback = Callable[[int, "TrainedModel"], dict[str, Any] | None]


def fit(trained: TrainedModel, maker: BatchMaker, examples: Examples,
        on_epoch: EpochCallback | None = None) -> TrainedModel:
    """Run ``config.epochs`` epochs over ``examples``; record losses and time."""
    cfg = trained.config
    rng = np.random.default_rng(cfg.seed)
    trained.n_examples = len(examples)
    if len(examples) == 0:
        log.warning("no training examples: the model keeps its initial weights")
        return trained
    sample = maker.batch(examples, np.arange(min(2, len(examples))), rng)
    start = time.monotonic()
    for epoch in range(cfg.epochs):
        t0 = time.monotonic()
        trained.model.optimizer.learning_rate = epoch_learning_rate(cfg, epoch)
        hist = trained.model.fit(_tf_dataset(maker, examples, cfg.batch_size, rng, sample),
                                 epochs=1, verbose=0)
        loss = float(hist.history["loss"][-1])
        trained.losses.append(loss)
        trained.train_seconds = time.monotonic() - start
        extra = on_epoch(epoch, trained) if on_epoch else None
        if extra:
            trained.epoch_metrics.append({"epoch": epoch + 1, **extra})
        log.info("epoch %d/%d loss %.4f (%.1fs)%s", epoch + 1, cfg.epochs, loss, time.monotonic() - t0,
                 f" {extra}" if extra else "")
        trained.train_seconds = time.monotonic() - start
    return trained


def _batch_maker(space: FeatureSpace, cfg: ModelConfig, seqs: Sequences, items: np.ndarray,
                 catalogue: list[CatalogItem], history_mode: str) -> BatchMaker:
    rows = len(space.items) + RESERVED
    has_content = any(i.category or i.brand or i.tags for i in catalogue)
    return BatchMaker(
        seqs=seqs, content=item_content_table(space, {i.item_id: i for i in catalogue}),
        item_probability=_item_probability(items, rows), history_length=cfg.history_length,
        history_mode=history_mode, item_id_dropout=cfg.item_id_dropout if has_content else 0.0,
        user_id_dropout=cfg.user_id_dropout, negatives=cfg.bpr_negatives if cfg.loss == "bpr" else 0,
        n_item_rows=rows, uniform_negatives=cfg.uniform_negatives if cfg.loss != "bpr" else 0,
        history_sample=cfg.history_sample, graph_neighbors=cfg.item_graph)


def _popularity(ids: np.ndarray) -> dict[str, float]:
    values, counts = np.unique(ids.astype(str), return_counts=True)
    return {str(v): float(c) for v, c in zip(values, counts)}


def train(data: TrainingInput, config: ModelConfig, history_mode: str = "before",
          on_epoch: EpochCallback | None = None) -> TrainedModel:
    """Train from scratch on every interaction in ``data``."""
    if len(data) == 0:
        raise ValueError("no interactions to train on")
    space = FeatureSpace(users=_vocab_in_order(data.user_ids, data.timestamps),
                         items=_vocab_in_order(data.item_ids, data.timestamps),
                         encoder=ContentEncoder.fit(data.catalogue), max_tags=config.max_tags)
    model = build_model(TowerSizes(**space.sizes()), config)
    users, items = _encode(data, space)
    seqs = Sequences.build(users, items, data.timestamps, len(space.users) + RESERVED)
    trained = TrainedModel(model=model, space=space, config=config, seqs=seqs, catalogue=data.catalogue,
                           popularity=_popularity(data.item_ids), data_fingerprint=data.fingerprint(),
                           data_max_timestamp=int(data.timestamps.max()), history_mode=history_mode)
    maker = _batch_maker(space, config, seqs, items, data.catalogue, history_mode)
    return fit(trained, maker, build_examples(seqs), on_epoch)


@dataclass
class Parent:
    """A previous version loaded for warm start."""

    version: str
    path: Path
    metadata: dict[str, Any]
    users: list[str]
    items: list[str]
    encoder: ContentEncoder
    query_weights: dict[str, np.ndarray]
    candidate_weights: dict[str, np.ndarray]
    popularity: dict[str, float]

    @classmethod
    def load(cls, path: Path) -> Parent:
        towers_meta = json.loads((path / artifact.METADATA_FILE).read_text("utf-8"))
        index = artifact.IndexSnapshot.load(path / artifact.INDEX_FILE)
        return cls(version=towers_meta["version"], path=path, metadata=towers_meta,
                   users=artifact._read_vocab(path / artifact.VOCAB_DIR / "users.txt"),
                   items=artifact._read_vocab(path / artifact.VOCAB_DIR / "items.txt"),
                   encoder=ContentEncoder.load(path / artifact.CONTENT_FILE),
                   query_weights=artifact.load_weights(path / artifact.WEIGHTS_DIR / "query.npz"),
                   candidate_weights=artifact.load_weights(path / artifact.WEIGHTS_DIR / "candidate.npz"),
                   popularity={str(i): float(p) for i, p in zip(index.item_ids, index.popularity)})

    def config(self, **overrides: Any) -> ModelConfig:
        params = {k: v for k, v in self.metadata.get("params", {}).items()}
        params.update({k: v for k, v in overrides.items() if v is not None})
        return ModelConfig.from_dict(params)


def warm_start(parent: Parent, data: TrainingInput, config: ModelConfig, since: int | None = None,
               history_mode: str | None = None, on_epoch: EpochCallback | None = None) -> TrainedModel:
    """Fine-tune ``parent`` on the events of ``data`` newer than ``since``.

    Older events in ``data`` are used only as history. ``config`` must keep the parent's
    architecture (dim, normalisation, sharing); epochs and learning rate may differ.
    """
    if since is None:
        since = int(parent.metadata.get("data_max_timestamp", -1))
    history_mode = history_mode or parent.metadata.get("params", {}).get("history_mode", "before")
    space = FeatureSpace(users=_vocab_in_order(data.user_ids, data.timestamps, parent.users),
                         items=_vocab_in_order(data.item_ids, data.timestamps, parent.items),
                         encoder=parent.encoder, max_tags=config.max_tags)
    model = build_model(TowerSizes(**space.sizes()), config)
    for tower, weights in ((model.query_tower, parent.query_weights),
                           (model.candidate_tower, parent.candidate_weights)):
        missing = assign_weights(tower, weights)
        if missing:
            raise ValueError(f"parent {parent.version} lacks variables {missing}: "
                             "warm start needs the same architecture")
    users, items = _encode(data, space)
    seqs = Sequences.build(users, items, data.timestamps, len(space.users) + RESERVED)
    is_new = data.timestamps > since
    old_counts = np.bincount(users[~is_new], minlength=len(space.users) + RESERVED)
    examples = build_examples(seqs, min_position=old_counts)
    from pipelines.training.publish import merge_catalogue

    catalogue = merge_catalogue(parent.path, data.catalogue)
    popularity = dict(parent.popularity)
    for item_id, count in _popularity(data.item_ids[is_new]).items():
        popularity[item_id] = popularity.get(item_id, 0.0) + count
    trained = TrainedModel(model=model, space=space, config=config, seqs=seqs, catalogue=catalogue,
                           popularity=popularity, data_fingerprint=data.fingerprint(),
                           data_max_timestamp=int(max(data.timestamps.max(), since)),
                           history_mode=history_mode, parent_version=parent.version)
    maker = _batch_maker(space, config, seqs, items, catalogue, history_mode)
    return fit(trained, maker, examples, on_epoch)


def save(trained: TrainedModel, model_dir: str | Path, metrics: dict[str, Any] | None = None,
         serving_defaults: dict[str, Any] | None = None) -> Path:
    """Write the artefact for ``trained`` under ``model_dir`` (local); returns the version dir.

    ``serving_defaults``: :meth:`scoring.rank.ScoringDefaults.to_dict` of the measured defaults.
    """
    all_metrics = {"train_loss": trained.losses, "train_seconds": round(trained.train_seconds, 3),
                   "n_examples": trained.n_examples, "epochs": trained.epoch_metrics,
                   **(metrics or {})}
    contents = artifact.ArtifactContents(
        space=trained.space, catalogue=trained.catalogue, popularity=trained.popularity,
        data_fingerprint=trained.data_fingerprint, params=trained.params(), metrics=all_metrics,
        parent_version=trained.parent_version,
        extra_metadata={"data_max_timestamp": trained.data_max_timestamp},
        serving_defaults=serving_defaults, neighbor_means=trained.neighbor_means())
    return artifact.write_artifact(model_dir, trained.model.query_tower, trained.model.candidate_tower,
                                   contents, trained.config.history_length)


def load_input(spec: str, data_dir: str | None = None) -> TrainingInput:
    """Events and catalogue from a data set name, file or directory."""
    from pipelines.data import load_dataset

    kwargs = {"data_dir": data_dir} if data_dir else {}
    return TrainingInput.from_dataset(load_dataset(spec, **kwargs))


def _config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = ModelConfig()
    g = parser.add_argument_group("model")
    for f in dataclasses.fields(ModelConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default {default})")
        else:
            g.add_argument(flag, type=type(default), default=None, help=f"(default {default})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data set name, events file or directory")
    parser.add_argument("--data-dir", default=None, help="root of the named data sets (env DATA_DIR)")
    parser.add_argument("--model-dir", default="artifacts/models", help="local dir or gs:// URI")
    parser.add_argument("--history-mode", choices=("before", "others"), default=None,
                        help="history of a training example: interactions before it (default), or "
                             "the user's others with the target removed")
    parser.add_argument("--init-from", default=None,
                        help="warm start from this version (or path); 'current' = the version "
                             "models/current names in Firestore (full training if there is none)")
    parser.add_argument("--since", type=int, default=None,
                        help="warm start: events after this epoch-ms are new (default: parent's data end)")
    parser.add_argument("--publish", action="store_true", help="publish the version to Firestore")
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"))
    parser.add_argument("--publish-users", action="store_true",
                        help="with --publish: also write fresh embeddings of known users")
    parser.add_argument("--tune-defaults", action=argparse.BooleanOptionalAction, default=None,
                        help="measure alpha and the candidate pool on a validation slice (default: on, "
                             "off for a warm start, which keeps the parent's)")
    parser.add_argument("--validation-holdout", choices=("temporal", "random"), default="temporal",
                        help="validation slice: each user's newest 10%% of items, or a random 10%%")
    _config_flags(parser)
    return parser.parse_args(argv)


def resolve_init_from(spec: str | None, project: str | None, client: Any = None) -> str | None:
    """The parent version to warm start from: ``spec`` itself, or for ``"current"`` the version
    that ``models/current`` names in Firestore (``None`` when no model was published yet)."""
    if spec != CURRENT:
        return spec
    from schemas import names
    from schemas.firestore import CurrentModelDoc

    if client is None:
        from google.cloud import firestore

        client = firestore.Client(project=project)
    snap = client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).get()
    if not snap.exists:
        log.warning("--init-from current: no models/current yet, training from scratch")
        return None
    return CurrentModelDoc.from_document(snap.to_dict()).version


def tune_defaults(data: TrainingInput, config: ModelConfig, history_mode: str, holdout: str = "temporal"
                  ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(serving defaults, validation report)`` measured on a slice of ``data`` (see the module doc).

    The slice (``holdout``: each user's newest 10% of items, or a random 10%) is never trained on:
    a model with ``config`` is trained on the rest and swept by
    :func:`pipelines.evaluation.served.measure_defaults`.
    """
    from pipelines.evaluation.served import VALIDATION_FRACTION, measure_defaults, validation_split

    t0 = time.monotonic()
    vsplit = validation_split(data, holdout, VALIDATION_FRACTION, seed=config.seed)
    r = vsplit.train_rows
    sub = TrainingInput(user_ids=np.asarray(r.user_ids, dtype=object)[r.user_idx],
                        item_ids=np.asarray(r.item_ids, dtype=object)[r.item_idx],
                        timestamps=np.asarray(r.timestamps), catalogue=data.catalogue)
    trained = train(sub, config, history_mode=history_mode)
    defaults, report = measure_defaults(trained, vsplit, seed=config.seed)
    report.update(holdout=holdout, fraction=VALIDATION_FRACTION, train_events=len(sub),
                  seconds=round(time.monotonic() - t0, 1))
    return (defaults.to_dict() if defaults is not None else None), report


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelConfig)
            if getattr(args, f.name) is not None}


def run(argv: Sequence[str] | None = None) -> Path:
    """CLI entry point; returns the written version directory (local)."""
    args = parse_args(argv)
    data = load_input(args.data, args.data_dir)
    log.info("loaded %d interactions, %d catalogue items from %s", len(data), len(data.catalogue), args.data)
    remote = uris.is_gcs(args.model_dir)
    local_dir = artifact.cache_dir() / "staging" if remote else Path(args.model_dir)
    init_from = resolve_init_from(args.init_from, args.project)
    defaults: dict[str, Any] | None = None
    metrics: dict[str, Any] = {}
    if init_from:
        parent = Parent.load(artifact.find_version(args.model_dir, init_from))
        overrides = _overrides(args)
        overrides.setdefault("epochs", WARM_EPOCHS)
        overrides.setdefault("learning_rate", parent.config().learning_rate * WARM_LR_SCALE)
        config = parent.config(**overrides)
        trained = warm_start(parent, data, config, since=args.since, history_mode=args.history_mode)
        defaults = parent.metadata.get("serving_defaults")
    else:
        config = ModelConfig(**_overrides(args))
        trained = train(data, config, history_mode=args.history_mode or "before")
    if args.tune_defaults or (args.tune_defaults is None and not init_from):
        defaults, metrics["serving_defaults_validation"] = tune_defaults(
            data, config, trained.history_mode, args.validation_holdout)
    path = save(trained, local_dir, metrics, defaults)
    uri = artifact.upload(path, args.model_dir) if remote else str(path.resolve())
    log.info("wrote %s (%d examples, %.1fs)", uri, trained.n_examples, trained.train_seconds)
    if args.publish:
        from pipelines.training import publish

        publish.publish_version(path, artifact_uri=uri, project=args.project,
                                publish_users=args.publish_users)
        log.info("published %s", path.name)
    print(uri)
    return path


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run()
    except (ValueError, artifact.ArtifactError, OSError) as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
