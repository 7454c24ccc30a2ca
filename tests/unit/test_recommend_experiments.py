"""The recommend function's side of online experiments, in memory: loading the running set,
assignment, the arm's overrides (alpha, diversity, pool, retrieval, model version) and the
attributable response; the served-record publisher is in test_recommend_served.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from httpfn.errors import InvalidParameter
from recommender.config import Settings
from recommender.experiments import ExperimentParser, ExperimentSet, unit_of, with_overrides
from recommender.params import RecommendParams, recommend_params
from recommender.service import Recommender
from recommender.store import StoreUnavailable
from schemas.experiments import ArmOverrides, Experiment, assign
from schemas.firestore import CurrentModelDoc, HistoryEntry, ModelDoc, UserDoc
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot

V1, V2 = "v20260101-000000-aaaaaa", "v20260102-000000-bbbbbb"
NOW_S = 1_800_000_000.0
NOW_MS = int(NOW_S * 1000)


def experiment_doc(*arms: tuple[str, float, dict], start: int = 0, stop: int | None = None) -> dict:
    return {"arms": [{"name": n, "share": s, "overrides": o} for n, s, o in arms], "start_ms": start,
            "stop_ms": stop}


AB = experiment_doc(("control", 0.5, {}), ("cf", 0.5, {"alpha": 1.0}))


def snapshot(version: str, n: int = 40, seed: int = 0) -> IndexSnapshot:
    """Items along 4 axes (10 per category); content = the category one-hot, except a tag column."""
    rng = np.random.default_rng(seed)
    cats = np.arange(n) % 4
    emb = np.eye(4, dtype=np.float32)[cats] + 0.3 * rng.random((n, 4), dtype=np.float32)
    content = np.zeros((n, 6), np.float32)
    content[np.arange(n), cats] = 1.0
    content[np.arange(n), 4 + (np.arange(n) // 4) % 2] = 0.8
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    return IndexSnapshot(version=version, created_at=1, item_ids=np.array([f"i{i}" for i in range(n)]),
                         embeddings=emb, content=content, categories=np.array([f"c{c}" for c in cats]),
                         in_stock=np.ones(n, bool), popularity=rng.random(n).astype(np.float32))


class MemoryStore:
    """The Store protocol plus the experiment reads, over dicts; ``fail`` makes every read fail."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.models, self.experiments, self.users = tmp, {}, {}, {}
        self.current: CurrentModelDoc | None = None
        self.fail = False

    def add_model(self, snap: IndexSnapshot, current: bool = False) -> None:
        path = self.tmp / snap.version / INDEX_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        snap.save(path)
        self.models[snap.version] = ModelDoc(version=snap.version, status="ready", created_at=1,
                                             artifact_uri=str(path.parent), index_uri=str(path), dim=4,
                                             item_count=len(snap.item_ids))
        if current:
            self.current = CurrentModelDoc(snap.version, str(path.parent), str(path), 1)

    def _check(self) -> None:
        if self.fail:
            raise StoreUnavailable("down")

    def get_user(self, user_id: str) -> UserDoc | None:
        self._check()
        return self.users.get(user_id)

    def get_current_model(self) -> CurrentModelDoc | None:
        self._check()
        return self.current

    def get_trending(self) -> None:
        self._check()

    def items_since(self, indexed_from: int, limit: int) -> list:
        self._check()
        return []

    def get_model(self, version: str) -> ModelDoc | None:
        self._check()
        return self.models.get(version)

    def list_experiments(self) -> list[tuple[str, dict]]:
        self._check()
        return list(self.experiments.items())


@pytest.fixture
def store(tmp_path) -> MemoryStore:
    s = MemoryStore(tmp_path)
    s.add_model(snapshot(V1), current=True)
    s.users["u1"] = UserDoc(user_id="u1", history=(HistoryEntry("e1", "i0", "view", 1),
                                                    HistoryEntry("e2", "i4", "view", 2)),
                            last_event_id="e2", last_event_ts=2, updated_at=2, model_version=V1,
                            embedding=(0.0, 1.0, 0.0, 0.0))  # CF says c1, her history (CB) c0
    return s


def service_for(store: MemoryStore, **settings) -> Recommender:
    service = Recommender(Settings(refresh_seconds=3600.0, **settings), store, clock=lambda: NOW_S)
    service.start()
    return service


