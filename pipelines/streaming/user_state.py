"""Per-user state: deduplicate by ``event_id`` and keep the bounded recent history.

The state of one user is its last N events (by event time, ties broken by ``event_id``),
oldest first, plus a count of distinct accepted events. The history's event ids are the
dedup memory, and they are enough: an accepted event is either still in the history or was
evicted, and evicted events all sort before the history's oldest entry, so a replay of one is
recognised as "older than the full history" and dropped. That rule only needs what is
stored in ``users/{id}``, so dedup survives a restart: state is seeded from Firestore the first
time a user is seen since start. A redelivered message (the local read acks only once the
user's document holding the event is committed) therefore finds its event either in the stored
history (duplicate) or older than all of it (too old): it is never counted twice. Rejecting
"older than the full history" is exact only because the history is ordered by (time, id) and
evicts its oldest entry; ``last_event_ts`` could not serve (events arrive out of order) and
``event_count`` carries no ids.

Per-user writes are coalesced (``write_interval_s``): a user's state is emitted at once if its
last emission is at least that long ago, else the accepted events wait in keyed state for a
processing-time timer at ``last emission + interval``, so ``users/{id}`` is written at most once
per interval however hot the user, and a user below that rate is not delayed at all.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.streaming.parse import DEAD_LETTER, METRICS_NAMESPACE, failed_record, stage_failures
from schemas.events import ProductEvent
from schemas.firestore import HistoryEntry, UserDoc

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
TOO_OLD = "too_old"
ACCEPTED_BATCHES = "accepted_batches"
WRITE_INTERVAL_S = 1.0  # Firestore's sustained limit: one write per second per document
# what a seed read can raise: the API's errors, and a stored document that no longer parses
SEED_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError)


@dataclass(frozen=True)
class UserState:
    """What the pipeline remembers about one user."""

    user_id: str
    history: tuple[HistoryEntry, ...] = ()
    event_count: int = 0
    last_event_id: str = ""
    last_event_ts: int = 0

    @classmethod
    def from_doc(cls, doc: UserDoc) -> UserState:
        """Seed from a stored ``users/{id}`` document (history re-sorted defensively)."""
        history = tuple(sorted(doc.history, key=_order_key))
        return cls(user_id=doc.user_id, history=history, event_count=doc.event_count,
                   last_event_id=doc.last_event_id, last_event_ts=doc.last_event_ts)

    @property
    def item_ids(self) -> list[str]:
        return [h.item_id for h in self.history]


def _order_key(entry: HistoryEntry) -> tuple[int, str]:
    return entry.timestamp, entry.event_id


def apply_event(state: UserState, event: ProductEvent, history_length: int) -> tuple[UserState, str]:
    """Apply one event; return the new state and ``accepted``, ``duplicate`` or ``too_old``.

    Out-of-order events are inserted in event-time order; when the history is full, an event
    older than all of it is dropped (it would be evicted at once).
    """
    if any(h.event_id == event.event_id for h in state.history):
        return state, DUPLICATE
    entry = HistoryEntry(event_id=event.event_id, item_id=event.item_id,
                         event_type=event.event_type, timestamp=event.timestamp)
    key = _order_key(entry)
    if len(state.history) >= history_length and key < _order_key(state.history[0]):
        return state, TOO_OLD
    keys = [_order_key(h) for h in state.history]
    history = list(state.history)
    history.insert(bisect.bisect_right(keys, key), entry)
    return UserState(user_id=state.user_id, history=tuple(history[-history_length:]),
                     event_count=state.event_count + 1, last_event_id=event.event_id,
                     last_event_ts=event.timestamp), ACCEPTED


def apply_events(state: UserState, events: Iterable[ProductEvent],
                 history_length: int) -> tuple[UserState, list[str]]:
    """Apply ``events`` in order: the same final state and outcomes as :func:`apply_event` one
    by one, with the history kept in lists (one ``UserState`` built at the end, not per event)."""
    history = list(state.history)
    keys = [_order_key(h) for h in history]
    ids = {h.event_id for h in history}
    outcomes: list[str] = []
    count, last_id, last_ts = state.event_count, state.last_event_id, state.last_event_ts
    for event in events:
        if event.event_id in ids:
            outcomes.append(DUPLICATE)
            continue
        key = (event.timestamp, event.event_id)
        if len(history) >= history_length and key < keys[0]:
            outcomes.append(TOO_OLD)
            continue
        at = bisect.bisect_right(keys, key)
        keys.insert(at, key)
        history.insert(at, HistoryEntry(event_id=event.event_id, item_id=event.item_id,
                                        event_type=event.event_type, timestamp=event.timestamp))
        ids.add(event.event_id)
        while len(history) > history_length:
            ids.discard(history.pop(0).event_id)
            keys.pop(0)
        count, last_id, last_ts = count + 1, event.event_id, event.timestamp
        outcomes.append(ACCEPTED)
    if count == state.event_count:
        return state, outcomes
    return UserState(user_id=state.user_id, history=tuple(history), event_count=count,
                     last_event_id=last_id, last_event_ts=last_ts), outcomes


@dataclass(frozen=True)
class UserUpdate:
    """A user's newest state and the events accepted since its previous emission (the events
    travel on so that a failed embedding or write dead-letters them)."""

    state: UserState
    events: tuple[ProductEvent, ...] = ()


def seed_errors() -> tuple[type[BaseException], ...]:
    """``SEED_ERRORS`` plus the Google API's call and retry errors."""
    from google.api_core import exceptions

    return (*SEED_ERRORS, exceptions.GoogleAPICallError, exceptions.RetryError)


