"""Ranking math of the recommend function against hand-computed values (no Firestore)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from httpfn.errors import InvalidParameter
from recommender.config import ConfigError, Settings
from recommender.index import ItemIndex
from recommender.params import recommend_params
from schemas.catalog import CatalogItem
from schemas.firestore import ItemDoc
from scoring import ranking


def test_cosine_hand_computed():
    assert ranking.cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert ranking.cosine(np.array([3.0, 4.0]), np.array([-3.0, -4.0])) == pytest.approx(-1.0)
    assert ranking.cosine(np.zeros(2), np.array([1.0, 1.0])) == 0.0


def test_l2_normalize_keeps_zero_rows():
    out = ranking.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_minmax_scales_to_unit_interval_and_constant_to_zero():
    np.testing.assert_allclose(ranking.minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(ranking.minmax(np.array([5.0, 5.0])), [0.0, 0.0])
    assert ranking.minmax(np.array([])).size == 0


def test_hybrid_weights_alpha_and_beta():
    final, cf, cb = ranking.hybrid_scores(np.array([10.0, 6.0, 2.0]), np.array([0.2, 1.0, 0.6]), 0.25)
    np.testing.assert_allclose(cf, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(cb, [0.0, 1.0, 0.5])
    np.testing.assert_allclose(final, [0.25, 0.25 * 0.5 + 0.75, 0.75 * 0.5])


def test_top_k_orders_best_first_and_drops_blocked():
    scores = np.array([0.3, -np.inf, 0.9, 0.1, 0.5], dtype=np.float32)
    assert ranking.top_k(scores, 3).tolist() == [2, 4, 0]
    assert ranking.top_k(scores, 10).tolist() == [2, 4, 0, 3]  # the -inf row never comes back
    assert ranking.top_k(scores, 0).size == 0


def test_pool_size():
    assert ranking.pool_size(10, 200, 4) == 200
    assert ranking.pool_size(100, 200, 4) == 400


def test_blocked_mask_combines_stock_category_and_exclusions():
    out_of_stock = np.array([False, True, False, False])
    codes = np.array([0, 0, 1, 2], dtype=np.int32)
    blocked = ranking.blocked_mask(4, out_of_stock, codes, np.array([0, 1]), np.array([2]))
    assert blocked.tolist() == [False, True, True, True]
    assert ranking.blocked_mask(4, None, codes, None, None) is None
    assert not out_of_stock[0]  # the index's own array is not modified


def _rank_example(alpha: float, blocked=None, k: int = 3):
    emb = np.array([[1.0, 0.0], [0.8, 0.2], [0.2, 0.8], [0.0, 1.0]], dtype=np.float32)
    content = ranking.l2_normalize(np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]]))
    query = np.array([1.0, 0.0], dtype=np.float32)
    profile = np.array([1.0, 0.0], dtype=np.float32)
    return ranking.rank_hybrid(query, emb, content, profile, k, alpha, blocked, pool=4)


def test_rank_hybrid_hand_computed():
    # CF dots: 1.0, 0.8, 0.2, 0.0 -> minmax 1, .8, .2, 0. CB cosines: 0, 1, 1, .6 -> 0, 1, 1, .6
    r = _rank_example(alpha=0.5)
    # finals: .5, .9, .6, .3
    assert r.rows.tolist() == [1, 2, 0]
    np.testing.assert_allclose(r.score, [0.9, 0.6, 0.5], atol=1e-6)
    np.testing.assert_allclose(r.cf, [0.8, 0.2, 1.0], atol=1e-6)
    np.testing.assert_allclose(r.cb, [1.0, 1.0, 0.0], atol=1e-6)
    assert _rank_example(alpha=1.0).rows.tolist() == [0, 1, 2]
    # alpha=0: CB ties between rows 1 and 2 are broken by the raw CF score
    assert _rank_example(alpha=0.0).rows.tolist() == [1, 2, 3]


def test_rank_hybrid_filters_still_return_k():
    blocked = np.array([True, True, False, False])
    r = _rank_example(alpha=1.0, blocked=blocked, k=2)
    assert r.rows.tolist() == [2, 3]
    # normalisation is over the allowed candidates only: row 2 (0.2) is best -> 1, row 3 -> 0
    np.testing.assert_allclose(r.cf, [1.0, 0.0])


@pytest.mark.parametrize("k", [1, 10, 199, 200, 300])
def test_best_first_matches_a_full_lexsort(k):
    rng = np.random.default_rng(k)
    final = rng.integers(0, 20, 200).astype(np.float64) / 20  # many ties on the final score
    cf_raw = rng.integers(0, 5, 200).astype(np.float32)  # and on the raw CF score
    rows = rng.permutation(10_000)[:200]
    expected = np.lexsort((rows, -cf_raw, -final))[:k]
    np.testing.assert_array_equal(ranking.best_first(final, cf_raw, rows, k), expected)


def test_rank_cosine_skips_zero_vectors():
    m = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    rows, cos = ranking.rank_cosine(np.array([2.0, 0.0]), m, np.linalg.norm(m, axis=1), 3, None)
    assert rows.tolist() == [0, 2]
    np.testing.assert_allclose(cos, [1.0, 1 / math.sqrt(2)], rtol=1e-6)


def _index() -> ItemIndex:
    return ItemIndex.build("v1", 1000, np.array(["a", "b"]), np.array([[1, 0], [0, 1]]),
                           np.array([[1, 0, 0], [0, 1, 0]]), np.array(["x", "y"]),
                           np.array([True, False]), np.array([2.0, 1.0]), updated_through=1000)


def _doc(item_id: str, emb, version: str = "v1", in_stock: bool = True, category: str = "x"):
    item = CatalogItem(item_id=item_id, title="t", category=category, brand="b", price=1.0, tags=(),
                       in_stock=in_stock, updated_at=0)
    return ItemDoc(item=item, embedding=emb, content_vector=(0.0, 0.0, 2.0), model_version=version,
                   indexed_at=2000)


def test_index_with_items_updates_and_appends_copy_on_write():
    idx = _index()
    new = idx.with_items([_doc("b", (0.0, 3.0), in_stock=True, category="z"),
                          _doc("c", (5.0, 5.0)), _doc("d", (1.0, 1.0), version="v0")])
    assert idx.size == 2 and not idx.in_stock[1]  # the old index is untouched
    assert new.item_ids.tolist() == ["a", "b", "c", "d"] and new.added == 2
    assert new.in_stock.tolist() == [True, True, True, True]
    assert new.categories.tolist() == ["x", "z", "x", "x"]
    np.testing.assert_allclose(new.embeddings[1], [0.0, 3.0])
    np.testing.assert_allclose(new.norms, [1.0, 3.0, math.sqrt(50), 0.0])  # d: other version
    np.testing.assert_allclose(new.content.rows([2])[0], [0.0, 0.0, 1.0])  # content re-normalised
    np.testing.assert_allclose(new.content.to_dense(), [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(idx.content.to_dense(), [[1, 0, 0], [0, 1, 0]])  # untouched
    np.testing.assert_allclose(new.content_norms, [1.0, 1.0, 1.0, 1.0])
    assert new.updated_through == 2000 and new.row_of["d"] == 3


def test_index_with_items_stock_update_shares_unchanged_arrays():
    """A stock-only update (same content vector, embedding of another version) copies neither matrix."""
    idx = _index().with_items([_doc("c", (5.0, 5.0))])  # row 2: content (0, 0, 1)
    new = idx.with_items([_doc("c", (1.0, 1.0), version="v0", in_stock=False)])
    assert new.content is idx.content and new.embeddings is idx.embeddings
    assert new.in_stock.tolist() == [True, False, False] and idx.in_stock.tolist() == [True, False, True]


def test_params_defaults_and_errors():
    s = Settings(default_alpha=0.7)
    p = recommend_params({"user_id": ["u"], "session_items": ["a, b,a"]}, s, from_query=True)
    assert (p.k, p.alpha, p.exclude_seen, p.in_stock_only, p.session_items) == (
        10, None, True, True, ("a", "b"))  # no alpha: the model version's default
    with pytest.raises(InvalidParameter) as e:
        recommend_params({"alpha": ["NaN"]}, s, from_query=True)
    assert e.value.parameter == "alpha"


def test_settings_reject_bad_environment(monkeypatch):
    monkeypatch.setenv("DEFAULT_ALPHA", "1.5")
    with pytest.raises(ConfigError, match="DEFAULT_ALPHA"):
        Settings.from_env()
    monkeypatch.setenv("DEFAULT_ALPHA", "0.4")
    assert Settings.from_env().default_alpha == 0.4


@pytest.mark.parametrize("n,k", [(20_000, 1), (20_000, 10), (20_000, 200), (20_000, 900),
                                 (4_550, 270), (2_048, 256), (2_047, 10)])
def test_top_k_is_exact_on_large_arrays(n, k):
    rng = np.random.default_rng(k)
    scores = rng.standard_normal(n).astype(np.float32)
    scores[rng.random(n) < 0.3] = -np.inf  # blocked rows
    scores[:50] = 2.5  # ties
    expected = np.argsort(-scores, kind="stable")[:k]
    got = ranking.top_k(scores, k)
    np.testing.assert_array_equal(np.sort(scores[got])[::-1], scores[expected])
    assert len(set(got.tolist())) == k
    # with a blocked mask (here the whole top 5 %, so the threshold shortcut must fall back too)
    for blocked in (rng.random(n) < 0.5, scores >= np.quantile(scores[np.isfinite(scores)], 0.95)):
        masked = np.where(blocked, -np.inf, scores)
        expected = np.argsort(-masked, kind="stable")[:k]
        got = ranking.top_k(scores, k, blocked)
        assert not blocked[got].any()
        np.testing.assert_array_equal(scores[got], masked[expected])


def test_retrieve_scores_only_allowed_rows_when_most_are_blocked():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10_000, 8)).astype(np.float32)
    q = rng.standard_normal(8).astype(np.float32)
    blocked = np.ones(10_000, dtype=bool)
    blocked[::7] = False
    rows, scores = ranking.retrieve(q, emb, 30, blocked)
    full = emb @ q
    full[blocked] = -np.inf
    np.testing.assert_array_equal(rows, np.argsort(-full, kind="stable")[:30])
    np.testing.assert_allclose(scores, full[rows], rtol=1e-6)
    assert not blocked[rows].any()


def test_content_dot_and_mean_match_the_dense_rows():
    """Candidate CB scores and the history profile from sparse entries equal the dense-row math."""
    from schemas.content import SparseRows

    rng = np.random.default_rng(3)
    dense = np.zeros((300, 40), dtype=np.float32)
    hit = rng.random(dense.shape) < 0.1
    dense[hit] = rng.random(int(hit.sum()), dtype=np.float32)
    dense[5] = 0.0  # an item without content
    sparse = SparseRows.from_dense(dense)
    rows = np.array([5, 0, 299, 17, 17, 120])  # repeats and an empty row, in any order
    vec = rng.random(40, dtype=np.float32)
    got = ranking.content_dot(sparse, rows, vec)
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, dense[rows] @ vec, rtol=1e-6, atol=1e-6)
    assert got[0] == 0.0
    np.testing.assert_allclose(ranking.content_dot(dense, rows, vec), dense[rows] @ vec, rtol=1e-6)
    assert ranking.content_dot(sparse, np.array([], dtype=np.int64), vec).shape == (0,)
    mean = ranking.content_mean(sparse, rows)
    assert mean.dtype == np.float32 and mean.shape == (40,)
    np.testing.assert_allclose(mean, dense[rows].mean(axis=0), rtol=1e-6, atol=1e-7)
