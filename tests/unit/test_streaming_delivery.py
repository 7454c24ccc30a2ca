"""Delivery guarantees of the streaming pipeline without emulators: write coalescing, dead letters
from every stage, and the DirectRunner read's ack rule (on a fake runner state)."""

from __future__ import annotations

from types import SimpleNamespace

import apache_beam as beam
import pytest

from pipelines.compat import beam_direct_pubsub
from pipelines.streaming import user_state
from pipelines.streaming.embed import EmbedUsersFn
from pipelines.streaming.firestore_io import MonotonicGuard, UserWrite, WriteUserDocsFn
from pipelines.streaming.model_watcher import LoadedModel
from pipelines.streaming.parse import DEAD_LETTER
from pipelines.streaming.user_state import UpdateUserStateFn, UserState, UserUpdate
from schemas import names
from schemas.events import ProductEvent, parse_event
from schemas.firestore import UserDoc

T0 = 1_767_225_600_000


def ev(event_id: str, user: str = "u1", ts: int = T0) -> ProductEvent:
    return ProductEvent(event_id=event_id, event_type="view", user_id=user, item_id="i1", timestamp=ts)


class Cell:
    def __init__(self) -> None:
        self.value = None

    def read(self):
        return self.value

    def write(self, value) -> None:
        self.value = value


class Timer:
    def __init__(self) -> None:
        self.set_to: list = []

    def set(self, ts) -> None:
        self.set_to.append(ts)


