"""Forgetting a user without emulators: the state transition, seeding after a restart, the
loader's tombstones and the archive compaction."""

from __future__ import annotations

import json
import os

from pipelines.data import load_dataset, write_events_jsonl
from pipelines.streaming.user_state import (
    ACCEPTED,
    DUPLICATE,
    TOO_OLD,
    Seed,
    StoredUser,
    UpdateUserStateFn,
    UserState,
    apply_events,
    apply_forget,
    pack_dedup,
    unpack_dedup,
)
from schemas.events import ForgetRequest, ProductEvent
from schemas.firestore import UserDoc
from scripts.archive_compact import compact

T0 = 1_700_000_000_000


def ev(i: int, user: str = "u1", ts: int | None = None, item: str | None = None) -> ProductEvent:
    return ProductEvent(f"e{i}", "view", user, item or f"i{i}", T0 + i * 1000 if ts is None else ts)


def test_forget_empties_state_and_old_events_never_come_back():
    state, _ = apply_events(UserState("u1"), [ev(i) for i in range(6)], history_length=3, now_s=0)
    assert state.event_count == 6 and state.seen and state.recent
    forget = ForgetRequest("r1", "u1", T0 + 10_000)
    gone, applied = apply_forget(state, forget)
    assert applied and gone == UserState("u1", forgotten_at=forget.timestamp, floor=gone.floor)
    assert (gone.history, gone.event_count, gone.recent, gone.seen) == ((), 0, (), ())
    # replayed (ids known before), late (new ids, older time), at the forget time: all too old
    old = [ev(2), ev(50, ts=T0 + 9_000), ev(51, ts=forget.timestamp)]
    after, outcomes = apply_events(gone, old, history_length=3, now_s=0)
    assert outcomes == [TOO_OLD] * 3 and after == gone
    new = ev(60, ts=forget.timestamp + 1)
    fresh, outcomes = apply_events(gone, [new, new], history_length=3, now_s=0)
    assert outcomes == [ACCEPTED, DUPLICATE] and fresh.event_count == 1 and fresh.item_ids == ["i60"]
    # the same request again (redelivered) or an older one changes nothing
    assert apply_forget(fresh, forget) == (fresh, False)
    assert apply_forget(fresh, ForgetRequest("r0", "u1", T0)) == (fresh, False)
    # the floor survives the dedup field's round trip (users/{id}.dedup of the fresh history)
    assert unpack_dedup(pack_dedup(fresh))[1] == fresh.floor


def test_seeding_after_a_restart_keeps_the_forget_floor():
    fn = UpdateUserStateFn(history_length=3, store=None)
    gone = fn._initial_state("u1", Seed(StoredUser(None, None, T0)))
    assert gone.forgotten_at == T0 and gone.event_count == 0
    assert apply_events(gone, [ev(0, ts=T0)], 3, now_s=0)[1] == [TOO_OLD]
    doc = UserDoc(user_id="u1", history=(), last_event_id="e9", last_event_ts=T0 + 9,
                  updated_at=T0 + 9, event_count=1)
    later = fn._initial_state("u1", Seed(StoredUser(doc, None, T0)))
    assert later.forgotten_at == T0 and later.event_count == 1 and later.floor[0] == T0


def _archive(tmp_path):
    d = tmp_path / "archive"
    write_events_jsonl([ev(i, user=f"u{i % 3}", item=f"i{i % 4}") for i in range(12)], d / "events-a.jsonl")
    write_events_jsonl([ev(20, user="u1", ts=T0 + 100_000)], d / "events-c.jsonl")  # after the forget
    tomb = ForgetRequest("r1", "u1", T0 + 50_000)
    (d / "events-b.jsonl").write_text(json.dumps(tomb.to_dict()) + "\n")
    return d


def test_loader_drops_the_forgotten_users_events_up_to_the_tombstone(tmp_path):
    d = _archive(tmp_path)
    data = load_dataset(str(d))
    u1 = [e.event_id for e in data.events if e.user_id == "u1"]
    assert u1 == ["e20"]  # only the event after the forget
    assert len(data.events) == 12 - 4 + 1 and data.metadata["forgotten"] == 4


