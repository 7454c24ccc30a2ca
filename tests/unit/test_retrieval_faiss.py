"""The faiss retrieval backend (scoring.ann) against the exact scan: recall, filters, tail, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring import ann
from scoring.rank import (
    ExactRetriever,
    FaissRetriever,
    ItemArrays,
    RetrievalConfig,
    build_retriever,
    retriever_for,
    row_norms,
)
from scoring.ranking import Filter

pytest.importorskip("faiss")

N, D, POOL = 6000, 64, 50


def clustered(n: int = N, d: int = D, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def emb() -> np.ndarray:
    return clustered()


@pytest.fixture(scope="module")
def written(emb: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("artefact")
    ann.write_index(d, emb, "v1", nlist=60, nprobe=12)
    return d


def loaded(written, emb: np.ndarray, nprobe: int = 12) -> ann.FaissIvf:
    return ann.read_index(written, emb, row_norms(emb), "v1", nprobe)


def test_files_are_versioned_with_the_snapshot(written, emb: np.ndarray) -> None:
    meta = json.loads((written / ann.ANN_META_FILE).read_text())
    assert meta["version"] == "v1" and meta["rows"] == N and meta["nlist"] == 60
    assert meta["backend"] == "faiss"
    assert loaded(written, emb).nprobe == 12
    with pytest.raises(ann.AnnUnavailable, match="version"):
        ann.read_index(written, emb, row_norms(emb), "v2")
    with pytest.raises(ann.AnnUnavailable, match="rows"):
        ann.read_index(written, emb[:-1], row_norms(emb[:-1]), "v1")
    with pytest.raises(ann.AnnUnavailable):
        ann.read_index(written.parent, emb, row_norms(emb), "v1")


def test_from_bytes_matches_the_file(written, emb: np.ndarray) -> None:
    meta = json.loads((written / ann.ANN_META_FILE).read_text())
    idx = ann.index_from_bytes((written / ann.ANN_FILE).read_bytes(), meta, emb, row_norms(emb), "v1")
    q = emb[7]
    assert np.array_equal(idx.candidates(q, 30)[0], loaded(written, emb, meta["nprobe"]).candidates(q, 30)[0])


def test_recall_and_exact_scores(written, emb: np.ndarray) -> None:
    r = FaissRetriever(emb, loaded(written, emb))
    exact = ExactRetriever(emb)
    rng = np.random.default_rng(1)
    hits = []
    for q in emb[rng.choice(N, 50, replace=False)]:
        rows, scores = r.search(q, POOL, None)
        assert rows.shape[0] == POOL and len(set(rows.tolist())) == POOL
        np.testing.assert_allclose(scores, emb[rows] @ q, rtol=1e-6)  # re-scored exactly
        assert np.all(np.diff(scores) <= 0)
        e_rows, _ = exact.search(q, 10, None)
        hits.append(len(set(rows[:10].tolist()) & set(e_rows.tolist())) / 10)
    assert np.mean(hits) >= 0.95


def test_filters_are_exact_and_fall_back(written, emb: np.ndarray) -> None:
    r = FaissRetriever(emb, loaded(written, emb))
    q = emb[3]
    top = ExactRetriever(emb).search(q, 20, None)[0]
    rng = np.random.default_rng(2)
    out_of_stock = rng.random(N) < 0.3
    f = Filter(N, out_of_stock, None, None, top[:10].astype(np.int64))
    rows, _ = r.search(q, POOL, f)
    assert rows.shape[0] == POOL
    assert not np.isin(rows, top[:10]).any() and not out_of_stock[rows].any()
    # a category filter leaving few rows: the answer is the exact scan's over the allowed rows
    codes = rng.integers(0, 100, N).astype(np.int32)
    f = Filter(N, None, codes, np.array([5], np.int32), None)
    rows, scores = r.search(q, POOL, f)
    e_rows, e_scores = ExactRetriever(emb).search(q, POOL, f)
    np.testing.assert_array_equal(rows, e_rows)
    np.testing.assert_array_equal(scores, e_scores)
    # nearly everything out of stock: fewer allowed candidates than the pool, so the exact scan answers
    f = Filter(N, np.arange(N) % 50 != 0, None, None, None)
    np.testing.assert_array_equal(r.search(q, POOL, f)[0], ExactRetriever(emb).search(q, POOL, f)[0])


def test_new_and_changed_rows_join_without_a_rebuild(written, emb: np.ndarray) -> None:
    idx = loaded(written, emb)
    q = emb[11]
    grown = np.vstack([emb, (q * 2.0)[None, :], np.zeros((1, D), np.float32)])
    grown[5] = -q  # row 5 re-embedded: its indexed vector is stale
    grown[11] = q * 1.5
    up = idx.updated(grown, row_norms(grown), np.array([5, 11, N, N + 1]))
    assert set(up.tail.tolist()) == {5, 11, N, N + 1}
    rows, scores = FaissRetriever(grown, up).search(q, POOL, None)
    assert rows[0] == N and rows[1] == 11 and 5 not in rows.tolist()
    np.testing.assert_allclose(scores, grown[rows] @ q, rtol=1e-6)
    assert idx.tail.size == 0  # the loaded index is untouched (index versions share it)


def test_build_retriever_and_dispatch(emb: np.ndarray) -> None:
    items = ItemArrays.build(emb, np.eye(N, 8, dtype=np.float32), np.array(["a"] * N), np.ones(N, bool))
    assert RetrievalConfig().backend == "faiss"
    assert RetrievalConfig.from_env({"RETRIEVAL": "exact"}).backend == "exact"
    r = build_retriever(items, RetrievalConfig(backend="faiss", nlist=50, nprobe=10, min_items=1000))
    assert isinstance(r, FaissRetriever) and r.index.nlist == 50 and r.index.nprobe == 10
    assert isinstance(retriever_for(emb, r.index), FaissRetriever)
    assert build_retriever(items, RetrievalConfig(backend="faiss", min_items=N + 1)).name == "exact"


def test_unit_vectors_are_indexed_by_l2_others_by_inner_product(written, emb: np.ndarray, tmp_path) -> None:
    faiss = pytest.importorskip("faiss")
    assert json.loads((written / ann.ANN_META_FILE).read_text())["metric"] == "l2"
    assert ann.build_index(emb, nlist=20).metric_type == faiss.METRIC_L2
    scaled = emb * np.linspace(0.5, 2.0, len(emb), dtype=np.float32)[:, None]  # lengths carry score
    assert not ann.unit_norm(scaled) and ann.unit_norm(emb) and not ann.unit_norm(np.zeros((3, 4)))
    ann.write_index(tmp_path, scaled, "v1", nlist=60)
    meta = json.loads((tmp_path / ann.ANN_META_FILE).read_text())
    assert meta["metric"] == "inner_product" and meta["nprobe"] == ann.default_nprobe(60) == 24
    index = ann.read_index(tmp_path, scaled, row_norms(scaled), "v1")
    hits = 0
    for q in emb[:50]:
        rows, scores = index.candidates(q, 200)
        exact = np.argsort(-(scaled @ q))[:10]
        hits += len(set(rows[np.argsort(-scores)[:10]].tolist()) & set(exact.tolist()))
    assert hits / 500 >= 0.9  # maximum inner product, not nearest direction


def test_default_probes_grow_with_the_partitions() -> None:
    assert [ann.default_nprobe(n) for n in (60, 316, 1200, 2000, 4000)] == [24, 24, 24, 40, 80]
    items = ItemArrays.build(clustered(3000), np.eye(3000, 8, dtype=np.float32), np.array(["a"] * 3000),
                             np.ones(3000, bool))
    r = build_retriever(items, RetrievalConfig(backend="faiss", nlist=40, min_items=1000))
    assert r.index.nprobe == 24  # RetrievalConfig.nprobe 0: the index's own default