def test_a_user_is_emitted_at_most_once_per_interval_and_the_rest_waits_for_the_timer(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(user_state.time, "time", lambda: clock[0])
    fn = UpdateUserStateFn(history_length=5, store=None, write_interval_s=1.0)
    state, emitted, timer = Cell(), Cell(), Timer()

    def bundle(*events):
        fn.start_bundle()
        out = list(fn.process(("u1", (events, None)), state=state, emitted=emitted, flush=timer))
        list(fn.finish_bundle())
        return out

    first = bundle(ev("e1", ts=T0 + 1))
    assert [(u.state.event_count, [e.event_id for e in u.events]) for u in first] == [(1, ["e1"])]
    clock[0] = 100.3
    assert bundle(ev("e2", ts=T0 + 2)) == []  # within the interval: waits
    assert [t.micros for t in timer.set_to] == [101_000_000]
    clock[0] = 100.6
    assert bundle(ev("e3", ts=T0 + 3), ev("e2", ts=T0 + 2)) == []  # no second timer; e2 duplicate
    assert len(timer.set_to) == 1
    clock[0] = 101.0
    flushed = list(fn.flush_coalesced(state=state, emitted=emitted))
    assert [(tv.value.state.event_count, [e.event_id for e in tv.value.events]) for tv in flushed] == [
        (3, ["e2", "e3"])]
    assert list(fn.flush_coalesced(state=state, emitted=emitted)) == []  # nothing waits any more
    clock[0] = 102.5
    assert [u.state.event_count for u in bundle(ev("e4", ts=T0 + 4))] == [4]  # interval over: at once


class FailingBatch:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def _add_write_pbs(self, pbs) -> None:
        pass

    def set(self, *args, **kwargs) -> None:
        pass

    def commit(self) -> None:
        raise self.error


class FailingClient:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def collection(self, name):
        return SimpleNamespace(document=lambda doc_id: SimpleNamespace(
            _document_path=f"projects/p/databases/(default)/documents/{name}/{doc_id}"))

    def batch(self):
        return FailingBatch(self.error)


def test_a_failed_user_commit_dead_letters_its_events_and_the_pipeline_goes_on():
    from google.api_core import exceptions

    fn = WriteUserDocsFn.__new__(WriteUserDocsFn)
    WriteUserDocsFn.__init__(fn, settings=None)
    fn._client, fn._guard = FailingClient(exceptions.ServiceUnavailable("down")), MonotonicGuard()
    fn.start_bundle()
    doc = UserDoc("u1", (), "e2", T0, 0, event_count=2)
    fn.process(UserWrite(doc, (ev("e1"), ev("e2")), '{"floor":null,"recent":[]}'))
    out = list(fn.finish_bundle())
    assert [o.tag for o in out] == [DEAD_LETTER, DEAD_LETTER]
    message = out[0].value.value
    assert parse_event(message.data) == ev("e1")
    assert message.attributes[names.DLQ_REASON_ATTR].startswith("user_write: ServiceUnavailable")
    assert message.attributes[names.DLQ_SOURCE_ATTR] == "events"
    # not remembered as written: the next write of the user is not skipped as stale
    assert fn._guard.claim([doc]) == [doc]


class BrokenTowers:
    version = "v1"

    def embed_users(self, user_ids, histories):
        raise ValueError("shape mismatch")


def test_an_embedding_failure_dead_letters_the_batch_events():
    fn = EmbedUsersFn(models=None)
    fn._watcher = SimpleNamespace(current=lambda: LoadedModel("v1", BrokenTowers(), None))
    fn.start_bundle()
    fn.process(UserUpdate(UserState("u1", event_count=1), (ev("e1"),)), timestamp=0)
    fn.process(UserUpdate(UserState("u2", event_count=1), (ev("f1", "u2"),)), timestamp=0)
    out = list(fn.finish_bundle())
    assert sorted(parse_event(o.value.value.data).event_id for o in out) == ["e1", "f1"]
    assert all(o.tag == DEAD_LETTER for o in out)
    assert out[0].value.value.attributes[names.DLQ_REASON_ATTR].startswith("embed_users: ValueError")


# ---------------------------------------------------------------- the DirectRunner read's ack rule


class FakeSubscriber:
    def __init__(self) -> None:
        self.acked: list[str] = []

    def acknowledge(self, subscription, ack_ids) -> None:
        self.acked.extend(ack_ids)


class Step:
    def __init__(self, transform, label: str) -> None:
        self.transform, self.full_label = transform, label


class FakeRunner:
    """What the ack rule reads of the DirectRunner: per step, pending bundles, fired timers and
    (for a stateful ParDo with a timer) each key's timers."""

    def __init__(self) -> None:
        self.state_step = Step(beam.ParDo(UpdateUserStateFn(3, None)), "State")
        self.other_step = Step(beam.Map(str), "Other")
        self.tw = {s: SimpleNamespace(_pending=set(), _fired_timers=set())
                   for s in (self.state_step, self.other_step)}
        self.keyed = {"u1": SimpleNamespace(timers={})}
        self._watermark_manager = SimpleNamespace(_transform_to_watermarks=self.tw)
        self._transform_keyed_states = {self.state_step: self.keyed, self.other_step: {}}

    def set_timer(self, ts: int | None) -> None:
        self.keyed["u1"].timers = {"w": {("flush", "REAL_TIME", ""): ts}} if ts else {}


@pytest.fixture
def registry():
    beam_direct_pubsub._subs.clear()
    yield beam_direct_pubsub._subs
    beam_direct_pubsub._subs.clear()


def hold(registry, client, ids) -> None:
    sub = registry.setdefault("s", beam_direct_pubsub._Subscription(client, "s"))
    sub.batches.append(beam_direct_pubsub._Batch(list(ids), 0.0))


def test_a_batch_is_acked_only_once_no_bundle_is_pending_and_its_timers_have_fired(registry):
    runner, client = FakeRunner(), FakeSubscriber()
    hold(registry, client, ["a", "b"])
    runner.tw[runner.other_step]._pending.add("bundle")
    assert beam_direct_pubsub.ack_finished(runner) == 0  # its bundles are still being processed
    runner.tw[runner.other_step]._pending.clear()
    runner.set_timer(5)  # its events wait in the state step for this timer
    assert beam_direct_pubsub.ack_finished(runner) == 0
    hold(registry, client, ["c"])  # a later batch, whose events may wait for the same timer
    assert beam_direct_pubsub.ack_finished(runner) == 0 and beam_direct_pubsub.unacked() == 3
    runner.tw[runner.state_step]._fired_timers.add("t")  # fired, its output not processed yet
    runner.set_timer(None)
    assert beam_direct_pubsub.ack_finished(runner) == 0
    runner.tw[runner.state_step]._fired_timers.clear()
    assert beam_direct_pubsub.ack_finished(runner) == 3 and client.acked == ["a", "b", "c"]
    # a timer set after a batch was processed does not hold it back
    hold(registry, client, ["d"])
    assert beam_direct_pubsub.ack_finished(runner) == 1 and client.acked[-1] == "d"
    assert beam_direct_pubsub.unacked() == 0


def test_a_batch_processed_before_a_timer_was_set_is_not_held_by_it(registry):
    runner, client = FakeRunner(), FakeSubscriber()
    runner.set_timer(5)
    hold(registry, client, ["a"])
    assert beam_direct_pubsub.ack_finished(runner) == 0  # barrier: the timer set at its look
    runner.set_timer(7)  # that timer fired and a new one was set (by newer events)
    assert beam_direct_pubsub.ack_finished(runner) == 1
