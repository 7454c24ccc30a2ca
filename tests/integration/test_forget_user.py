"""Forgetting a user end to end on the emulators: ingest ``DELETE /users/{id}`` -> pipeline ->
Firestore, keyed state across a restart, the archive, a training run on it, and compaction."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pipelines.data import load_dataset
from schemas import names
from schemas.events import ProductEvent
from scripts.archive_compact import compact
from tests.integration.test_ingest_function import make_client
from tests.integration.test_streaming_pipeline import Stack, user_docs, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GONE, KEPT = "forget-me", "keep-me"
N_KEPT = 40  # the other user's distinct items: enough for the artefact's faiss index to train


def test_forgotten_user_leaves_no_trace_and_starts_afresh(emulators, firestore_client, tmp_path, monkeypatch):
    db = firestore_client
    stack = Stack(emulators, tmp_path)
    client = make_client(monkeypatch, emulators.project, stack.paths["events"][0])
    t0 = int(time.time() * 1000) - 600_000
    old = [ProductEvent(f"g{i}", "view", GONE, f"i{i}", t0 + i) for i in range(6)]
    kept = [ProductEvent(f"k{i}", "view", KEPT, f"i{i}", t0 + i) for i in range(N_KEPT)]

    def marker(n: int) -> None:  # an event of the other user, then wait until it is counted
        stack.publish_events([ProductEvent(f"k{n}", "view", KEPT, "i1", t0 + n)])
        wait_until(lambda: getattr(user_docs(db).get(KEPT), "event_count", 0) == n + 1,
                   60, f"marker {n}", run, stack)

    run = stack.start("--user-write-interval-seconds", "0")
    try:
        stack.publish_events(old + kept)
        wait_until(lambda: {u: d.event_count for u, d in user_docs(db).items()} == {GONE: 6, KEPT: N_KEPT},
                   90, "both users counted", run, stack)
        first, second = client.delete(f"/users/{GONE}"), client.delete(f"/users/{GONE}")
        assert (first.status_code, second.status_code) == (202, 202)
        forget_at = second.get_json()["forget_at"]
        wait_until(lambda: GONE not in user_docs(db), 60, "users/{id} deleted", run, stack)
        tomb = db.collection(names.FORGOTTEN_USERS).document(GONE).get().to_dict()
        assert tomb == {"user_id": GONE, "forgotten_at": forget_at}  # the second request is the floor
        # late (older than the forget, new id) and replayed events never resurrect the history
        stack.publish_events([old[2], ProductEvent("late1", "view", GONE, "i9", forget_at - 1)])
        marker(N_KEPT)
        assert GONE not in user_docs(db)
        assert run.stop(timeout_s=60) == 0, stack.log()

        run = stack.start("--user-write-interval-seconds", "0")  # state seeded from Firestore again
        stack.publish_events([old[3], ProductEvent("late2", "view", GONE, "i8", forget_at)])
        marker(N_KEPT + 1)
        assert GONE not in user_docs(db)  # no state came back across the restart
        snapshot = tmp_path / "snapshot"
        shutil.copytree(stack.archive, snapshot)
        stack.publish_events([ProductEvent("new1", "view", GONE, "i7", forget_at + 1)])
        wait_until(lambda: GONE in user_docs(db), 60, "a fresh history", run, stack)
        fresh = user_docs(db)[GONE]
        assert fresh.event_count == 1 and [h.event_id for h in fresh.history] == ["new1"]
        assert run.stop(timeout_s=60) == 0, stack.log()
    finally:
        if run.poll() is None:
            run.stop(timeout_s=30)

    # the archive: tombstones of both requests; the loader drops every event before them
    data = load_dataset(str(stack.archive))
    assert [e.event_id for e in data.events if e.user_id == GONE] == ["new1"]
    assert data.metadata["forgotten"] == 6 and data.metadata["forgotten_users"] == 1

    # a training run on the archive as it was before the fresh event: the user is not in it
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from pipelines.training.model import ModelConfig
    from pipelines.training.train import load_input, save, train

    version = save(train(load_input(str(snapshot)), ModelConfig(epochs=1, dim=8, batch_size=64)),
                   tmp_path / "models")
    vocab = Path(version, "vocab", "users.txt").read_text().split()
    assert KEPT in vocab and GONE not in vocab

    # compaction removes the old events from the files, keeps the fresh one; a rerun is a no-op
    report = compact(stack.archive)
    assert (report.events_removed, report.tombstones) == (6, 2)
    text = "".join(p.read_text() for p in stack.archive.glob("*.jsonl"))
    assert not any(f'"g{i}"' in text for i in range(6)) and '"new1"' in text
    assert compact(stack.archive).events_removed == 0
