"""The versioned model artefact: write it, read it, and embed users and items with it.

Layout (docs/architecture.md, "Model artefact")::

    <model_dir>/<version>/
      query_tower/ candidate_tower/   SavedModels, signature serving_default (string inputs)
      vocab/users.txt vocab/items.txt
      content_encoder.json            schemas.content.ContentEncoder
      item_index.npz                  schemas.index_snapshot.IndexSnapshot
      item_ann.faiss item_ann.json    scoring.ann: the faiss IVF index of the snapshot's embeddings
      metadata.json                   version, created_at, parent_version, data_fingerprint,
                                      params, metrics, dim, history_length, serving_defaults
                                      (alpha / min_pool measured on validation; optional)
      weights/query.npz weights/candidate.npz   training variables (warm start)
      catalogue.jsonl                 the indexed catalogue items (publish writes them as ItemDocs)

``load_towers(uri)`` accepts a local directory or ``gs://bucket/path`` (downloaded once to a
local cache directory, ``$MODEL_CACHE_DIR`` or ``~/.cache/recsys-models``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas import uris
from schemas.clock import now_ms

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines.training.features import OOV_INDEX, PAD_INDEX, RESERVED, FeatureSpace  # noqa: E402
from schemas.catalog import CatalogItem  # noqa: E402
from schemas.content import ContentEncoder  # noqa: E402
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot  # noqa: E402
from scoring import ann  # noqa: E402

QUERY_DIR = "query_tower"
CANDIDATE_DIR = "candidate_tower"
VOCAB_DIR = "vocab"
WEIGHTS_DIR = "weights"
CONTENT_FILE = "content_encoder.json"
CATALOGUE_FILE = "catalogue.jsonl"  # the items indexed (full attributes, for publish and warm start)
METADATA_FILE = "metadata.json"
SIGNATURE = "serving_default"


class ArtifactError(RuntimeError):
    """An artefact that cannot be found, downloaded or read."""


def new_version(data_fingerprint: str, now: datetime | None = None) -> str:
    """``v<YYYYmmdd-HHMMSS>-<6 hex of the data fingerprint>``."""
    now = now or datetime.now(UTC)
    return f"v{now.strftime('%Y%m%d-%H%M%S')}-{data_fingerprint[:6]}"


def _lookup_table(vocab: Sequence[str], name: str) -> tf.lookup.StaticHashTable:
    keys = tf.constant(list(vocab) or ["\x00"], dtype=tf.string)
    values = tf.range(RESERVED, RESERVED + len(vocab) if vocab else RESERVED + 1, dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values),
                                     default_value=OOV_INDEX, name=name)


def _lookup(table: tf.lookup.StaticHashTable, ids: tf.Tensor) -> tf.Tensor:
    """Vocabulary index; the empty string is padding (0), unknown ids the OOV bucket (1)."""
    return tf.where(tf.equal(ids, ""), tf.constant(PAD_INDEX, tf.int32), table.lookup(ids))


class QueryServing(tf.Module):
    """String-keyed query tower: ``user_id [B], history [B, N] -> embedding [B, D]``."""

    def __init__(self, tower: tf.keras.Model, users: Sequence[str], items: Sequence[str],
                 history_length: int) -> None:
        super().__init__(name="query_serving")
        self.tower = tower
        self.users = _lookup_table(users, "users")
        self.items = _lookup_table(items, "items")
        self.history_length = history_length

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string, name="history")])
    def serve(self, user_id: tf.Tensor, history: tf.Tensor) -> dict[str, tf.Tensor]:
        history = history[:, -self.history_length:]
        emb = self.tower({"user": _lookup(self.users, user_id),
                          "history": _lookup(self.items, history)}, training=False)
        return {"embedding": emb}


class CandidateServing(tf.Module):
    """String-keyed candidate tower: item attributes -> ``embedding [B, D]``."""

    def __init__(self, tower: tf.keras.Model, space: FeatureSpace,
                 neighbor_means: np.ndarray | None = None) -> None:
        super().__init__(name="candidate_serving")
        self.tower = tower
        # the item graph term's input per item row, frozen at training (a new item: the OOV row, 0)
        self.neighbor_means = None if neighbor_means is None else tf.constant(neighbor_means, tf.float32)
        self.items = _lookup_table(space.items, "items")
        self.categories = _lookup_table(space.encoder.categories, "categories")
        self.brands = _lookup_table(space.encoder.brands, "brands")
        self.tags = _lookup_table(space.encoder.tags, "tags")
        self.price_edges = [float(x) for x in space.encoder.price_edges]
        self.max_tags = space.max_tags

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id"),
                                  tf.TensorSpec([None], tf.string, name="category"),
                                  tf.TensorSpec([None], tf.string, name="brand"),
                                  tf.TensorSpec([None], tf.float32, name="price"),
                                  tf.TensorSpec([None, None], tf.string, name="tags")])
    def serve(self, item_id: tf.Tensor, category: tf.Tensor, brand: tf.Tensor, price: tf.Tensor,
              tags: tf.Tensor) -> dict[str, tf.Tensor]:
        price_bucket = tf.cast(tf.raw_ops.Bucketize(input=price, boundaries=self.price_edges), tf.int32)
        features = {"item": _lookup(self.items, item_id), "category": _lookup(self.categories, category),
                    "brand": _lookup(self.brands, brand), "price": price_bucket,
                    "tags": _lookup(self.tags, tags[:, :self.max_tags])}
        if self.neighbor_means is not None:
            features["neighbor_mean"] = tf.gather(self.neighbor_means, features["item"])
        return {"embedding": self.tower(features, training=False)}


def save_tower(module: tf.Module, path: Path) -> None:
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve.get_concrete_function()})


def _save_weights(tower: tf.keras.Model, path: Path) -> None:
    arrays = {f"w{i}": v.numpy() for i, v in enumerate(tower.weights)}
    names = np.array([v.name for v in tower.weights])
    np.savez(path, names=names, **arrays)


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """``{variable name: array}`` saved by :func:`write_artifact` (for warm start)."""
    with np.load(path, allow_pickle=False) as z:
        return {str(name): z[f"w{i}"] for i, name in enumerate(z["names"])}


@dataclass
class ArtifactContents:
    """Everything :func:`write_artifact` needs besides the towers."""

    space: FeatureSpace
    catalogue: Sequence[CatalogItem]
    popularity: dict[str, float]
    data_fingerprint: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    parent_version: str | None = None
    extra_metadata: dict[str, Any] | None = None
    serving_defaults: dict[str, Any] | None = None  # scoring.rank.ScoringDefaults.to_dict()
    neighbor_means: np.ndarray | None = None  # [item rows, D] with ModelConfig.item_graph


def write_artifact(model_dir: str | Path, query_tower: tf.keras.Model, candidate_tower: tf.keras.Model,
                   contents: ArtifactContents, history_length: int,
                   version: str | None = None) -> Path:
    """Write a complete version directory atomically (rename of a temporary sibling).

    Returns:
        The version directory.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or new_version(contents.data_fingerprint)
    while (model_dir / version).exists():  # two runs in the same second on the same data
        time.sleep(1.0)
        version = new_version(contents.data_fingerprint)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        _write_contents(tmp, version, query_tower, candidate_tower, contents, history_length)
        final = model_dir / version
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_contents(out: Path, version: str, query_tower: tf.keras.Model,
                    candidate_tower: tf.keras.Model, contents: ArtifactContents,
                    history_length: int) -> None:
    space = contents.space
    created_at = now_ms()
    candidate = CandidateServing(candidate_tower, space, contents.neighbor_means)
    save_tower(QueryServing(query_tower, space.users, space.items, history_length), out / QUERY_DIR)
    save_tower(candidate, out / CANDIDATE_DIR)
    (out / VOCAB_DIR).mkdir()
    (out / VOCAB_DIR / "users.txt").write_text("\n".join(space.users), encoding="utf-8")
    (out / VOCAB_DIR / "items.txt").write_text("\n".join(space.items), encoding="utf-8")
    space.encoder.save(out / CONTENT_FILE)
    with (out / CATALOGUE_FILE).open("w", encoding="utf-8") as f:
        for item in contents.catalogue:
            f.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
    (out / WEIGHTS_DIR).mkdir()
    _save_weights(query_tower, out / WEIGHTS_DIR / "query.npz")
    _save_weights(candidate_tower, out / WEIGHTS_DIR / "candidate.npz")
    items = list(contents.catalogue)
    embeddings = _embed_catalogue(candidate, items, space.max_tags)
    IndexSnapshot(
        version=version, created_at=created_at,
        item_ids=np.array([i.item_id for i in items], dtype=str),
        embeddings=embeddings,
        content=space.encoder.encode_sparse(items),
        categories=np.array([i.category for i in items], dtype=str),
        in_stock=np.array([i.in_stock for i in items], dtype=bool),
        popularity=np.array([contents.popularity.get(i.item_id, 0.0) for i in items], dtype=np.float32),
        serving_defaults=contents.serving_defaults,
    ).save(out / INDEX_FILE)
    if len(items) >= ann.MIN_INDEX_ROWS:  # the compiled ANN index next to the snapshot: served, not built
        ann.write_index(out, embeddings, version)
    metadata = {
        "version": version, "created_at": created_at, "parent_version": contents.parent_version,
        "data_fingerprint": contents.data_fingerprint, "params": contents.params,
        "metrics": contents.metrics, "dim": int(embeddings.shape[1]) if len(items) else None,
        "history_length": history_length, "max_tags": space.max_tags,
        "n_users": len(space.users), "n_items": len(space.items), "n_catalogue": len(items),
        "serving_defaults": contents.serving_defaults,
        **(contents.extra_metadata or {}),
    }
    if metadata["dim"] is None:
        metadata["dim"] = int(query_tower.output_shape[-1])
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")


