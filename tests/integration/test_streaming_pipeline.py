"""The streaming pipeline end to end on the real Pub/Sub and Firestore emulators.

The pipeline runs as ``python -m pipelines.streaming`` in a subprocess (DirectRunner), on its own
topics and subscriptions, and is always stopped (SIGTERM drains; SIGKILL if it hangs).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import read_events_jsonl
from schemas import names
from schemas.catalog import CatalogItem
from schemas.events import ProductEvent
from schemas.firestore import ItemDoc, TrendingDoc, UserDoc
from scripts.processes import ManagedProcess
from testing.artifacts import tiny_artifact
from testing.stack import pipeline_env
from tests.conftest import pull_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HISTORY = 5


@pytest.fixture(scope="session")
def artifacts():
    """Two tiny model versions (trained once per model-code version, then cached)."""
    return tiny_artifact(seed=0), tiny_artifact(seed=1)


class Stack:
    """Fresh topics/subscriptions for one pipeline run, and helpers to drive it."""

    def __init__(self, emulators, tmp_path: Path) -> None:
        from google.cloud import pubsub_v1

        self.emulators = emulators
        self.project = emulators.project
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:8]
        self.paths = {}
        for kind in ("events", "catalog", "dlq", "served"):
            topic = self.publisher.topic_path(self.project, f"{kind}-{suffix}")
            sub = self.subscriber.subscription_path(self.project, f"{kind}-sub-{suffix}")
            self.publisher.create_topic(name=topic)
            self.subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=30)
            self.paths[kind] = (topic, sub)
        self.archive = tmp_path / "archive"
        self.log_dir = tmp_path
        self.runs = 0

    def start(self, *extra: str):
        self.runs += 1
        args = ["-m", "pipelines.streaming",
                "--events-subscription", self.paths["events"][1],
                "--catalog-subscription", self.paths["catalog"][1],
                "--dead-letter-topic", self.paths["dlq"][0],
                "--served-subscription", self.paths["served"][1],
                "--history-length", str(HISTORY), "--model-refresh-seconds", "1",
                "--archive-dir", str(self.archive), "--archive-window-seconds", "3",
                "--trending-window-seconds", "120", "--trending-period-seconds", "60",
                "--trending-early-firing-seconds", "1", "--drain-idle-seconds", "2", *extra]
        env = pipeline_env(self.emulators.pubsub_host, self.emulators.firestore_host, self.project)
        return ManagedProcess("pipeline", [sys.executable, *args],
                              self.log_dir / f"pipeline-{self.runs}.log", env).start()

    def publish(self, data: bytes, topic: str = "events", **attrs: str) -> None:
        self.publisher.publish(self.paths[topic][0], data, **attrs).result(timeout=30)

    def publish_events(self, events: list[ProductEvent]) -> None:
        topic = self.paths["events"][0]
        futures = [self.publisher.publish(topic, e.to_pubsub_data(), **e.pubsub_attributes()) for e in events]
        for f in futures:
            f.result(timeout=30)

    def log(self, run: int | None = None) -> str:
        return (self.log_dir / f"pipeline-{run or self.runs}.log").read_text(errors="replace")[-3000:]


def user_docs(db) -> dict[str, UserDoc]:
    return {d.id: UserDoc.from_document(d.to_dict()) for d in db.collection(names.USERS).stream()}


def wait_until(predicate, timeout_s: float, what: str, proc=None, stack=None, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"pipeline exited ({proc.returncode}) while waiting for {what}:\n{stack.log()}")
        time.sleep(poll_s)
    detail = f":\n{stack.log()}" if stack else ""
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")


def expected_history(events: list[ProductEvent]) -> list[ProductEvent]:
    return sorted(events, key=lambda e: (e.timestamp, e.event_id))[-HISTORY:]


def test_events_catalogue_dead_letters_trending_archive_and_hot_reload(emulators, firestore_client, tmp_path,
                                                                      artifacts):
    from pipelines.training import publish
    from pipelines.training.artifact import load_towers

    art1, art2 = artifacts
    towers1, towers2 = load_towers(art1), load_towers(art2)
    assert towers1.version != towers2.version
    publish.publish_version(art1, client=firestore_client)
    db = firestore_client
    stack = Stack(emulators, tmp_path)
    users = [u for u in towers1.users_vocab() if u][:6]
    items = [i for i in towers1.items_vocab() if i]
    now = int(time.time() * 1000) - 60_000

    # 8 events per user; neighbours swapped in time (out of order), all distinct
    valid: dict[str, list[ProductEvent]] = {u: [] for u in users}
    for u_i, user in enumerate(users):
        for k in range(8):
            ts = now + k * 1000 + (1500 if k % 3 == 1 else 0)
            kind = ("view", "view", "add_to_cart", "purchase")[k % 4]
            item = items[(u_i * 7 + k) % len(items)]
            valid[user].append(ProductEvent(f"{user}-e{k}", kind, user, item, ts))
    all_valid = [e for evs in valid.values() for e in evs]
    duplicates = all_valid[::5]
    invalid = [(b"{broken json", {"source": "test"}, "payload"),
               (json.dumps({"event_id": "x1", "event_type": "view"}).encode(), {}, "user_id"),
               (json.dumps({**all_valid[0].to_dict(), "event_id": "x2", "event_type": "click"}).encode(),
                {"k": "v"}, "event_type"),
               (json.dumps({**all_valid[0].to_dict(), "event_id": "x3", "user_id": "a/b"}).encode(), {},
                "user_id")]
    new_item = CatalogItem("brand-new-item", "New", "books", "acme", 12.5, ("gift",), True, now)

    proc = stack.start()
    try:
        stack.publish_events(all_valid[: len(all_valid) // 2])
        for data, attrs, _ in invalid:
            stack.publish(data, **attrs)
        stack.publish_events(duplicates)
        stack.publish_events(all_valid[len(all_valid) // 2:])
        stack.publish_events(duplicates)
        stack.publish(new_item.to_pubsub_data(), topic="catalog")
        stack.publish(b'{"item_id": 3}', topic="catalog", origin="feed")

        def all_counted():
            docs = user_docs(db)
            return docs if all(u in docs and docs[u].event_count == 8 for u in users) else None

        docs = wait_until(all_counted, 120, "every valid event in users/*", proc, stack)
        for user in users:
            doc = docs[user]
            hist = expected_history(valid[user])
            assert [h.event_id for h in doc.history] == [e.event_id for e in hist]
            assert doc.model_version == towers1.version
            assert doc.event_count == len(valid[user])  # duplicates not counted
            want = towers1.embed_users([user], [[e.item_id for e in hist]])[0]
            np.testing.assert_allclose(doc.embedding, want, rtol=1e-5, atol=1e-6)
        assert sum(d.event_count for d in docs.values()) == len(all_valid)

        # an event older than a user's whole (full) history, never seen (e.g. redelivered after
        # newer ones): counted once, kept out of the history; its replay is a duplicate
        stale = ProductEvent(f"{users[0]}-stale", "view", users[0], items[0], now - 3_600_000)
        marker = ProductEvent(f"{users[0]}-e9", "view", users[0], items[1], now + 20_000)
        stack.publish_events([stale, marker])
        doc = wait_until(lambda: (d := user_docs(db)[users[0]]).last_event_id == marker.event_id and d,
                         60, "the marker event", proc, stack)
        assert doc.event_count == 10 and stale.event_id not in [h.event_id for h in doc.history]
        marker2 = ProductEvent(f"{users[0]}-e10", "view", users[0], items[1], now + 21_000)
        stack.publish_events([stale, marker2])
        doc = wait_until(lambda: (d := user_docs(db)[users[0]]).last_event_id == marker2.event_id and d,
                         60, "the second marker event", proc, stack)
        assert doc.event_count == 11
        valid[users[0]] += [stale, marker, marker2]

        # dead letters: reason, field, source, original payload and attributes
        dead = pull_all(stack.paths["dlq"][1], expected=len(invalid) + 1, timeout_s=30)
        got = sorted((m.data, m.attributes[names.DLQ_FIELD_ATTR], m.attributes[names.DLQ_SOURCE_ATTR])
                     for m in dead)
        want_dead = sorted([(d, f, "events") for d, _, f in invalid]
                           + [(b'{"item_id": 3}', "item_id", "catalog")])
        assert got == want_dead
        assert all(m.attributes[names.DLQ_REASON_ATTR] for m in dead)
        by_data = {m.data: dict(m.attributes) for m in dead}
        assert by_data[b"{broken json"]["source"] == "test" and by_data[invalid[2][0]]["k"] == "v"
        assert by_data[b'{"item_id": 3}']["origin"] == "feed"

        # the new catalogue item is embedded with the current candidate tower
        item_ref = db.collection(names.ITEMS).document(new_item.item_id)
        snap = wait_until(lambda: (s := item_ref.get()).exists and s, 30, "items/brand-new-item", proc, stack)
        item_doc = ItemDoc.from_document(snap.to_dict())
        assert item_doc.model_version == towers1.version and item_doc.indexed_at >= now
        np.testing.assert_allclose(item_doc.embedding, towers1.embed_items([new_item])[0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(item_doc.content_vector, towers1.content_encoder.encode(new_item),
                                   atol=1e-6)

        # trending: the current window counts the accepted (deduplicated) events
        def trending():
            s = db.collection(names.STATS).document(names.TRENDING_DOC).get()
            return TrendingDoc.from_document(s.to_dict()) if s.exists else None

        doc = wait_until(trending, 30, "stats/trending", proc, stack)
        assert doc.items and doc.window_end - doc.window_start == 120_000
        assert [e.score for e in doc.items] == sorted((e.score for e in doc.items), reverse=True)

        # hot reload: switch models/current; later docs use the new towers, no restart
        publish.publish_version(art2, client=firestore_client)
        probe_user, k = users[1], 100

        def reloaded():
            nonlocal k
            k += 1
            event = ProductEvent(f"{probe_user}-e{k}", "view", probe_user, items[k % len(items)],
                                 now + k * 1000)
            valid[probe_user].append(event)
            stack.publish_events([event])
            time.sleep(1.0)
            d = user_docs(db)[probe_user]
            return d if d.model_version == towers2.version and d.last_event_id == event.event_id else None

        doc = wait_until(reloaded, 90, "user docs written with the new model version", proc, stack, poll_s=0)
        hist = expected_history(valid[probe_user])
        assert [h.event_id for h in doc.history] == [e.event_id for e in hist]
        want = towers2.embed_users([probe_user], [[e.item_id for e in hist]])[0]
        np.testing.assert_allclose(doc.embedding, want, rtol=1e-5, atol=1e-6)
        assert proc.poll() is None, "the pipeline must not restart to reload"
    finally:
        code = proc.stop(timeout_s=60)
    assert code == 0, stack.log()

    # archive: every accepted event exactly once, readable by the training reader
    archived = [e for f in sorted(stack.archive.glob("*.jsonl")) for e in read_events_jsonl(f)]
    accepted = {e.event_id for evs in valid.values() for e in evs}
    assert sorted(e.event_id for e in archived) == sorted(accepted)
