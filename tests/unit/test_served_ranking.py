"""The offline served ranking (pipelines.evaluation.served) equals the recommend function's, item for item.

One fixture (a clustered 3,000-item snapshot, so the IVF backend is used, with out-of-stock items
and measured serving defaults; 40 users with histories and embeddings) ranked twice: by
:func:`pipelines.evaluation.served.rank_lists` and by the function's ``Recommender.recommend``
(its real request path, with an in-memory store instead of Firestore).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.evaluation import served
from pipelines.evaluation.splits import Split
from recommender.config import Settings
from recommender.params import RecommendParams, recommend_params
from recommender.service import Recommender
from schemas.firestore import CurrentModelDoc, HistoryEntry, UserDoc
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot
from scoring.rank import RetrievalConfig, ScoringDefaults, resolve_alpha

VERSION = "v20260101-000000-test00"
N_ITEMS, N_USERS, DIM, N_CAT = 3000, 40, 16, 12
K = 20


class MemoryStore:
    """The function's Store protocol over dicts."""

    def __init__(self, current: CurrentModelDoc, users: dict[str, UserDoc]) -> None:
        self.current, self.users = current, users

    def get_user(self, user_id: str) -> UserDoc | None:
        return self.users.get(user_id)

    def get_current_model(self) -> CurrentModelDoc | None:
        return self.current

    def get_trending(self):  # noqa: ANN201
        return None

    def items_since(self, indexed_from: int, limit: int) -> list:
        return []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, DIM)).astype(np.float32)
    emb = (centres[rng.integers(0, 30, N_ITEMS)] + 0.3 * rng.normal(size=(N_ITEMS, DIM))).astype(np.float32)
    cats = rng.integers(0, N_CAT, N_ITEMS)
    content = np.zeros((N_ITEMS, N_CAT + 20), np.float32)
    content[np.arange(N_ITEMS), cats] = 1.0
    content[np.arange(N_ITEMS), N_CAT + rng.integers(0, 20, N_ITEMS)] = 0.7
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    ids = np.array([f"i{n}" for n in range(N_ITEMS)])
    defaults = ScoringDefaults(alpha=0.8, min_pool=100, alpha_by_history=((0, 0.8), (15, 0.6)))
    snap = IndexSnapshot(version=VERSION, created_at=1, item_ids=ids, embeddings=emb, content=content,
                         categories=np.array([f"c{c}" for c in cats]), in_stock=rng.random(N_ITEMS) > 0.05,
                         popularity=rng.random(N_ITEMS).astype(np.float32),
                         serving_defaults=defaults.to_dict())
    path = tmp_path_factory.mktemp("model") / INDEX_FILE
    snap.save(path)
    train = sp.random(N_USERS, N_ITEMS, density=0.01, random_state=3, format="csr")
    test = sp.random(N_USERS, N_ITEMS, density=0.005, random_state=4, format="csr")
    split = Split.from_matrices(train, test, item_ids=ids.tolist())
    users = np.arange(N_USERS, dtype=np.int32)
    # stored histories of 5-24 events: the rest of each user's train items is in users/{id}.seen
    histories = [served.stored_history(split, users[u:u + 1], 5 + u % 20)[0] for u in users.tolist()]
    seen = served.seen_items(split, users, histories)
    queries = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    docs = {}
    for u, hist, q in zip(users.tolist(), histories, queries):
        entries = tuple(HistoryEntry(f"e{u}-{n}", i, "view", n) for n, i in enumerate(hist))
        docs[str(u)] = UserDoc(user_id=str(u), history=entries, last_event_id="", last_event_ts=0,
                               updated_at=0, model_version=VERSION, embedding=tuple(q.tolist()),
                               seen=tuple(seen[u]))
    current = CurrentModelDoc(version=VERSION, artifact_uri=str(path.parent), index_uri=str(path),
                              switched_at=1, serving_defaults=defaults.to_dict())
    settings = Settings(retrieval="ivf", ivf_nprobe=4, ivf_min_items=1000, refresh_seconds=1e9)
    service = Recommender(settings, MemoryStore(current, docs))
    service.start()
    config = RetrievalConfig(backend="ivf", nprobe=4, min_items=1000)
    catalogue = served.ServedCatalogue.from_snapshot(IndexSnapshot.load(path), split.item_ids, config)
    return split, service, catalogue, served.served_users(catalogue, users, histories, queries, seen)


def _function_lists(service: Recommender, users: np.ndarray, alpha: float | None, diversity: float = 0.0
                    ) -> tuple[list, list]:
    out, alphas = [], []
    for u in users.tolist():
        query = {"user_id": [str(u)], "k": [str(K)], "diversity": [repr(diversity)]}
        if alpha is not None:
            query["alpha"] = [repr(alpha)]
        params = recommend_params(query, service.settings, from_query=True)  # /recommendations?...
        assert params == RecommendParams(user_id=str(u), k=K, alpha=alpha, diversity=diversity)
        body = service.recommend(params)
        assert body["diversity"] == diversity
        assert body["strategy"] == "personalized" and body["query"] == "user_embedding"
        out.append([int(i["item_id"][1:]) for i in body["items"]])
        alphas.append(body["alpha"])
    return out, alphas