class UserStore(Protocol):
    """Where state is seeded from: ``get`` returns the stored document or ``None``."""

    def get(self, user_id: str) -> UserDoc | None: ...


@dataclass(frozen=True)
class Seed:
    """A prefetched ``users/{id}`` (``doc`` is None if there was none)."""

    doc: UserDoc | None


def get_many(store: UserStore, user_ids: Iterable[str]) -> dict[str, UserDoc | None]:
    """Stored docs for ``user_ids``: one batched read if the store has ``get_many``."""
    many = getattr(store, "get_many", None)
    if many is not None:
        return many(list(user_ids))
    return {u: store.get(u) for u in user_ids}


class _Prefetched:
    """Users this process already prefetched (bounded; forgetting one only costs a re-read)."""

    def __init__(self, max_users: int = 200_000) -> None:
        self._users: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_users

    def forget(self, user_ids: Iterable[str]) -> None:
        with self._lock:
            for u in user_ids:
                self._users.pop(u, None)

    def claim_new(self, user_ids: Iterable[str]) -> set[str]:
        with self._lock:
            new = {u for u in user_ids if u not in self._users}
            for u in new:
                self._users[u] = None
            while len(self._users) > self._max:
                self._users.popitem(last=False)
            return new


_prefetched = _Prefetched()


class PrefetchSeedsFn(beam.DoFn):
    """Per bundle: reads ``users/{id}`` of users not seen before in one batch, and groups the
    bundle's events by user (arrival order kept), emitting ``(user_id, (events, Seed | None))``
    once per user. The state step then reads and writes each user's state once per bundle and
    emits one updated state (the newest) instead of one per event."""

    def __init__(self, store: UserStore | None) -> None:
        self.store = store
        self.batch = Metrics.distribution(METRICS_NAMESPACE, "seed_prefetch_batch_size")
        self.events_per_user = Metrics.distribution(METRICS_NAMESPACE, "events_per_user_per_bundle")
        self.failed = stage_failures("seed_read")

    def start_bundle(self) -> None:
        self._buffer: dict[str, list[tuple[ProductEvent, Any]]] = {}

    def process(self, event: ProductEvent, timestamp: Any = beam.DoFn.TimestampParam) -> None:
        self._buffer.setdefault(event.user_id, []).append((event, timestamp))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        buffer, self._buffer = self._buffer, {}
        if not buffer:
            return
        new = _prefetched.claim_new(buffer) if self.store is not None else set()
        try:
            docs = get_many(self.store, new) if new else {}
        except seed_errors() as e:  # those users' events to the dead letters; re-read next time
            _prefetched.forget(new)
            for user_id in new:
                pending = buffer.pop(user_id)
                self.failed.inc(len(pending))
                for event, ts in pending:
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, WindowedValue(
                        failed_record(event, "seed_read", e), ts, (GlobalWindow(),)))
            new, docs = set(), {}
        if new:
            self.batch.update(len(new))
        for user_id, pending in buffer.items():
            seed = Seed(docs.get(user_id)) if user_id in new else None
            self.events_per_user.update(len(pending))
            # the earliest timestamp: never ahead of any of the grouped events
            ts = min(t for _, t in pending)
            yield WindowedValue((user_id, (tuple(e for e, _ in pending), seed)), ts, (GlobalWindow(),))


