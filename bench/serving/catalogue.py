"""The serving benchmark's catalogue: a two-tower model trained on 100,000 synthetic items, cached.

Random Gaussian embeddings have no cluster structure, so they say nothing about how an approximate
index behaves on a real catalogue; this trains the project's model instead, once per version of the
model code and settings (the cache of :mod:`testing.artifacts`), and stores next to the artefact
the benchmark users' ids, recent histories and query-tower embeddings (``users-h<history>.npz``).

    python -m bench.serving.catalogue [--items 100000] [--users 20000] [--epochs 2] [--dim 64]

Only the first call trains (TensorFlow is imported only then); the benchmark reads the cache.

``--scale-to 1000000`` (``make bench-serving-1m``): the same trained towers embed a larger catalogue,
the 100k trained items plus synthetic items of the same generator (other seed, ids ``x...``, out of
the id vocabulary: embedded from category, brand, price and tags), written as an artefact directory
of its own (``items-<n>/``: ``item_index.npz`` and the faiss index the training job would write).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from testing import artifacts

HISTORY = 20  # history kept per benchmark user


def catalogue_spec(items: int = 100_000, users: int = 20_000, epochs: int = 2, dim: int = 64,
                   seed: int = 0) -> artifacts.SyntheticModelSpec:
    """The generator and model settings of the benchmark catalogue (50 categories, 400 brands)."""
    return artifacts.SyntheticModelSpec(users=users, items=items, events_per_user=30, categories=50,
                                        brands=400, dim=dim, epochs=epochs, batch_size=1024, seed=seed)


@dataclass
class TrainedCatalogue:
    artifact: Path  # the version directory (item_index.npz inside)
    user_ids: np.ndarray  # str [U]
    histories: np.ndarray  # str [U, H], item ids oldest first ("" = padding)
    embeddings: np.ndarray  # float32 [U, D], query-tower output for user + history
    meta: dict


def _users_file(model_dir: Path, history: int) -> Path:
    return model_dir / f"users-h{history}.npz"


def _load(model_dir: Path, history: int) -> TrainedCatalogue | None:
    artifact = artifacts.existing_artifact(model_dir)
    users = _users_file(model_dir, history)
    if artifact is None or not users.exists():
        return None
    with np.load(users, allow_pickle=False) as z:
        return TrainedCatalogue(artifact=artifact, user_ids=z["user_ids"], histories=z["histories"],
                                embeddings=z["embeddings"], meta=json.loads(str(z["meta"])))


def _save_users(trained: artifacts.TrainedArtifact, model_dir: Path, history: int) -> None:
    """Every user's last ``history`` items (oldest first), embedded by the query tower."""
    from pipelines.training.artifact import Towers

    inp = trained.data
    order = np.lexsort((inp.timestamps, inp.user_ids.astype(str)))
    users_sorted, items_sorted = inp.user_ids.astype(str)[order], inp.item_ids.astype(str)[order]
    uniq, starts = np.unique(users_sorted, return_index=True)
    ends = np.append(starts[1:], len(users_sorted))
    hist = np.full((len(uniq), history), "", dtype=object)
    for u, (s, e) in enumerate(zip(starts, ends)):
        h = items_sorted[max(s, e - history):e]
        hist[u, history - len(h):] = h
    towers = Towers(trained.version_dir)
    emb = np.concatenate([towers.embed_users(list(uniq[s:s + 4096]),
                                             [[x for x in row if x] for row in hist[s:s + 4096]])
                          for s in range(0, len(uniq), 4096)]).astype(np.float32)
    meta = {**trained.meta, "spec": {**trained.meta["spec"], "history": history}}
    np.savez(_users_file(model_dir, history), user_ids=uniq.astype(str), histories=hist.astype(str),
             embeddings=emb, meta=np.array(json.dumps(meta)))


def cached_catalogue(spec: artifacts.SyntheticModelSpec | None = None, history: int = HISTORY,
                     root: Path = artifacts.CACHE) -> TrainedCatalogue:
    """The trained catalogue for ``spec``, trained on first use and then reused."""
    spec = spec or catalogue_spec()
    model_dir = artifacts.cache_dir(spec, root)
    found = _load(model_dir, history)
    if found is not None:
        return found
    _save_users(artifacts.train_artifact(spec, model_dir), model_dir, history)
    return _load(model_dir, history)  # type: ignore[return-value]