@pytest.mark.parametrize("alpha", [None, 0.0, 0.3, 0.7, 1.0])
def test_offline_served_lists_equal_the_function(world, alpha):
    split, service, catalogue, users = world
    assert service.index.ivf is not None and catalogue.retriever.name == "ivf"
    offline, used = served.rank_lists(catalogue, users, K, alpha=alpha)
    online, online_alpha = _function_lists(service, users.users, alpha)
    assert [row[row >= 0].tolist() for row in offline] == online
    assert used.tolist() == online_alpha
    if alpha is None:  # the model version's per-history default, not Settings.default_alpha
        expected = [resolve_alpha(None, catalogue.defaults, h.size) for h in users.history]
        assert online_alpha == expected and set(expected) == {0.8, 0.6}


@pytest.mark.parametrize("alpha, diversity", [(None, 0.2), (None, 0.5), (0.3, 1.0), (1.0, 0.05)])
def test_offline_served_lists_equal_the_function_with_diversity(world, alpha, diversity):
    split, service, catalogue, users = world
    offline, used = served.rank_lists(catalogue, users, K, alpha=alpha, diversity=diversity)
    online, online_alpha = _function_lists(service, users.users, alpha, diversity)
    assert [row[row >= 0].tolist() for row in offline] == online
    assert used.tolist() == online_alpha
    plain, _ = served.rank_lists(catalogue, users, K, alpha=alpha)
    assert (offline != plain).any()  # it re-ranks


def test_diversity_sweep_matches_the_served_rows_and_trades_ndcg_for_spread(world):
    split, _, catalogue, users = world
    sweep = served.diversity_sweep(catalogue, users, split, K, (0.0, 0.5, 1.0))
    for d in (0.0, 0.5):
        metrics, _ = served.evaluate_served(catalogue, users, split, (10, 20), diversity=d)
        assert sweep[d] == {key: metrics[key] for key in ("ndcg@10", "ild@10", "category_coverage@10")}
    assert sweep[0.0]["ild@10"] < sweep[0.5]["ild@10"] < sweep[1.0]["ild@10"]
    assert 0.0 < sweep[0.0]["category_coverage@10"] <= sweep[1.0]["category_coverage@10"] <= 1.0


def test_served_metrics_score_lists_as_returned(world):
    split, _, catalogue, users = world
    metrics, lists = served.evaluate_served(catalogue, users, split, (10, 20))
    assert lists.shape == (N_USERS, K)
    assert 0.0 <= metrics["ndcg@10"] <= 1.0 and metrics["alpha"] > 0
    # history and seen are excluded: no list repeats a train item
    assert metrics["train_items_in_top20"] == 0.0
    assert all(len(s) > 0 for s in users.seen) and all(h.size < 25 for h in users.history)


def test_choose_prefers_the_best_mean_and_keeps_ties_on_the_default():
    flat = np.full(300, 0.5)
    per_user = {(200, 1.0): flat, (200, 0.5): flat, (100, 1.0): flat - 0.1, (100, 0.5): flat + 0.1}
    defaults, report = served.choose(per_user, np.full(300, 5))
    assert (defaults.min_pool, defaults.alpha) == (100, 0.5)
    defaults, _ = served.choose({(200, 1.0): flat, (200, 0.5): flat}, np.full(300, 5))
    assert (defaults.min_pool, defaults.alpha) == (200, 1.0)  # a tie keeps the larger alpha


def test_choose_adopts_history_buckets_only_when_they_pay():
    lengths = np.repeat([2, 15, 40], 300)
    short_likes_cb = np.where(lengths < 10, 1.0, 0.0)
    per_user = {(200, 1.0): 1.0 - short_likes_cb, (200, 0.0): short_likes_cb}
    defaults, report = served.choose(per_user, lengths)
    assert report["buckets_adopted"] and defaults.alpha_by_history == ((0, 0.0), (10, 1.0), (30, 1.0))
    assert defaults.alpha_for(3) == 0.0 and defaults.alpha_for(45) == 1.0


def test_scoring_defaults_round_trip_and_old_documents():
    d = ScoringDefaults(alpha=0.9, min_pool=100, alpha_by_history=((0, 0.8), (10, 1.0)))
    assert ScoringDefaults.from_dict(d.to_dict()) == d
    assert ScoringDefaults.from_dict({"alpha": 0.9, "alpha_by_history": [[10, 1.0], [0, 0.8]]}) == \
        ScoringDefaults(alpha=0.9, alpha_by_history=((0, 0.8), (10, 1.0)))
    assert ScoringDefaults.from_dict(None) is None and ScoringDefaults.from_dict({}) is None
    with pytest.raises(ValueError):
        ScoringDefaults.from_dict({"alpha": 1.5})
    assert resolve_alpha(0.3, d, 50) == 0.3 and resolve_alpha(None, None, 5, fallback=0.7) == 0.7


def test_serving_config_reads_the_function_settings():
    env = served.read_env_file(served.SERVING_ENV)
    config = served.serving_config()
    assert config.backend == env["RETRIEVAL"].lower() and config.nprobe == int(env["IVF_NPROBE"])
    assert config.min_items == int(env["IVF_MIN_ITEMS"])