def test_compaction_rewrites_atomically_and_is_idempotent(tmp_path):
    d = _archive(tmp_path)
    before = load_dataset(str(d)).events
    report = compact(d)
    counts = (report.files_scanned, report.files_rewritten, report.events_removed, report.tombstones)
    assert counts == (3, 1, 4, 1)
    lines = (d / "events-a.jsonl").read_text().splitlines()
    assert len(lines) == 8 and not any('"u1"' in line for line in lines)
    assert not [p for p in os.listdir(d) if p.startswith(".compact-")]
    assert load_dataset(str(d)).events == before  # the reader saw the same data before and after
    again = compact(d)
    assert (again.files_rewritten, again.events_removed, again.tombstones) == (0, 0, 1)


def test_compaction_leaves_files_the_pipeline_may_still_append_to(tmp_path):
    d = _archive(tmp_path)
    report = compact(d, min_age_s=300)
    assert report.files_skipped_recent == 1 and report.files_rewritten == 0


class RecordingBatch:
    def __init__(self, log: list, error: Exception | None) -> None:
        self.log, self.error = log, error

    def set(self, ref, data, **kw) -> None:
        self.log.append(("set", ref.path, data))

    def delete(self, ref) -> None:
        self.log.append(("delete", ref.path))

    def _add_write_pbs(self, pbs) -> None:
        self.log.append(("set_pbs", len(pbs)))

    def commit(self) -> None:
        if self.error is not None:
            raise self.error


class RecordingClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.log: list = []
        self.error = error

    def collection(self, name):
        from types import SimpleNamespace

        return SimpleNamespace(document=lambda i: SimpleNamespace(
            path=f"{name}/{i}", _document_path=f"projects/p/databases/(default)/documents/{name}/{i}"))

    def batch(self):
        return RecordingBatch(self.log, self.error)


def _writer(client):
    from pipelines.streaming.firestore_io import MonotonicGuard, WriteUserDocsFn

    fn = WriteUserDocsFn(settings=None)
    fn._client, fn._guard = client, MonotonicGuard()
    fn.start_bundle()
    return fn


def test_writer_deletes_the_document_and_stores_the_floor_and_a_later_forget_outranks_counts():
    from pipelines.streaming.firestore_io import UserWrite

    client = RecordingClient()
    fn = _writer(client)
    old = UserDoc("u1", (), "e9", T0, 0, event_count=9)
    fn.process(UserWrite(old, (ev(9),), None))
    list(fn.finish_bundle())
    request = ForgetRequest("r1", "u1", T0 + 5)
    empty = UserDoc("u1", (), "", 0, 0, event_count=0)
    fn.process(UserWrite(empty, (request,), None, forgotten_at=request.timestamp))
    assert list(fn.finish_bundle()) == []
    assert client.log[1:] == [("set", "forgotten_users/u1", {"user_id": "u1", "forgotten_at": T0 + 5}),
                              ("delete", "users/u1")]
    # the fresh history (count 1) after the forget is written although 9 > 1 was written before
    fn.process(UserWrite(UserDoc("u1", (), "e10", T0 + 6, 0, event_count=1), (ev(10),), None, T0 + 5))
    list(fn.finish_bundle())
    assert client.log[-1] == ("set_pbs", 1)


def test_a_failed_forget_is_dead_lettered_as_the_forget_request():
    from google.api_core import exceptions

    from pipelines.streaming.firestore_io import UserWrite
    from schemas import names
    from schemas.events import is_forget, parse_forget

    fn = _writer(RecordingClient(exceptions.ServiceUnavailable("down")))
    request = ForgetRequest("r1", "u1", T0 + 5)
    fn.process(UserWrite(UserDoc("u1", (), "", 0, 0, event_count=0), (request,), None, request.timestamp))
    (out,) = list(fn.finish_bundle())
    message = out.value.value
    assert parse_forget(message.data) == request and is_forget(message.attributes)
    assert message.attributes[names.DLQ_REASON_ATTR].startswith("user_forget: ServiceUnavailable")
