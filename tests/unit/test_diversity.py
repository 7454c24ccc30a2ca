"""Diversity on request (scoring.diversity): MMR against hand-computed picks, and diversity 0 = today."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from httpfn.errors import InvalidParameter
from recommender.config import ConfigError, Settings
from recommender.params import RecommendParams, recommend_params
from schemas.content import SparseRows
from scoring import diversity, ranking
from scoring.rank import (
    ItemArrays,
    RankRequest,
    RetrievalConfig,
    build_retriever,
    candidates,
    content_profile,
    rank_pool,
    rank_user,
    user_query,
)

# four candidates in 2-D: 0 and 1 point the same way, 2 is orthogonal to them, 3 between
UNIT = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
RELEVANCE = np.array([1.0, 0.9, 0.5, 0.6])


@pytest.mark.parametrize("lam, expected", [
    # λ = 0.5. Pick 1: 0.5·rel = [.5, .45, .25, .3] -> 0. Pick 2: 0.5·rel - 0.5·cos(·, 0):
    # 1: .45 - .5 = -.05; 2: .25 - 0 = .25; 3: .3 - .3 = 0 -> 2. Pick 3: 1: .45 - .5·max(1, 0) = -.05;
    # 3: .3 - .5·max(.6, .8) = -.1 -> 1.
    (0.5, [0, 2, 1]),
    # λ = 0.2. Pick 2: 0.8·rel - 0.2·cos: 1: .72 - .2 = .52; 2: .4; 3: .48 - .12 = .36 -> 1.
    # Pick 3: 2: .4 - .2·max(0, 0) = .4; 3: .48 - .2·max(.6, .6) = .36 -> 2.
    (0.2, [0, 1, 2]),
    # λ = 1: relevance only breaks the first tie (all 0 -> position 0); then the least similar.
    # Pick 2: -cos(·, 0): 1: -1, 2: 0, 3: -.6 -> 2. Pick 3: 1: -max(1, 0) = -1; 3: -max(.6, .8) -> 3.
    (1.0, [0, 2, 3]),
])
def test_mmr_hand_computed(lam, expected):
    assert diversity.mmr(RELEVANCE, UNIT, 3, lam).tolist() == expected


def test_mmr_negative_similarity_is_a_bonus_and_ties_go_to_the_lower_position():
    unit = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    # pick 2 at λ = 0.5: 1: .5·.2 + .5 = .6; 2 and 3: .5·.6 - 0 = .3 -> 1 (an unclipped cosine);
    # pick 3: 2 and 3 tie at .3 -> the lower position
    assert diversity.mmr(np.array([1.0, 0.2, 0.6, 0.6]), unit, 3, 0.5).tolist() == [0, 1, 2]
    assert diversity.mmr(np.array([0.5, 0.5]), unit[:2], 5, 0.5).tolist() == [0, 1]  # k > pool


def test_mmr_compares_content_when_an_item_has_no_embedding():
    unit = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)  # 2: no embedding
    content = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    has = np.array([True, True, False])
    # pick 2 at λ = 0.5: 1: .5·.9 - .5·cos_emb(1, 0) = -.05; 2: .5·.8 - .5·cos_content(2, 0) = -.1 -> 1
    assert diversity.mmr(np.array([1.0, 0.9, 0.8]), unit, 2, 0.5, content, has).tolist() == [0, 1]
    # with 2's content unlike 0's: 2 scores .4 -> 2; then 1: .45 - .5·max(1, cos_content(1, 2) = 1)
    content2 = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    assert diversity.mmr(np.array([1.0, 0.9, 0.8]), unit, 3, 0.5, content2, has).tolist() == [0, 2, 1]
    u, fb, h = diversity.similarity_vectors(unit * 3, np.array([3.0, 3.0, 0.0], np.float32),
                                            SparseRows.from_dense(content2 * 2), np.arange(3))
    np.testing.assert_allclose(u, unit)
    np.testing.assert_allclose(fb, content2)
    assert h.tolist() == [True, True, False]


def test_rerank_diverse_keeps_hybrid_scores_and_uses_normalised_relevance():
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    rows = np.array([3, 1, 0, 2])
    cands = ranking.Candidates(rows=rows, cf_raw=np.array([4.0, 3.0, 2.0, 1.0], np.float32),
                               cb_raw=np.zeros(4, np.float32))
    norms = np.linalg.norm(emb, axis=1).astype(np.float32)
    out = diversity.rerank_diverse(cands, 3, 1.0, 0.5, emb, norms, np.zeros((4, 1), np.float32))
    # rel = cf = [1, 2/3, 1/3, 0] for rows [3, 1, 0, 2]; pick 1: row 3; pick 2: .5·rel - .5·cos(·, row 3):
    # row 1: 1/3 - .3 = .033; row 0: 1/6 - .3; row 2: 0 - .4 -> row 1; pick 3: row 0: 1/6 - .5 = -.33,
    # row 2: -.4 -> row 0
    assert out.rows.tolist() == [3, 1, 0]
    np.testing.assert_allclose(out.score, [1.0, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(out.cf, out.score)


def test_ties_in_relevance_break_like_best_first():
    # equal hybrid scores everywhere: cf_raw then row decide, as in best_first, at any small λ
    emb = np.eye(6, dtype=np.float32)
    rows = np.array([5, 2, 4, 0, 3, 1])
    cf_raw = np.array([1.0, 1.0, 1.0, 0.5, 0.5, 0.5], np.float32)
    cands = ranking.Candidates(rows, cf_raw, np.zeros(6, np.float32))
    plain = ranking.rerank(cands, 6, 0.0)  # alpha 0 and no cb: every score is 0
    diverse = diversity.rerank_diverse(cands, 6, 0.0, 0.3, emb, np.ones(6, np.float32), emb)
    assert plain.rows.tolist() == diverse.rows.tolist() == [2, 4, 5, 0, 1, 3]


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(3)
    n, d = 3000, 16
    centres = rng.normal(size=(20, d))
    emb = (centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    emb[rng.choice(n, 100, replace=False)] = 0.0  # new items without an embedding
    cats = rng.integers(0, 8, n)
    content = np.zeros((n, 24), np.float32)
    content[np.arange(n), cats] = 1.0
    content[np.arange(n), 8 + rng.integers(0, 16, n)] = 1.0
    items = ItemArrays.build(emb, content, cats.astype(str), rng.random(n) > 0.05, content_normalized=False)
    return items, build_retriever(items, RetrievalConfig(backend="exact")), rng


def test_diversity_zero_is_todays_ranking_exactly(catalogue):
    items, retriever, rng = catalogue
    for _ in range(20):
        hist = rng.integers(0, items.size, 8)
        query = user_query(items, rng.normal(size=16).astype(np.float32), hist, np.empty(0, np.int64))
        request = RankRequest(k=20, alpha=float(rng.random()), pool=200, exclude_rows=hist,
                              in_stock_only=True)
        today = ranking.rank_hybrid(query.vector, items.embeddings, items.content,
                                    content_profile(items.content, hist), 20, request.alpha,
                                    ranking.Filter(items.size, items.out_of_stock, None, None, hist), 200)
        ranked = rank_user(items, retriever, query, request)
        for a, b in zip(dataclasses.astuple(ranked), dataclasses.astuple(today)):
            np.testing.assert_array_equal(a, b)  # rows, score, cf, cb


def test_diversity_spreads_the_list(catalogue):
    items, retriever, rng = catalogue
    unit = ranking.l2_normalize(items.embeddings)
    spread = {0.0: [], 0.5: []}
    for _ in range(20):
        hist = rng.integers(0, items.size, 8)
        query = user_query(items, rng.normal(size=16).astype(np.float32), hist, np.empty(0, np.int64))
        cands = candidates(items, retriever, query, RankRequest(k=10, alpha=0.8, pool=200, exclude_rows=hist))
        for lam in spread:
            ranked = rank_pool(items, cands, 10, 0.8, lam)
            assert len(set(ranked.rows.tolist())) == 10 and not np.isin(ranked.rows, hist).any()
            u = unit[ranked.rows]
            spread[lam].append(1.0 - (u @ u.T)[np.triu_indices(10, 1)].mean())
    assert np.mean(spread[0.5]) > np.mean(spread[0.0]) + 0.05


# ------------------------------------------------------------------ the request parameter
def test_diversity_parameter_from_query_and_json_and_its_default(monkeypatch):
    s = Settings()
    assert recommend_params({"user_id": ["u"]}, s, from_query=True).diversity == 0.0
    assert recommend_params({"diversity": [" 0.25 "]}, s, from_query=True).diversity == 0.25
    assert recommend_params({"diversity": 1}, s, from_query=False).diversity == 1.0
    assert recommend_params({}, Settings(default_diversity=0.3), from_query=False).diversity == 0.3
    monkeypatch.setenv("DEFAULT_DIVERSITY", "0.2")
    assert Settings.from_env().default_diversity == 0.2
    monkeypatch.setenv("DEFAULT_DIVERSITY", "2")
    with pytest.raises(ConfigError, match="DEFAULT_DIVERSITY"):
        Settings.from_env()
    assert "diversity" in {f.name for f in dataclasses.fields(RecommendParams)}  # the console's slider


@pytest.mark.parametrize("values, from_query", [
    ({"diversity": ["1.5"]}, True), ({"diversity": ["-0.1"]}, True), ({"diversity": ["nan"]}, True),
    ({"diversity": ["x"]}, True), ({"diversity": ["0.1", "0.2"]}, True), ({"diversity": [""]}, True),
    ({"diversity": "0.5"}, False), ({"diversity": True}, False), ({"diversity": None}, False),
    ({"diversity": 1.01}, False),
])
def test_bad_diversity_is_an_invalid_parameter(values, from_query):
    with pytest.raises(InvalidParameter) as e:
        recommend_params(values, Settings(), from_query=from_query)
    assert e.value.parameter == "diversity" and e.value.status == 400


# ------------------------------------------------------------------ the offline figures
def test_ild_and_category_coverage_hand_computed():
    from pipelines.evaluation.metrics import category_coverage, intra_list_diversity

    vectors = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.6, 0.8]])
    # list 1: pairs (0,1) cos 1, (0,2) 0, (1,2) 0 -> distances 0, 1, 1 -> 2/3
    # list 2: (4, 3): no embedding -> distance 1; list 3: one item, left out
    lists = np.array([[0, 1, 2, -1], [4, 3, -1, -1], [2, -1, -1, -1]])
    assert intra_list_diversity(lists, vectors, k=4) == pytest.approx((2 / 3 + 1.0) / 2)
    # (0, 4) cos .6 -> .4; the cut-off applies before the pairs
    assert intra_list_diversity(np.array([[0, 4, 2]]), vectors, k=2) == pytest.approx(0.4)
    cats = np.array([0, 0, 1, 2, 1])
    # 2 of 4, 2 of 4, 1 of 4 (pads are uncovered slots)
    assert category_coverage(lists, cats, k=4) == pytest.approx((2 + 2 + 1) / 12)
    assert category_coverage(np.array([[0, 2, 3, 4]]), cats, k=4) == pytest.approx(3 / 4)