def item_tensors(items: Sequence[CatalogItem], max_tags: int) -> dict[str, tf.Tensor]:
    """Candidate-tower signature inputs for catalogue items (tags padded with "")."""
    width = max(1, min(max_tags, max((len(i.tags) for i in items), default=0)))
    tags = [list(dict.fromkeys(i.tags))[:width] for i in items]
    return {"item_id": tf.constant([i.item_id for i in items], tf.string),
            "category": tf.constant([i.category for i in items], tf.string),
            "brand": tf.constant([i.brand for i in items], tf.string),
            "price": tf.constant([i.price for i in items], tf.float32),
            "tags": tf.constant([t + [""] * (width - len(t)) for t in tags], tf.string,
                                shape=(len(items), width))}


def _embed_catalogue(candidate: CandidateServing, items: Sequence[CatalogItem], max_tags: int,
                     chunk: int = 4096) -> np.ndarray:
    parts = [candidate.serve(**item_tensors(items[s:s + chunk], max_tags))["embedding"].numpy()
             for s in range(0, len(items), chunk)]
    dim = int(candidate.tower.output_shape[-1])
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)


class Towers:
    """A loaded artefact: embed users from their history and items from their attributes.

    Attributes:
        version, dim, history_length, metadata, path, content_encoder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.metadata: dict[str, Any] = json.loads((self.path / METADATA_FILE).read_text("utf-8"))
        except FileNotFoundError as e:
            raise ArtifactError(f"{self.path} is not a model artefact (no {METADATA_FILE})") from e
        self.version: str = self.metadata["version"]
        self.dim: int = int(self.metadata["dim"])
        self.history_length: int = int(self.metadata["history_length"])
        self.max_tags: int = int(self.metadata.get("max_tags", 8))
        self.content_encoder = ContentEncoder.load(self.path / CONTENT_FILE)
        self._query = tf.saved_model.load(str(self.path / QUERY_DIR))
        self._candidate = tf.saved_model.load(str(self.path / CANDIDATE_DIR))
        self._query_fn = self._query.signatures[SIGNATURE]
        self._candidate_fn = self._candidate.signatures[SIGNATURE]

    def embed_users(self, user_ids: Sequence[str], histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Query embeddings ``[B, D]`` float32; histories are item ids oldest first.

        Each history is truncated to its most recent ``history_length`` items. Unknown users and
        items map to the out-of-vocabulary bucket.
        """
        if len(user_ids) != len(histories):
            raise ValueError(f"{len(user_ids)} user ids but {len(histories)} histories")
        if not user_ids:
            return np.zeros((0, self.dim), np.float32)
        n = self.history_length
        rows = [list(h)[-n:] for h in histories]
        width = max(1, max(len(r) for r in rows))
        padded = [[""] * (width - len(r)) + [str(x) for x in r] for r in rows]
        out = self._query_fn(user_id=tf.constant([str(u) for u in user_ids], tf.string),
                             history=tf.constant(padded, tf.string, shape=(len(rows), width)))
        return out["embedding"].numpy()

    def embed_items(self, items: Sequence[CatalogItem]) -> np.ndarray:
        """Candidate embeddings ``[B, D]`` float32; items outside the vocabulary use content alone."""
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return self._candidate_fn(**item_tensors(items, self.max_tags))["embedding"].numpy()

    def item_index(self) -> IndexSnapshot:
        """The artefact's item-index snapshot."""
        return IndexSnapshot.load(self.path / INDEX_FILE)

    def users_vocab(self) -> list[str]:
        return _read_vocab(self.path / VOCAB_DIR / "users.txt")

    def items_vocab(self) -> list[str]:
        return _read_vocab(self.path / VOCAB_DIR / "items.txt")


