"""SparseRows (schemas.content) against the same operations on dense numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.catalog import CatalogItem
from schemas.content import ContentEncoder, SparseRows


def _dense(n: int = 40, c: int = 25, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((n, c)).astype(np.float32)
    x[x < 0.8] = 0.0
    x[[0, n // 2, n - 1]] = 0.0  # empty rows first, in the middle and last
    return x


def test_from_dense_round_trip_and_shape():
    x = _dense()
    s = SparseRows.from_dense(x)
    assert s.shape == (40, 25) and len(s) == 40 and s.dim == 25
    assert s.nnz == np.count_nonzero(x)
    assert s.indptr.dtype == np.int64 and s.indices.dtype == np.int32 and s.data.dtype == np.float32
    np.testing.assert_array_equal(s.to_dense(), x)


def test_rows_match_dense_fancy_indexing():
    x = _dense()
    s = SparseRows.from_dense(x)
    for idx in ([3], [0], [39, 20, 3, 3, 12], [-1, -2], list(range(40)), []):
        got = s.rows(np.array(idx, dtype=np.int64))
        assert got.shape == (len(idx), 25) and got.dtype == np.float32
        np.testing.assert_array_equal(got, x[idx])
    with pytest.raises(IndexError):
        s.rows([40])


def test_dot_and_norms_match_dense():
    x = _dense()
    s = SparseRows.from_dense(x)
    v = np.random.default_rng(1).standard_normal(25).astype(np.float32)
    np.testing.assert_allclose(s.dot(v), x @ v, rtol=1e-5, atol=1e-6)
    assert s.dot(v)[0] == 0.0 and s.dot(v)[39] == 0.0
    np.testing.assert_allclose(s.norms, np.linalg.norm(x, axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="vector of length 3"):
        s.dot(np.ones(3))


def test_all_empty_rows():
    s = SparseRows.from_dense(np.zeros((3, 4), np.float32))
    assert s.nnz == 0
    np.testing.assert_array_equal(s.dot(np.ones(4)), np.zeros(3))
    np.testing.assert_array_equal(s.norms, np.zeros(3))
    np.testing.assert_array_equal(s.rows([2, 0]), np.zeros((2, 4)))


def test_l2_normalized_matches_dense_and_keeps_zero_rows():
    x = _dense()
    got = SparseRows.from_dense(x).l2_normalized().to_dense()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(got, np.divide(x, norms, out=np.zeros_like(x), where=norms > 0),
                               rtol=1e-6)


def test_append_returns_new_rows_and_leaves_the_original():
    x, y = _dense(), _dense(5, seed=2)
    s = SparseRows.from_dense(x)
    for extra in (y, SparseRows.from_dense(y)):
        both = s.append(extra)
        np.testing.assert_array_equal(both.to_dense(), np.vstack([x, y]))
    np.testing.assert_array_equal(s.to_dense(), x)
    with pytest.raises(ValueError, match="width"):
        s.append(np.ones((1, 3), np.float32))


def test_with_rows_replaces_rows_like_dense_assignment():
    x, y = _dense(), _dense(4, seed=3)
    y[1] = 0.0
    y[2, :] = 0.5  # a row denser than the one it replaces
    idx = [39, 0, 12, 20]
    expected = x.copy()
    expected[idx] = y
    s = SparseRows.from_dense(x)
    got = s.with_rows(idx, y)
    np.testing.assert_array_equal(got.to_dense(), expected)
    np.testing.assert_allclose(got.norms, np.linalg.norm(expected, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(s.to_dense(), x)  # copy on write
    with pytest.raises(ValueError, match="distinct"):
        s.with_rows([1, 1], y[:2])


def test_constructor_validates():
    with pytest.raises(ValueError, match="indptr ends at 2"):
        SparseRows(np.array([0, 2]), np.array([0]), np.array([1.0]), 3)
    with pytest.raises(ValueError, match="outside"):
        SparseRows(np.array([0, 1]), np.array([3]), np.array([1.0]), 3)


def test_encoder_encode_sparse_matches_encode_many():
    items = [CatalogItem(item_id=f"i{k}", title="t", category=("a", "b", "c")[k % 3],
                         brand=("x", "y")[k % 2], price=float(k), tags=("t1", "t2", "t3")[:k % 4],
                         in_stock=True, updated_at=0) for k in range(30)]
    enc = ContentEncoder.fit(items)
    got = enc.encode_sparse(items, chunk=7)
    assert got.shape == (30, enc.dim)
    np.testing.assert_array_equal(got.to_dense(), enc.encode_many(items))
    assert enc.encode_sparse([]).shape == (0, enc.dim)


@pytest.mark.parametrize("padded", [False, True], ids=["csr", "padded"])
def test_rows_dot_and_rows_mean_equal_the_dense_math(padded):
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((40, 12)) < 0.3, rng.random((40, 12)), 0.0).astype(np.float32)
    dense[5] = 0.0  # an empty row
    sparse = SparseRows.from_dense(dense)
    assert sparse.pad() if padded else True
    idx = np.array([5, 0, 39, 7, 7])
    vec = rng.random(12).astype(np.float32)
    got_dot, got_mean = sparse.rows_dot(idx, vec), sparse.rows_mean(idx)
    assert got_dot.dtype == np.float32 and got_mean.dtype == np.float32
    np.testing.assert_allclose(got_dot, dense[idx] @ vec, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_mean, dense[idx].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_pad_only_when_rows_are_narrow():
    dense = np.zeros((3, 10), np.float32)
    dense[1, :9] = 1.0  # one row of 9 entries
    assert not SparseRows.from_dense(dense).pad(max_width=8)
    s = SparseRows.from_dense(dense)
    assert s.pad(max_width=9)
    np.testing.assert_allclose(s.rows_dot([1, 0], np.arange(10, dtype=np.float32)), [36.0, 0.0])
    assert SparseRows.empty(4, 2).pad()  # no entries at all: width 1 of padding