class UpdateUserStateFn(beam.DoFn):
    """Keyed by user id: dedup, update history with a bundle's events of one user (in arrival
    order, one state read and write); emit a :class:`UserUpdate` once if any was accepted, or,
    if the user's previous emission is less than ``write_interval_s`` ago, when its timer fires.

    Accepted events also go, as one tuple per bundle (timestamped with its earliest event),
    to the ``accepted_batches`` output for trending and the archive, so duplicates are counted
    nowhere, and those steps pay their per-element cost once per bundle rather than per event.
    """

    STATE = ReadModifyWriteStateSpec("user", PickleCoder())
    EMITTED = ReadModifyWriteStateSpec("emitted", PickleCoder())  # (last emission s, waiting events)
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, history_length: int, store: UserStore | None,
                 write_interval_s: float = WRITE_INTERVAL_S) -> None:
        if history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {history_length}")
        self.history_length = history_length
        self.store = store
        self.write_interval_s = write_interval_s
        self.deferred = Metrics.counter(METRICS_NAMESPACE, "events_write_coalesced")
        self.failed = stage_failures("user_state")
        self.accepted = Metrics.counter(METRICS_NAMESPACE, "events_accepted")
        self.duplicates = Metrics.counter(METRICS_NAMESPACE, "events_duplicate")
        self.too_old = Metrics.counter(METRICS_NAMESPACE, "events_too_old")
        self.seeded = Metrics.counter(METRICS_NAMESPACE, "users_seeded_from_firestore")

    def start_bundle(self) -> None:
        self._accepted: list[ProductEvent] = []

    def _initial_state(self, user_id: str, seed: Seed | None) -> UserState:
        if seed is not None:
            doc = seed.doc
        else:
            doc = self.store.get(user_id) if self.store is not None else None
        if doc is None:
            return UserState(user_id=user_id)
        self.seeded.inc()
        return UserState.from_doc(doc)

    def process(self, element: tuple[str, tuple[Sequence[ProductEvent], Seed | None]],
                state: beam.DoFn.StateParam = beam.DoFn.StateParam(STATE),
                emitted: beam.DoFn.StateParam = beam.DoFn.StateParam(EMITTED),
                flush: beam.DoFn.TimerParam = beam.DoFn.TimerParam(FLUSH),
                timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[object]:
        user_id, (events, seed) = element
        current = state.read()
        first_sight = current is None
        if first_sight:
            try:
                current = self._initial_state(user_id, seed)
            except seed_errors() as e:
                self.failed.inc(len(events))
                for event in events:
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, failed_record(event, "user_state", e))
                return
        current, outcomes = apply_events(current, events, self.history_length)
        accepted = [e for e, outcome in zip(events, outcomes) if outcome == ACCEPTED]
        for outcome in outcomes:
            if outcome != ACCEPTED:
                (self.duplicates if outcome == DUPLICATE else self.too_old).inc()
        if accepted or first_sight:
            state.write(current)  # on first sight even if nothing was accepted: Firestore is read once
        if not accepted:
            return
        self.accepted.inc(len(accepted))
        self._accepted.extend(accepted)
        if self.write_interval_s <= 0:
            yield UserUpdate(current, tuple(accepted))
            return
        last, waiting = emitted.read() or (0.0, ())
        now = time.time()
        if not waiting and now - last >= self.write_interval_s:
            emitted.write((now, ()))
            yield UserUpdate(current, tuple(accepted))
            return
        if not waiting:
            flush.set(Timestamp.of(last + self.write_interval_s))
        emitted.write((last, waiting + tuple(accepted)))
        self.deferred.inc(len(accepted))

    @on_timer(FLUSH)
    def flush_coalesced(self, state: beam.DoFn.StateParam = beam.DoFn.StateParam(STATE),
                        emitted: beam.DoFn.StateParam = beam.DoFn.StateParam(EMITTED)) -> Iterator[object]:
        """The interval since the user's last emission is over: emit what waited."""
        _, waiting = emitted.read() or (0.0, ())
        if not waiting:
            return
        emitted.write((time.time(), ()))
        current = state.read()
        yield TimestampedValue(UserUpdate(current, waiting), current.last_event_ts / 1000.0)

    def finish_bundle(self) -> Iterator[beam.pvalue.TaggedOutput]:
        accepted, self._accepted = self._accepted, []
        if accepted:
            ts = min(e.timestamp for e in accepted) / 1000.0
            yield beam.pvalue.TaggedOutput(
                ACCEPTED_BATCHES, WindowedValue(tuple(accepted), ts, (GlobalWindow(),)))


class UpdateUserState(beam.PTransform):
    """Events -> :class:`UserUpdate`\\s (``states``: the newest state per user, at most one per
    ``write_interval_s``), tagged ``accepted_batches`` (a tuple of the accepted events per bundle)
    and ``dead_letter`` (events whose seed read failed).

    Keyed (and grouped per bundle) by user id by the prefetch step, which also batches the
    seed reads.
    """

    def __init__(self, history_length: int, store: UserStore | None,
                 write_interval_s: float = WRITE_INTERVAL_S) -> None:
        super().__init__()
        self.history_length = history_length
        self.store = store
        self.write_interval_s = write_interval_s

    def expand(self, events: beam.PCollection) -> dict[str, beam.PCollection]:
        seeded = (events
                  | "PrefetchSeeds" >> beam.ParDo(PrefetchSeedsFn(self.store)).with_outputs(
                      DEAD_LETTER, main="grouped"))
        users = (seeded.grouped
                 | "Keyed" >> beam.Map(lambda kv: kv).with_output_types(tuple[str, tuple[Any, Any]])
                 | "DedupAndUpdateHistory" >> beam.ParDo(
                     UpdateUserStateFn(self.history_length, self.store, self.write_interval_s)
                 ).with_outputs(ACCEPTED_BATCHES, DEAD_LETTER, main="states"))
        return {"states": users.states, ACCEPTED_BATCHES: users[ACCEPTED_BATCHES],
                DEAD_LETTER: (seeded[DEAD_LETTER], users[DEAD_LETTER]) | "StateDeadLetters" >> beam.Flatten()}
