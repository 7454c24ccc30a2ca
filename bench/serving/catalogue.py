"""A trained catalogue for the serving benchmark: 100,000 items with learned structure.

Random Gaussian embeddings have no cluster structure, so they say nothing about how an
approximate index behaves on a real catalogue. This trains the project's two-tower model on
the synthetic generator with a 100,000-item catalogue, once per version of the model code and
of these parameters, and caches under ``artifacts/bench-serving-models/<hash>/``:

* the artefact (``<version>/item_index.npz`` is the snapshot the function serves), and
* ``users.npz``: the users' ids, their recent history (item ids, oldest first) and their
  query-tower embeddings, the vectors the benchmark's user documents carry.

    python -m scripts.bench_serving_model [--items 100000] [--users 20000] [--epochs 2]
    python -m scripts.bench_serving_model --recall-on ARTIFACT_VERSION_DIR --data gowalla

Only the first call trains (TensorFlow is imported only then); the benchmark reads the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "artifacts" / "bench-serving-models"
USERS_FILE = "users.npz"


@dataclass(frozen=True)
class CatalogueSpec:
    items: int = 100_000
    users: int = 20_000
    events_per_user: int = 30
    categories: int = 50
    brands: int = 400
    dim: int = 64
    epochs: int = 2
    history: int = 20  # history kept per benchmark user
    seed: int = 0

    def key(self) -> str:
        code = b"".join((ROOT / "pipelines" / f).read_bytes()
                        for f in ("training/model.py", "training/train.py", "training/artifact.py",
                                  "data/synthetic.py"))
        blob = code + json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class TrainedCatalogue:
    artifact: Path  # the version directory (item_index.npz inside)
    user_ids: np.ndarray  # str [U]
    histories: np.ndarray  # str [U, H], item ids oldest first ("" = padding)
    embeddings: np.ndarray  # float32 [U, D], query-tower output for user + history
    meta: dict


def _load(model_dir: Path) -> TrainedCatalogue | None:
    versions = sorted(p.parent for p in model_dir.glob("*/metadata.json"))
    users = model_dir / USERS_FILE
    if not versions or not users.exists():
        return None
    with np.load(users, allow_pickle=False) as z:
        return TrainedCatalogue(artifact=versions[-1], user_ids=z["user_ids"], histories=z["histories"],
                                embeddings=z["embeddings"], meta=json.loads(str(z["meta"])))


def train_catalogue(spec: CatalogueSpec, model_dir: Path) -> TrainedCatalogue:
    """Generate, train, save the artefact and the benchmark users' query embeddings."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines.data import generate_synthetic
    from pipelines.training.model import ModelConfig
    from pipelines.training.train import TrainingInput, save, train

    t0 = time.perf_counter()
    data = generate_synthetic(n_users=spec.users, n_items=spec.items,
                              mean_events_per_user=spec.events_per_user, seed=spec.seed,
                              n_categories=spec.categories, n_brands=spec.brands)
    gen_s = time.perf_counter() - t0
    inp = TrainingInput.from_dataset(data)
    t1 = time.perf_counter()
    trained = train(inp, ModelConfig(epochs=spec.epochs, dim=spec.dim, seed=spec.seed))
    train_s = time.perf_counter() - t1
    version_dir = save(trained, model_dir)
    # Benchmark users: everyone's last `history` items (oldest first), embedded by the query tower.
    order = np.lexsort((inp.timestamps, inp.user_ids.astype(str)))
    users_sorted, items_sorted = inp.user_ids.astype(str)[order], inp.item_ids.astype(str)[order]
    uniq, starts = np.unique(users_sorted, return_index=True)
    ends = np.append(starts[1:], len(users_sorted))
    hist = np.full((len(uniq), spec.history), "", dtype=object)
    for u, (s, e) in enumerate(zip(starts, ends)):
        h = items_sorted[max(s, e - spec.history):e]
        hist[u, spec.history - len(h):] = h
    from pipelines.training.artifact import Towers

    towers = Towers(version_dir)
    emb = np.concatenate([towers.embed_users(list(uniq[s:s + 4096]),
                                             [[x for x in row if x] for row in hist[s:s + 4096]])
                          for s in range(0, len(uniq), 4096)]).astype(np.float32)
    meta = {"spec": asdict(spec), "generate_s": gen_s, "train_s": train_s,
            "interactions": len(inp), "final_loss": trained.losses[-1] if trained.losses else None,
            "version": version_dir.name}
    np.savez(model_dir / USERS_FILE, user_ids=uniq.astype(str), histories=hist.astype(str),
             embeddings=emb, meta=np.array(json.dumps(meta)))
    return _load(model_dir)  # type: ignore[return-value]