def _users_of(model_dir: Path, history: int) -> TrainedCatalogue:
    found = _load(model_dir, history)
    if found is None:
        raise FileNotFoundError(f"no trained catalogue under {model_dir}")
    return found


def scaled_catalogue(items: int, spec: artifacts.SyntheticModelSpec | None = None, history: int = HISTORY,
                     root: Path = artifacts.CACHE, chunk: int = 50_000) -> TrainedCatalogue:
    """The trained catalogue grown to ``items`` rows by the same towers (cached in ``items-<n>/``)."""
    spec = spec or catalogue_spec()
    base = cached_catalogue(spec, history, root)
    out = base.artifact.parent / f"items-{items}"
    from schemas.index_snapshot import INDEX_FILE, IndexSnapshot
    from scoring import ann

    if not (out / ann.ANN_META_FILE).exists():
        import os

        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from pipelines.data.synthetic import _make_catalogue
        from pipelines.training.artifact import Towers
        from schemas.content import SparseRows

        snap = IndexSnapshot.load(base.artifact / INDEX_FILE)
        towers = Towers(base.artifact)
        extra = items - len(snap.item_ids)
        rng = np.random.default_rng(spec.seed + 1)
        emb, content, ids, cats, stock = [snap.embeddings], [snap.content], [snap.item_ids], \
            [snap.categories], [snap.in_stock]
        t = time.perf_counter()
        done = 0
        while done < extra:
            n = min(chunk, extra - done)
            cat = _make_catalogue(rng, max(n, 10), spec.categories, spec.brands, 0, 1, 0.0)
            part = [dataclasses.replace(it, item_id=f"x{done + j:07d}") for j, it in enumerate(cat.items[:n])]
            emb.append(np.concatenate([towers.embed_items(part[s:s + 4096]) for s in range(0, n, 4096)]))
            content.append(towers.content_encoder.encode_sparse(part))
            ids.append(np.array([it.item_id for it in part], dtype=str))
            cats.append(np.array([it.category for it in part], dtype=str))
            stock.append(np.array([it.in_stock for it in part], dtype=bool))
            done += n
            print(f"  {len(snap.item_ids) + done:,} items embedded ({time.perf_counter() - t:.0f} s)",
                  flush=True)
        pop = np.concatenate([snap.popularity, np.zeros(max(extra, 0), np.float32)])
        big = IndexSnapshot(version=snap.version, created_at=snap.created_at, item_ids=np.concatenate(ids),
                            embeddings=np.ascontiguousarray(np.concatenate(emb), dtype=np.float32),
                            content=SparseRows.concat(content, snap.content.dim),
                            categories=np.concatenate(cats), in_stock=np.concatenate(stock),
                            popularity=pop, serving_defaults=snap.serving_defaults)
        out.mkdir(parents=True, exist_ok=True)
        big.save(out / INDEX_FILE)
        (out / "metadata.json").write_text(json.dumps({"version": snap.version, "items": items,
                                                       "base": str(base.artifact)}), encoding="utf-8")
        ann.write_index(out, big.embeddings, big.version)  # what the training job writes
    return dataclasses.replace(base, artifact=out, meta={**base.meta, "scaled_to": items})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = catalogue_spec()
    p.add_argument("--items", type=int, default=d.items)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--scale-to", type=int, default=0,
                   help="also embed a catalogue of this many items with the trained towers")
    a = p.parse_args(argv)
    spec = catalogue_spec(items=a.items, users=a.users, epochs=a.epochs, dim=a.dim)
    t = time.perf_counter()
    cat = scaled_catalogue(a.scale_to, spec) if a.scale_to else cached_catalogue(spec)
    print(f"{cat.artifact} ({len(cat.user_ids)} users, dim {cat.embeddings.shape[1]}) in "
          f"{time.perf_counter() - t:.0f} s; meta {cat.meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