def user_in(experiment: Experiment, arm: str) -> str:
    return next(u for u in (f"user{i}" for i in range(1000)) if assign(experiment, u).name == arm)


# ---------------------------------------------------------------- the set and its rules


def test_parser_keeps_valid_documents_sorted_and_logs_an_invalid_one_once(caplog):
    parser = ExperimentParser()
    docs = [("zeta", AB), ("bad", {"arms": [{"name": "a", "share": 1.0}]}), ("alpha", AB),
            ("worse", {"arms": "nope"})]
    with caplog.at_level(logging.ERROR, logger="recommender.experiments"):
        first = parser.parse(docs)
        second = parser.parse(docs)
    assert [e.id for e in first.experiments] == ["alpha", "zeta"] == [e.id for e in second.experiments]
    assert sum("experiments/bad is invalid" in r.getMessage() for r in caplog.records) == 1
    assert sum("experiments/worse is invalid" in r.getMessage() for r in caplog.records) == 1


def test_assignment_first_running_by_id_and_no_unit_no_experiment():
    a = Experiment.from_document("a-exp", {**AB, "start_ms": NOW_MS + 1})  # not started yet
    b = Experiment.from_document("b-exp", AB)
    c = Experiment.from_document("c-exp", {**AB, "stop_ms": NOW_MS - 1})  # stopped
    exps = ExperimentSet((a, b, c))
    got = exps.assign("someone", NOW_MS)
    assert got is not None and got.experiment == "b-exp" and got.arm == assign(b, "someone").name
    assert exps.assign(None, NOW_MS) is None
    assert exps.assign("someone", NOW_MS + 1).experiment == "a-exp"  # a starts: first by id wins
    assert ExperimentSet((c,)).assign("someone", NOW_MS) is None
    assert [e.id for e in exps.running(NOW_MS)] == ["b-exp"]


def test_unit_is_the_user_else_the_session():
    assert unit_of(RecommendParams(user_id="u", k=1, alpha=None, session_id="s")) == "u"
    assert unit_of(RecommendParams(user_id=None, k=1, alpha=None, session_id="s")) == "s"
    assert unit_of(RecommendParams(user_id=None, k=1, alpha=None)) is None


def test_arm_overrides_win_over_the_request():
    p = RecommendParams(user_id="u", k=5, alpha=0.2, diversity=0.1)
    assert with_overrides(p, ArmOverrides(alpha=1.0, diversity=0.5)) == RecommendParams(
        user_id="u", k=5, alpha=1.0, diversity=0.5)
    assert with_overrides(p, ArmOverrides(pool=50)) is p and with_overrides(p, None) is p


def test_session_id_is_a_validated_request_parameter():
    s = Settings()
    assert recommend_params({"session_id": ["s-1"]}, s, from_query=True).session_id == "s-1"
    assert recommend_params({"session_id": None, "k": 3}, s, from_query=False).session_id is None
    for bad in ("a/b", "", "x\n"):
        with pytest.raises(InvalidParameter) as e:
            recommend_params({"session_id": [bad]}, s, from_query=True)
        assert e.value.parameter == "session_id"


# ---------------------------------------------------------------- the service


def test_response_carries_a_fresh_id_and_null_experiment_without_one(store):
    service = service_for(store)
    a = service.recommend(RecommendParams(user_id="u1", k=5, alpha=None))
    b = service.recommend(RecommendParams(user_id="u1", k=5, alpha=None))
    assert a["experiment"] is None and a["arm"] is None
    assert len(a["recommendation_id"]) == 32 and a["recommendation_id"] != b["recommendation_id"]
    assert service.health()[1]["served_records"]["topic"] is None  # SERVED_TOPIC unset: off