def _read_vocab(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n") if text else []


def cache_dir() -> Path:
    return Path(os.environ.get("MODEL_CACHE_DIR") or Path.home() / ".cache" / "recsys-models")


def _split_gs(uri: str) -> tuple[str, str]:
    try:
        bucket, prefix = uris.split_gcs(uri)
    except ValueError as e:
        raise ArtifactError(f"bad GCS URI {uri!r}") from e
    return bucket, prefix.strip("/")


def download(uri: str, dest_root: Path | None = None) -> Path:
    """Copy a ``gs://`` artefact directory to the local cache (once; reused afterwards)."""
    from google.api_core import exceptions as gexc
    from google.cloud import storage

    bucket_name, prefix = _split_gs(uri)
    dest = (dest_root or cache_dir()) / bucket_name / prefix
    if (dest / METADATA_FILE).exists():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=_mkdir(dest.parent)))
    try:
        client = storage.Client()
        blobs = list(client.list_blobs(bucket_name, prefix=prefix + "/"))
        if not blobs:
            raise ArtifactError(f"no artefact at {uri}")
        for blob in blobs:
            rel = blob.name[len(prefix) + 1:]
            if not rel or rel.endswith("/"):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except gexc.GoogleAPIError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot download {uri}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def upload(local_dir: Path, uri: str) -> str:
    """Upload a version directory under a ``gs://`` model dir; returns the version's URI."""
    from google.api_core import exceptions as gexc
    from google.cloud import storage

    bucket_name, prefix = _split_gs(uri)
    target_prefix = f"{prefix}/{local_dir.name}" if prefix else local_dir.name
    try:
        bucket = storage.Client().bucket(bucket_name)
        # metadata.json last: a reader that sees it sees a complete artefact
        files = sorted((p for p in local_dir.rglob("*") if p.is_file()),
                       key=lambda p: p.name == METADATA_FILE)
        for path in files:
            bucket.blob(f"{target_prefix}/{path.relative_to(local_dir).as_posix()}") \
                .upload_from_filename(str(path))
    except gexc.GoogleAPIError as e:
        raise ArtifactError(f"cannot upload to {uri}: {e}") from e
    return f"gs://{bucket_name}/{target_prefix}"


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def resolve(uri: str | Path) -> Path:
    """A local directory for an artefact URI (downloading ``gs://`` ones)."""
    text = str(uri)
    if uris.is_gcs(text):
        return download(text)
    path = Path(text)
    if not (path / METADATA_FILE).exists():
        raise ArtifactError(f"{path} is not a model artefact (no {METADATA_FILE})")
    return path


def load_towers(uri: str | Path) -> Towers:
    """Load an artefact's towers from a local path or ``gs://`` URI."""
    return Towers(resolve(uri))


def find_version(model_dir: str | Path, version: str) -> Path:
    """The directory of ``version`` under ``model_dir`` (or ``version`` itself if it is a path)."""
    direct = Path(version)
    if (direct / METADATA_FILE).exists():
        return direct
    if uris.is_gcs(model_dir):
        return download(f"{str(model_dir).rstrip('/')}/{version}")
    path = Path(model_dir) / version
    if not (path / METADATA_FILE).exists():
        raise ArtifactError(f"no model version {version!r} under {model_dir}")
    return path
