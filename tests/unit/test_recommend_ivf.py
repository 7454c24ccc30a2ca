"""The recommend function's IVF approximate index against exact retrieval (no Firestore)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recommender.config import ConfigError, Settings
from recommender.index import ItemIndex
from recommender.service import Recommender
from schemas.catalog import CatalogItem
from schemas.firestore import ItemDoc
from scoring import ranking
from scoring.ivf import IvfIndex, default_nlist, kmeans
from testing.fakes import EmptyStore

N, D, CLUSTERS = 6000, 16, 60


@pytest.fixture(scope="module")
def clustered():
    """Unit vectors around 60 well-separated directions, and queries near random items."""
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((CLUSTERS, D)).astype(np.float32)
    emb = centers[rng.integers(0, CLUSTERS, N)] + 0.25 * rng.standard_normal((N, D)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = emb[rng.choice(N, 100, replace=False)] + 0.1 * rng.standard_normal((100, D)).astype(np.float32)
    return emb, queries


def _index(emb: np.ndarray, in_stock: np.ndarray | None = None, categories=None) -> ItemIndex:
    n = emb.shape[0]
    return ItemIndex.build(
        "v1", 0, np.array([f"i{i}" for i in range(n)]), emb, np.ones((n, 4), np.float32),
        np.array(categories if categories is not None else ["c"] * n),
        np.ones(n, bool) if in_stock is None else in_stock, np.ones(n, np.float32), updated_through=0)


def _exact(emb: np.ndarray, q: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-(emb @ q), kind="stable")[:k].tolist())


def test_every_row_is_in_exactly_one_partition(clustered):
    emb, _ = clustered
    ivf = IvfIndex.build(emb, np.linalg.norm(emb, axis=1), nlist=CLUSTERS, nprobe=4)
    assert sorted(ivf.order.tolist()) == list(range(N))
    assert ivf.bounds[0] == 0 and ivf.bounds[-1] == N
    for p in range(ivf.nlist):
        assert (ivf.assign[ivf.order[ivf.bounds[p]:ivf.bounds[p + 1]]] == p).all()
    np.testing.assert_array_equal(ivf.sorted_emb, emb[ivf.order])
    assert ivf.tail.size == 0


def test_kmeans_is_deterministic(clustered):
    emb, _ = clustered
    np.testing.assert_array_equal(kmeans(emb, 20, seed=1), kmeans(emb, 20, seed=1))


def test_recall_at_10_on_clustered_embeddings(clustered):
    emb, queries = clustered
    ivf = IvfIndex.build(emb, np.linalg.norm(emb, axis=1), nlist=CLUSTERS, nprobe=6)
    recalls, scanned = [], []
    for q in queries:
        rows, _ = ranking.retrieve(q, emb, 10, None, ivf)
        recalls.append(len(set(rows.tolist()) & _exact(emb, q, 10)) / 10)
        scanned.append(ivf.candidates(q)[0].size)
    assert np.mean(recalls) >= 0.95
    assert np.mean(scanned) < 0.2 * N  # and it scored a fraction of the catalogue


def test_candidate_scores_are_exact_dot_products(clustered):
    emb, queries = clustered
    ivf = IvfIndex.build(emb, np.linalg.norm(emb, axis=1), nlist=CLUSTERS, nprobe=5)
    rows, scores = ivf.candidates(queries[0])
    np.testing.assert_allclose(scores, emb[rows] @ queries[0], rtol=1e-5, atol=1e-6)
    assert len(set(rows.tolist())) == rows.size


def test_all_partitions_probed_equals_exact(clustered):
    emb, queries = clustered
    ivf = IvfIndex.build(emb, np.linalg.norm(emb, axis=1), nlist=CLUSTERS, nprobe=CLUSTERS)
    for q in queries[:10]:
        rows, _ = ranking.retrieve(q, emb, 50, None, ivf)
        exact, _ = ranking.retrieve(q, emb, 50, None, None)
        assert rows.tolist() == exact.tolist()


def test_exact_fallback_when_filters_leave_too_few_candidates(clustered):
    emb, queries = clustered
    ivf = IvfIndex.build(emb, np.linalg.norm(emb, axis=1), nlist=CLUSTERS, nprobe=1)
    q = queries[0]
    # block every row of the probed partition: the IVF finds nothing, the exact scan answers
    probed = int(np.argmax(ivf.centroids @ q))
    blocked = ivf.assign == probed
    rows, scores = ranking.retrieve(q, emb, 10, blocked, ivf)
    exact, _ = ranking.retrieve(q, emb, 10, blocked, None)
    assert rows.tolist() == exact.tolist()
    assert not blocked[rows].any()
    # a pool larger than what one partition holds: exact too, still `pool` rows
    big = int(np.diff(ivf.bounds).max()) + 1
    rows, _ = ranking.retrieve(q, emb, big, None, ivf)
    assert rows.size == big
    assert set(rows.tolist()) == _exact(emb, q, big)


def test_mostly_blocked_catalogue_uses_the_exact_scan_and_still_returns_k(clustered):
    emb, queries = clustered
    cats = np.where(np.arange(N) % 10 == 0, "rare", "common")
    index = _index(emb, categories=cats).with_ivf(CLUSTERS, 2)
    blocked = ranking.blocked_mask(index.size, None, index.category_codes,
                                   index.category_codes_for(["rare"]), None)
    ranked = ranking.rank_hybrid(queries[0], index.embeddings, index.content, None, 10, 1.0,
                                 blocked, 200, index.ivf)
    assert ranked.rows.size == 10
    assert (cats[ranked.rows] == "rare").all()
    exact = ranking.rank_hybrid(queries[0], index.embeddings, index.content, None, 10, 1.0,
                                blocked, 200, None)
    assert ranked.rows.tolist() == exact.rows.tolist()


def test_blocked_rows_never_come_back_from_the_ivf(clustered):
    emb, queries = clustered
    in_stock = np.arange(N) % 3 != 0
    index = _index(emb, in_stock=in_stock).with_ivf(CLUSTERS, 6)
    blocked = ranking.blocked_mask(index.size, index.out_of_stock, None, None, np.array([5, 6, 7]))
    for q in queries[:20]:
        ranked = ranking.rank_hybrid(q, index.embeddings, index.content, None, 10, 1.0, blocked, 200,
                                     index.ivf)
        assert ranked.rows.size == 10
        assert not blocked[ranked.rows].any()


def _doc(item_id: str, embedding, version: str = "v1") -> ItemDoc:
    item = CatalogItem(item_id=item_id, title=item_id, category="c", brand="b", price=1.0, tags=(),
                       in_stock=True, updated_at=0)
    return ItemDoc(item=item, embedding=None if embedding is None else tuple(map(float, embedding)),
                   content_vector=(1.0, 0.0, 0.0, 0.0), model_version=version, popularity=0.0,
                   indexed_at=5)


def test_new_items_join_their_nearest_partition_and_are_retrieved(clustered):
    emb, queries = clustered
    index = _index(emb).with_ivf(CLUSTERS, 3)
    new_vec = queries[1] / np.linalg.norm(queries[1])
    updated = index.with_items([_doc("new", new_vec), _doc("content-only", None)])
    ivf = updated.ivf
    new_row, content_row = updated.row_of["new"], updated.row_of["content-only"]
    nearest = int(np.argmax(2 * ivf.centroids @ new_vec - (ivf.centroids ** 2).sum(1)))
    assert ivf.assign[new_row] == nearest
    assert ivf.centroids is index.ivf.centroids  # partitions kept, not re-trained
    assert ivf.tail.tolist() == [content_row]  # no embedding: scored exactly (0) on every query
    rows, _ = ranking.retrieve(new_vec, updated.embeddings, 10, None, ivf)
    assert rows[0] == new_row
    rows, scores = ivf.candidates(new_vec)
    assert content_row in rows.tolist() and scores[rows.tolist().index(content_row)] == 0.0


def test_a_changed_embedding_moves_the_row(clustered):
    emb, queries = clustered
    index = _index(emb).with_ivf(CLUSTERS, 3)
    target = queries[2] / np.linalg.norm(queries[2])
    updated = index.with_items([_doc("i0", target)])
    nearest = int(np.argmax(2 * updated.ivf.centroids @ target - (updated.ivf.centroids ** 2).sum(1)))
    assert updated.ivf.assign[0] == nearest
    np.testing.assert_array_equal(updated.ivf.sorted_emb, updated.embeddings[updated.ivf.order])
    rows, _ = ranking.retrieve(target, updated.embeddings, 5, None, updated.ivf)
    assert rows[0] == 0


def test_service_builds_the_configured_retrieval(clustered):
    emb, _ = clustered
    index = _index(emb)
    ivf_service = Recommender(Settings(retrieval="ivf", ivf_min_items=1000, ivf_nprobe=7), store=None,
                              clock=lambda: 0.0)  # clock 0: no background refresh
    ivf_service.indexes.install(index)
    assert ivf_service.index.ivf is not None and ivf_service.index.ivf.nprobe == 7
    assert ivf_service.index.ivf.nlist == default_nlist(N)
    assert ivf_service.health()[1]["retrieval"] == "ivf"
    small = Recommender(Settings(retrieval="ivf", ivf_min_items=N + 1), store=None)
    small.indexes.install(index)
    assert small.index.ivf is None  # below the size where partitions pay
    exact = Recommender(Settings(retrieval="exact", ivf_min_items=1), store=None, clock=lambda: 0.0)
    exact.indexes.install(index.with_ivf(10, 2))
    assert exact.index.ivf is None
    assert exact.health()[1]["retrieval"] == "exact"


def test_retrieval_setting_is_validated(monkeypatch):
    monkeypatch.setenv("RETRIEVAL", "EXACT")
    assert Settings.from_env().retrieval == "exact"
    monkeypatch.setenv("RETRIEVAL", "hnsw")
    with pytest.raises(ConfigError, match="RETRIEVAL"):
        Settings.from_env()


def test_filter_on_candidate_rows_matches_the_full_mask():
    rng = np.random.default_rng(5)
    n = 1000
    codes = rng.integers(0, 7, n).astype(np.int32)
    oos = rng.random(n) < 0.2
    excluded = np.array([999, 3, 10, 3])  # unsorted, a duplicate (history rows come as they are)
    for wanted in (None, np.array([2, 5], dtype=np.int32)):
        f = ranking.Filter(n, oos, codes, wanted, excluded)
        # the excluded rows, rows below / between / above them, and a random sample
        rows = np.concatenate([[3, 999, 0, 2, 4, 11, 998, 10], rng.choice(n, 300, replace=False)])
        np.testing.assert_array_equal(f.blocks(rows), f.mask()[rows])
    assert ranking.Filter(n).mask() is None
    assert not ranking.Filter(n).blocks(np.arange(5)).any()


def test_rank_hybrid_with_a_filter_equals_the_mask(clustered):
    emb, queries = clustered
    in_stock = np.arange(N) % 4 != 0
    index = _index(emb, in_stock=in_stock).with_ivf(CLUSTERS, 6)
    f = ranking.Filter(index.size, index.out_of_stock, index.category_codes, None, np.array([1, 2, 3]))
    for q in queries[:20]:
        a = ranking.rank_hybrid(q, index.embeddings, index.content, None, 10, 0.7, f, 200, index.ivf)
        b = ranking.rank_hybrid(q, index.embeddings, index.content, None, 10, 0.7, f.mask(), 200, index.ivf)
        assert a.rows.tolist() == b.rows.tolist()
        assert not f.mask()[a.rows].any()


def test_retrieve_checks_the_filter_on_the_best_candidates_only_when_that_is_exact(clustered):
    """The IVF path filters the top ``pool`` + headroom; with most of those blocked it filters all.

    Both paths are asserted to run (pool 50): with 10 % out of stock, the best 50 + headroom
    hold enough that pass, even when the best 300 are excluded (exclusions count as headroom);
    with the best 100 out of stock they do not, and every candidate is filtered. Both paths
    equal the full-mask path.
    """
    emb, queries = clustered
    index = _index(emb, in_stock=np.arange(N) % 10 != 0).with_ivf(CLUSTERS, 6)
    pool = 50
    for q in queries[:10]:
        rows, scores = index.ivf.candidates(q)
        best = rows[np.argsort(-scores, kind="stable")]
        top_out = index.out_of_stock.copy()
        top_out[best[:100]] = True
        cases = ((index.out_of_stock, np.array([1, 2, 3]), True), (index.out_of_stock, best[:5], True),
                 (index.out_of_stock, best[:300], True), (top_out, np.array([1, 2, 3]), False))
        for out_of_stock, excluded, fast in cases:
            f = ranking.Filter(index.size, out_of_stock, None, None, excluded)
            assert (ranking._top_unblocked(rows, scores, pool, f) is not None) == fast
            got_rows, got_scores = ranking.retrieve(q, index.embeddings, pool, f, index.ivf)
            mask_rows, mask_scores = ranking.retrieve(q, index.embeddings, pool, f.mask(), index.ivf)
            assert sorted(got_rows.tolist()) == sorted(mask_rows.tolist())
            np.testing.assert_array_equal(got_scores, mask_scores)
            assert np.all(np.diff(got_scores) <= 0) and not f.mask()[got_rows].any()
            allowed = ~f.blocks(rows)
            if allowed.sum() >= pool:  # enough candidates pass: the best of them, not an exact scan
                want = np.argsort(-scores[allowed], kind="stable")[:pool]
                assert sorted(got_rows.tolist()) == sorted(rows[allowed][want].tolist())




def _saved_snapshot(emb: np.ndarray, tmp_path) -> Path:
    """A one-version snapshot of ``emb`` (one category, all in stock) saved under ``tmp_path``."""
    from schemas.index_snapshot import IndexSnapshot

    snap = IndexSnapshot(version="v1", created_at=0, item_ids=np.array([f"i{i}" for i in range(N)]),
                         embeddings=emb, content=np.ones((N, 4), np.float32) / 2.0,
                         categories=np.array(["c"] * N), in_stock=np.ones(N, bool),
                         popularity=np.ones(N, np.float32))
    path = tmp_path / "item_index.npz"
    snap.save(path)
    return path


def test_cold_start_defers_the_ivf_build_to_the_first_request(clustered, tmp_path):
    from recommender.params import RecommendParams

    path = _saved_snapshot(clustered[0], tmp_path)
    service = Recommender(Settings(index_uri=str(path), ivf_min_items=1000, refresh_seconds=3600.0,
                                   retrieval="ivf", ivf_build="background"),
                          EmptyStore())
    service.start()
    assert service.index.ivf is None  # cold start loads the snapshot only
    body = service.recommend(RecommendParams(user_id=None, k=5, alpha=1.0, session_items=("i1", "i2")))
    assert body["strategy"] == "session" and len(body["items"]) == 5  # served (exact) meanwhile
    service.indexes.ivf_thread.join(timeout=60)
    assert service.index.ivf is not None and service.index.ivf.nlist == default_nlist(N)
    assert service.health()[1]["retrieval"] == "ivf"
    again = service.recommend(RecommendParams(user_id=None, k=5, alpha=1.0, session_items=("i1", "i2")))
    assert len(again["items"]) == 5


def test_cold_start_builds_the_numpy_ivf_at_startup(clustered, tmp_path):
    path = _saved_snapshot(clustered[0], tmp_path)
    service = Recommender(Settings(index_uri=str(path), ivf_min_items=1000, refresh_seconds=3600.0,
                                   retrieval="ivf"),
                          EmptyStore())
    service.start()
    assert service.index.ivf is not None  # built before the first request (and before a fork)
    assert not service.maybe_build_ivf()
