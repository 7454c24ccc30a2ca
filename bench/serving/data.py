"""The serving benchmark's catalogue, users and Firestore contents.

The function serves an index snapshot and reads user documents, so the benchmark builds both (from
the trained catalogue or random vectors) and seeds its own emulator with them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench import measure
from bench.serving.catalogue import cached_catalogue, catalogue_spec, scaled_catalogue
from bench.serving.config import SYNTHETIC_TAGS, VECTORS, VERSION, BenchConfig
from schemas import names
from schemas.content import SparseRows
from schemas.firestore import CurrentModelDoc, HistoryEntry, TrendingDoc, TrendingEntry, UserDoc
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot


def make_snapshot(cfg: BenchConfig, rng: np.random.Generator) -> IndexSnapshot:
    """A synthetic catalogue: Zipf-ish categories, 95 % in stock, L2-normalised content rows.

    Content rows look like the encoder's (:class:`schemas.content.ContentEncoder`): the category's
    column plus ``SYNTHETIC_TAGS`` random other columns, so about as sparse as real ones.
    """
    n = cfg.items
    cat_weights = 1.0 / np.arange(1, cfg.categories + 1)
    cats = rng.choice(cfg.categories, size=n, p=cat_weights / cat_weights.sum())
    content = np.zeros((n, cfg.content_dim), dtype=np.float32)
    tags = rng.integers(0, cfg.content_dim, size=(n, SYNTHETIC_TAGS))
    content[np.repeat(np.arange(n), SYNTHETIC_TAGS), tags.reshape(-1)] = 0.5 / np.sqrt(SYNTHETIC_TAGS)
    content[np.arange(n), cats % cfg.content_dim] = 1.0
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    return IndexSnapshot(
        version=VERSION, created_at=int(time.time() * 1000) - 60_000,
        item_ids=np.array([f"i{i:06d}" for i in range(n)]),
        embeddings=(rng.standard_normal((n, cfg.dim), dtype=np.float32) / np.sqrt(cfg.dim)),
        content=SparseRows.from_dense(content), categories=np.array([f"c{c:02d}" for c in cats]),
        in_stock=rng.random(n) < 0.95,
        popularity=rng.pareto(1.5, n).astype(np.float32))


def trained_catalogue(cfg: BenchConfig) -> tuple[IndexSnapshot, list[UserDoc], dict]:
    """The trained 100k-item catalogue (cached) and ``cfg.users`` users with query-tower embeddings.

    Over 100k items: the same towers embed the larger catalogue (:func:`scaled_catalogue`).
    """
    base = catalogue_spec(dim=cfg.dim)
    cat = scaled_catalogue(cfg.items, base) if cfg.items > base.items else \
        cached_catalogue(catalogue_spec(items=cfg.items, dim=cfg.dim))
    snap = IndexSnapshot.load(cat.artifact / INDEX_FILE)
    snap.version, snap.created_at = VERSION, int(time.time() * 1000) - 60_000
    cfg.content_dim = snap.content.dim
    cfg.categories = int(np.unique(snap.categories).shape[0])
    now = int(time.time() * 1000)
    pick = np.random.default_rng(cfg.seed).choice(len(cat.user_ids), size=cfg.users, replace=False)
    users = []
    for u in pick.tolist():
        hist = [h for h in cat.histories[u].tolist() if h]
        entries = tuple(HistoryEntry(event_id=f"e{u}-{j}", item_id=h, event_type="view",
                                     timestamp=now - (len(hist) - j) * 1000) for j, h in enumerate(hist))
        users.append(UserDoc(user_id=str(cat.user_ids[u]), history=entries,
                             last_event_id=entries[-1].event_id if entries else "", last_event_ts=now,
                             updated_at=now, model_version=VERSION,
                             embedding=tuple(float(x) for x in cat.embeddings[u]), event_count=len(hist)))
    return snap, users, {"artifact": str(cat.artifact.relative_to(measure.ROOT)), **cat.meta}


def make_users(cfg: BenchConfig, snap: IndexSnapshot, rng: np.random.Generator) -> list[UserDoc]:
    now = int(time.time() * 1000)
    users = []
    for u in range(cfg.users):
        hist = rng.choice(cfg.items, size=cfg.history, replace=False)
        entries = tuple(HistoryEntry(event_id=f"e{u}-{j}", item_id=str(snap.item_ids[i]),
                                     event_type="view", timestamp=now - (cfg.history - j) * 1000)
                        for j, i in enumerate(hist))
        emb = rng.standard_normal(cfg.dim).astype(np.float32)
        users.append(UserDoc(user_id=f"u{u:05d}", history=entries,
                             last_event_id=entries[-1].event_id, last_event_ts=now, updated_at=now,
                             model_version=VERSION, embedding=tuple(float(x) for x in emb),
                             event_count=cfg.history))
    return users


def write_batched(client, docs: list[tuple[str, str, dict]], batch_size: int = 500) -> None:
    for start in range(0, len(docs), batch_size):
        batch = client.batch()
        for coll, doc_id, body in docs[start:start + batch_size]:
            batch.set(client.collection(coll).document(doc_id), body)
        batch.commit()


def seed_firestore(client, cfg: BenchConfig, snap: IndexSnapshot, index_uri: str,
                   users: list[UserDoc]) -> dict[str, float]:
    """models/current, users, stats/trending and the find_nearest vector collection."""
    from google.cloud.firestore_v1.vector import Vector

    timings = {}
    t = time.perf_counter()
    docs = [(names.MODELS, names.CURRENT_MODEL_DOC, CurrentModelDoc(
        version=VERSION, artifact_uri=str(Path(index_uri).parent), index_uri=index_uri,
        switched_at=snap.created_at).to_document())]
    top = np.argsort(-snap.popularity)[:100]
    docs.append((names.STATS, names.TRENDING_DOC, TrendingDoc(
        items=tuple(TrendingEntry(item_id=str(snap.item_ids[i]), views=100, add_to_cart=5,
                                  purchases=1, score=float(snap.popularity[i])) for i in top),
        window_start=snap.created_at, window_end=snap.created_at, updated_at=snap.created_at
    ).to_document()))
    docs += [(names.USERS, u.user_id, u.to_document()) for u in users]
    write_batched(client, docs)
    timings["seed_users_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_batched(client, [(VECTORS, str(snap.item_ids[i]),
                             {"item_id": str(snap.item_ids[i]),
                              "embedding": Vector([float(x) for x in snap.embeddings[i]])})
                            for i in range(cfg.vector_items)])
    timings["seed_vectors_s"] = time.perf_counter() - t
    return timings