def cached_catalogue(spec: CatalogueSpec = CatalogueSpec(), root: Path = CACHE) -> TrainedCatalogue:
    """The trained catalogue for ``spec``, trained on first use and then reused."""
    model_dir = root / spec.key()
    return _load(model_dir) or train_catalogue(spec, model_dir)


def ivf_recall_on_artifact(artifact: Path, data: str, users: int = 1000, seed: int = 0,
                           nlists: tuple[int, ...] | None = None,
                           nprobes: tuple[int, ...] = (4, 8, 12, 16, 24, 32)) -> dict:
    """The IVF grid (recall@10 vs exact, CPU) on a trained artefact and users of its data set.

    Users: ``users`` drawn at random from the data set, each with their last ``history_length``
    items (in file order) as history, embedded by the artefact's query tower; the same grid as
    ``make bench-serving`` (:func:`scripts.bench_serving.measure_ivf`).
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines.training.artifact import Towers
    from pipelines.training.train import load_input
    from schemas.firestore import HistoryEntry, UserDoc
    from scripts import bench_serving as bs

    towers = Towers(artifact)
    snap = towers.item_index()
    inp = load_input(data)
    order = np.lexsort((np.arange(len(inp)), inp.timestamps, inp.user_ids.astype(str)))
    u_sorted, i_sorted = inp.user_ids.astype(str)[order], inp.item_ids.astype(str)[order]
    uniq, starts = np.unique(u_sorted, return_index=True)
    ends = np.append(starts[1:], len(u_sorted))
    pick = np.sort(np.random.default_rng(seed).choice(len(uniq), size=min(users, len(uniq)), replace=False))
    ids = [str(uniq[u]) for u in pick]
    hists = [i_sorted[max(starts[u], ends[u] - towers.history_length):ends[u]].tolist() for u in pick]
    emb = np.concatenate([towers.embed_users(ids[s:s + 2048], hists[s:s + 2048])
                          for s in range(0, len(ids), 2048)])
    docs = [UserDoc(user_id=u, history=tuple(HistoryEntry(event_id=f"e{j}", item_id=h, event_type="view",
                                                          timestamp=j) for j, h in enumerate(hist)),
                    last_event_id="e", last_event_ts=0, updated_at=0, model_version=snap.version,
                    embedding=tuple(float(x) for x in e), event_count=len(hist))
            for u, hist, e in zip(ids, hists, emb)]
    n = len(snap.item_ids)
    root = int(round(np.sqrt(n)))
    cfg = bs.BenchConfig(items=n, dim=int(snap.embeddings.shape[1]),
                         ivf_nlists=nlists or (max(1, root * 4 // 5), root, 2 * root), ivf_nprobes=nprobes)
    grid = bs.measure_ivf(cfg, snap, docs, sample_users=len(docs))
    return {"artifact": str(artifact), "data": data, "items": n, "dim": cfg.dim,
            "users": len(docs), **grid}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = CatalogueSpec()
    p.add_argument("--recall-on", metavar="ARTIFACT", default=None,
                   help="instead: measure the IVF grid on this trained artefact with users of --data; "
                        "writes reports/bench/serving_ivf_<data>.json")
    p.add_argument("--data", default="gowalla")
    p.add_argument("--items", type=int, default=d.items)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--dim", type=int, default=d.dim)
    a = p.parse_args(argv)
    if a.recall_on:
        out = ivf_recall_on_artifact(Path(a.recall_on), a.data)
        path = ROOT / "reports" / "bench" / f"serving_ivf_{Path(a.data).name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**out, "loadavg": os.getloadavg()}, indent=2))
        for g in out["grid"]:
            print(f"nlist {g['nlist']:>5} nprobe {g['nprobe']:>3}: recall@10 served {g['recall_at_10']:.3f} "
                  f"CF {g['cf_recall_at_10']:.3f}, retrieval {g['retrieval_ms']:.3f} ms CPU")
        print(f"exact retrieval {out['exact_retrieval_ms']:.3f} ms CPU; written {path}")
        return 0
    spec = CatalogueSpec(items=a.items, users=a.users, epochs=a.epochs, dim=a.dim)
    t = time.perf_counter()
    cat = cached_catalogue(spec)
    print(f"{cat.artifact} ({len(cat.user_ids)} users, dim {cat.embeddings.shape[1]}) in "
          f"{time.perf_counter() - t:.0f} s; meta {cat.meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