def test_experiments_follow_the_refresh_and_a_failed_read_keeps_the_last_set(store):
    service = service_for(store)
    exp = Experiment.from_document("ab", AB)
    user = user_in(exp, "cf")
    assert service.recommend(RecommendParams(user_id=user, k=3, alpha=None))["experiment"] is None
    store.experiments["ab"] = AB
    service.refresh()
    body = service.recommend(RecommendParams(user_id=user, k=3, alpha=0.3))
    assert (body["experiment"], body["arm"], body["alpha"]) == ("ab", "cf", 1.0)  # the arm wins
    assert service.health()[1]["experiments"] == ["ab"]
    store.fail = True
    service.refresh()
    store.fail = False
    assert service.recommend(RecommendParams(user_id=None, k=3, alpha=None, session_id=user))["arm"] == "cf"
    store.experiments["ab"] = {**AB, "stop_ms": NOW_MS}  # stopped
    service.refresh()
    assert service.recommend(RecommendParams(user_id=user, k=3, alpha=0.3))["experiment"] is None
    store.experiments["ab"] = {"arms": []}  # now invalid: ignored, never an error
    service.refresh()
    assert service.recommend(RecommendParams(user_id=user, k=3, alpha=0.3))["alpha"] == 0.3


def test_alpha_pool_and_retrieval_overrides_rank_as_without_an_experiment_with_those_values(store):
    store.experiments["ab"] = experiment_doc(
        ("control", 0.5, {}), ("t", 0.5, {"alpha": 0.0, "pool": 6, "retrieval": "exact", "diversity": 0.0}))
    service = service_for(store)
    exp = Experiment.from_document("ab", store.experiments["ab"])
    user = user_in(exp, "t")
    store.users[user] = store.users["u1"]
    treated = service.recommend(RecommendParams(user_id=user, k=5, alpha=0.9))
    plain = service_for(store, min_pool=6, pool_factor=1).rank_for(
        service.index, RecommendParams(user_id=user, k=5, alpha=0.0), store.users["u1"])
    whole_pool = service.rank_for(service.index, RecommendParams(user_id=user, k=5, alpha=0.0),
                                  store.users["u1"])
    assert treated["arm"] == "t" and treated["alpha"] == 0.0
    ids = [i["item_id"] for i in treated["items"]]
    assert ids == [i["item_id"] for i in plain["items"]]
    # the 6 CF candidates are c1 items; over the whole catalogue alpha 0 picks her history's c0
    assert {int(i[1:]) % 4 for i in ids} == {1}
    assert {int(i["item_id"][1:]) % 4 for i in whole_pool["items"]} == {0}
    control = user_in(exp, "control")
    store.users[control] = store.users["u1"]
    assert service.recommend(RecommendParams(user_id=control, k=5, alpha=0.9))["alpha"] == 0.9


def test_an_arms_model_version_ranks_once_loaded_else_the_current_one(store):
    exp_doc = experiment_doc(("control", 0.5, {}), ("v2", 0.5, {"model_version": V2}))
    store.experiments["mv"] = exp_doc
    service = service_for(store)  # V2 has no models/ document yet: not loaded, served V1
    user = user_in(Experiment.from_document("mv", exp_doc), "v2")
    body = service.recommend(RecommendParams(user_id=user, k=3, alpha=None))
    assert body["arm"] == "v2" and body["model_version"] == V1
    store.add_model(snapshot(V2, seed=1))
    service.indexes._arm_retry_at.clear()  # skip the retry wait
    assert service.refresh()["arm_versions"] == [V2]
    body = service.recommend(RecommendParams(user_id=user, k=3, alpha=None))
    assert body["model_version"] == V2 and body["arm"] == "v2"
    assert service.health()[1]["arm_model_versions"] == [V2]
    other = user_in(Experiment.from_document("mv", exp_doc), "control")
    assert service.recommend(RecommendParams(user_id=other, k=3, alpha=None))["model_version"] == V1
    del store.experiments["mv"]  # deleted: its version is dropped
    service.refresh()
    assert service.health()[1]["arm_model_versions"] == []
    assert service.recommend(RecommendParams(user_id=user, k=3, alpha=None))["model_version"] == V1


def test_a_store_without_experiment_reads_serves_no_experiment(store):
    class Plain:
        get_user, get_current_model = store.get_user, store.get_current_model
        get_trending, items_since = store.get_trending, store.items_since

    store.experiments["ab"] = AB
    service = service_for(Plain())
    assert service.recommend(RecommendParams(user_id="u1", k=3, alpha=None))["experiment"] is None


def test_degraded_answers_still_carry_the_arm(store):
    store.experiments["ab"] = AB
    service = service_for(store)
    store.fail = True
    body = service.recommend(RecommendParams(user_id="u1", k=3, alpha=None))
    assert body["degraded"] is True and body["experiment"] == "ab"
    assert body["arm"] == assign(Experiment.from_document("ab", AB), "u1").name
