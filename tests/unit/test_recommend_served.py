"""The served-record publisher (recommender/served.py): a bounded queue that never blocks a request,
drained in batches by one background thread, every lost record counted."""

from __future__ import annotations

import threading
import time

import pytest

from recommender.config import Settings
from recommender.params import RecommendParams
from recommender.served import ServedPublisher
from recommender.service import Recommender
from schemas.experiments import ServedRecord, parse_served
from tests.unit.test_recommend_experiments import AB, NOW_MS, MemoryStore, snapshot

TOPIC = "projects/p/topics/recommendations-served"


def record(n: int) -> ServedRecord:
    return ServedRecord(recommendation_id=f"r{n}", timestamp=n, items=("a", "b"))


class GatedSink:
    """Records each batch; the first publish waits for ``gate`` (so the queue fills meanwhile)."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.records: list[ServedRecord] = []
        self.gate, self.entered = threading.Event(), threading.Event()
        self.fail = fail

    def publish(self, records) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append([r.recommendation_id for r in records])
        self.records.extend(records)
        if self.fail:
            raise TimeoutError("deadline exceeded")


def test_a_full_queue_drops_and_counts_without_blocking_then_drains_in_batches():
    sink = GatedSink()
    pub = ServedPublisher(TOPIC, queue_max=5, batch_max=3, sink_factory=lambda: sink)
    assert pub.submit(record(0))
    assert sink.entered.wait(5)  # the thread holds r0 in flight; the queue is empty again
    t = time.perf_counter()
    accepted = [pub.submit(record(n)) for n in range(1, 21)]
    assert time.perf_counter() - t < 0.5  # 20 submits against a stuck publisher: no waiting
    assert accepted == [True] * 5 + [False] * 15
    assert pub.health()["dropped_queue_full"] == 15 and pub.health()["queued"] == 5
    sink.gate.set()
    assert pub.wait_idle(5)
    assert sink.batches == [["r0"], ["r1", "r2", "r3"], ["r4", "r5"]]  # at most batch_max per call
    h = pub.health()
    assert (h["published"], h["batches"], h["failed"], h["queued"]) == (6, 3, 0, 0)


def test_a_batch_waits_its_latency_for_more_records():
    sink = GatedSink()
    sink.gate.set()
    pub = ServedPublisher(TOPIC, batch_max=100, sink_factory=lambda: sink, linger_s=0.5)
    for n in range(5):
        pub.submit(record(n))
        time.sleep(0.02)
    assert pub.wait_idle(5)
    assert sink.batches == [["r0", "r1", "r2", "r3", "r4"]]  # one Publish call, not five


def test_a_failing_publish_is_counted_and_the_thread_lives_on():
    sink = GatedSink(fail=True)
    sink.gate.set()
    pub = ServedPublisher(TOPIC, queue_max=100, batch_max=10, sink_factory=lambda: sink)
    for n in range(4):
        pub.submit(record(n))
    assert pub.wait_idle(5)
    sink.fail = False
    pub.submit(record(9))
    assert pub.wait_idle(5)
    h = pub.health()
    assert h["failed"] == 4 and h["failed_batches"] >= 1 and h["published"] == 1


def test_a_sink_that_cannot_be_built_counts_failed():
    def broken():
        raise RuntimeError("no credentials")

    pub = ServedPublisher(TOPIC, sink_factory=broken)
    pub.submit(record(1))
    assert pub.wait_idle(5) and pub.health()["failed"] == 1


def test_off_without_a_topic_and_reset_in_a_forked_child():
    off = ServedPublisher(None)
    assert not off.enabled and off.submit(record(1)) is False and off.health()["published"] == 0
    sink = GatedSink()
    sink.gate.set()
    pub = ServedPublisher(TOPIC, sink_factory=lambda: sink)
    pub.submit(record(1))
    assert pub.wait_idle(5)
    parent_thread = pub._thread
    pub._forked()  # what os.register_at_fork runs in a gunicorn worker
    assert pub._thread is None and pub.health()["published"] == 0
    pub.submit(record(2))
    assert pub.wait_idle(5) and pub._thread is not parent_thread and pub.health()["published"] == 1


def test_settings_name_the_topic_path(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    monkeypatch.setenv("SERVED_TOPIC", "recommendations-served")
    assert Settings.from_env().served_topic_path == "projects/proj/topics/recommendations-served"
    monkeypatch.setenv("SERVED_TOPIC", "projects/other/topics/t")
    assert Settings.from_env().served_topic_path == "projects/other/topics/t"
    monkeypatch.setenv("SERVED_TOPIC", "")
    assert Settings.from_env().served_topic_path is None
    monkeypatch.setenv("SERVED_QUEUE_MAX", "0")
    with pytest.raises(ValueError, match="SERVED_QUEUE_MAX"):
        Settings.from_env()


def test_every_answered_list_is_published_with_its_id_and_items_in_order(tmp_path):
    store = MemoryStore(tmp_path)
    store.add_model(snapshot("v1"), current=True)
    store.experiments["ab"] = AB
    sink = GatedSink()
    sink.gate.set()
    pub = ServedPublisher(TOPIC, sink_factory=lambda: sink)
    service = Recommender(Settings(refresh_seconds=3600.0), store, clock=lambda: NOW_MS / 1000, served=pub)
    service.start()
    bodies = [service.recommend(RecommendParams(user_id=None, k=4, alpha=None, session_id="s1",
                                                session_items=("i1",))),
              service.recommend(RecommendParams(user_id=None, k=3, alpha=None))]  # no unit, no experiment
    assert pub.wait_idle(5)
    sent = {r.recommendation_id: r for r in sink.records}
    for body in bodies:
        rec = sent[body["recommendation_id"]]
        assert list(rec.items) == [i["item_id"] for i in body["items"]]
        assert (rec.experiment, rec.arm, rec.model_version, rec.strategy) == (
            body["experiment"], body["arm"], "v1", body["strategy"])
        assert rec.timestamp == NOW_MS
        assert parse_served(rec.to_pubsub_data()) == rec  # the contract's own validation
    assert sent[bodies[0]["recommendation_id"]].session_id == "s1" and bodies[0]["experiment"] == "ab"
    assert bodies[1]["experiment"] is None
    assert service.health()[1]["served_records"]["published"] == 2
