"""Stop the pipeline mid-stream and start it again on the same subscription.

Events keep arriving while it drains, while it is down and after it is back; some are replays of
events it already counted. Nothing may be lost and nothing counted twice: the second run seeds
per-user state from ``users/{id}`` and the stored history is the dedup memory.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from schemas.events import ProductEvent
from testing.artifacts import tiny_artifact
from tests.integration.test_streaming_pipeline import HISTORY, Stack, expected_history, user_docs, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class SteadyPublisher(threading.Thread):
    """Publishes ``events`` at ``rate`` per second in the background."""

    def __init__(self, stack: Stack, events: list[ProductEvent], rate: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.events, self.rate = stack, events, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.events:
                self.stack.publish_events([event])
                self.sent += 1
                time.sleep(1.0 / self.rate)
        except Exception as e:  # surfaced by the test
            self.error = e


def test_restart_mid_stream_loses_nothing_and_counts_nothing_twice(emulators, firestore_client, tmp_path):
    from pipelines.training import publish
    from pipelines.training.artifact import load_towers

    artifact = tiny_artifact(seed=0)
    towers = load_towers(artifact)
    publish.publish_version(artifact, client=firestore_client)
    db = firestore_client
    stack = Stack(emulators, tmp_path)
    rng = random.Random(3)
    users = [u for u in towers.users_vocab() if u][:8]
    items = [i for i in towers.items_vocab() if i]
    start = int(time.time() * 1000) - 300_000
    events = [ProductEvent(f"r{i}", "view", rng.choice(users), rng.choice(items), start + i * 100)
              for i in range(240)]

    first = stack.start()
    publisher = SteadyPublisher(stack, events, rate=20)
    try:
        publisher.start()
        # mid-stream: once the first run has counted some events, stop it while events keep coming
        wait_until(lambda: sum(d.event_count for d in user_docs(db).values()) >= 40, 120,
                   "the first run to count 40 events", first, stack)
        assert publisher.is_alive(), "stop must happen mid-stream"
        assert first.stop(timeout_s=60) == 0, stack.log(1)
        counted_by_first = sum(d.event_count for d in user_docs(db).values())
        assert 0 < counted_by_first < len(events)
        # replays of events the first run already counted, published while it is down
        stack.publish_events(events[:30])
        second = stack.start()
        publisher.join(60)
        assert publisher.error is None and publisher.sent == len(events)
        stack.publish_events(events[:50:3])  # replays while the second run is up

        by_user: dict[str, list[ProductEvent]] = {}
        for e in events:
            by_user.setdefault(e.user_id, []).append(e)

        def all_counted():
            docs = user_docs(db)
            done = all(u in docs and docs[u].event_count >= len(evs) for u, evs in by_user.items())
            return docs if done else None

        docs = wait_until(all_counted, 180, "every event counted after the restart", second, stack)
        time.sleep(3)  # let any replayed duplicate that would be double-counted land
        docs = user_docs(db)
        for user, evs in by_user.items():
            assert docs[user].event_count == len(evs), user  # nothing lost, nothing twice
            assert [h.event_id for h in docs[user].history] == [e.event_id for e in expected_history(evs)]
            assert len(docs[user].history) == min(HISTORY, len(evs))
            assert docs[user].model_version == towers.version
    finally:
        first.stop(timeout_s=60)
        if "second" in locals():
            assert second.stop(timeout_s=60) == 0, stack.log(2)
