"""Per-user state: deduplicate by ``event_id`` and keep the bounded recent history.

The state of one user is its last N events (by event time, ties broken by ``event_id``), oldest
first, a count of distinct accepted events, and a dedup memory of the counted events that are no
longer in the history (``recent``: their ids, with when they were counted, kept for
``retention_s``) plus ``floor``, the highest (time, id) ever forgotten from that memory. An event
is a duplicate if its id is in the history or in ``recent``; it is too old (dropped uncounted,
because it cannot be told from a forgotten one) only if it sorts at or below ``floor``; any other
event is counted, into the history or, if older than a full history, into ``recent``.

Why the memory: a message is redelivered only if it was not acked, i.e. its effects were maybe
not written, and it may come back after newer events of the same user were accepted (Pub/Sub
holds it until its ack deadline expires, while the restarted pipeline already reads new
messages). "Older than the full history" (the only rule the history alone allows) would then
drop an event that was never counted; ``last_event_ts`` cannot tell either (events arrive out of
order) and ``event_count`` carries no ids. With the memory a redelivered event is exactly once as
long as it comes back within ``retention_s`` of the newer events (it must exceed the
subscription's ack deadline plus a restart). All of it is stored in ``users/{id}`` (the memory
as the extra ``dedup`` field, see :func:`pack_dedup`), so dedup survives a restart: state is
seeded from Firestore the first time a user is seen since start. A document written before the
memory existed seeds ``floor`` at its history's oldest entry when that history is full: the old
rule, for the events before it.

A forget request (:func:`apply_forget`) empties the state; its time becomes ``floor`` (an event
at or before it is too old) and ``forgotten_at`` (a repeated request is a no-op). It is emitted at
once with the update (the writer deletes ``users/{id}`` and stores ``forgotten_users/{id}``, which
seeds the floor after a restart) and on the ``forgets`` output (the archive's tombstone).

Per-user writes are coalesced (``write_interval_s``): a user's state is emitted at once if its
last emission is at least that long ago, else the accepted events wait in keyed state for a
processing-time timer at ``last emission + interval``, so ``users/{id}`` is written at most once
per interval however hot the user, and a user below that rate is not delayed at all.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.typehints import typehints
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.streaming.parse import DEAD_LETTER, METRICS_NAMESPACE, failed_record, stage_failures
from schemas.events import ForgetRequest, ProductEvent
from schemas.firestore import HistoryEntry, UserDoc, with_seen

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
TOO_OLD = "too_old"
ACCEPTED_BATCHES = "accepted_batches"
FORGETS = "forgets"
FORGET_FLOOR_ID = "\U0010ffff"  # sorts after every event id: the floor covers the forget time itself
WRITE_INTERVAL_S = 1.0  # Firestore's sustained limit: one write per second per document
# How long a counted id is remembered after leaving the history: well over a subscription's ack
# deadline (60 s in scripts/local_stack.py and terraform/) plus a restart, the longest a
# redelivered message can trail the newer events of its user.
DEDUP_RETENTION_S = 300.0
MAX_RECENT = 2000  # and at most this many per user (a hot user's forgotten ids raise the floor)
DEDUP_FIELD = "dedup"  # the extra users/{id} field holding the memory (pack_dedup)
# what a seed read can raise: the API's errors, and a stored document that no longer parses
SEED_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError)

Key = tuple[int, str]  # (event time ms, event id): the history's order


@dataclass(frozen=True)
class UserState:
    """What the pipeline remembers about one user."""

    user_id: str
    history: tuple[HistoryEntry, ...] = ()
    event_count: int = 0
    last_event_id: str = ""
    last_event_ts: int = 0
    recent: tuple[tuple[int, int, str], ...] = ()  # (counted at, s; event time; id), oldest first
    floor: Key | None = None
    seen: tuple[str, ...] = ()  # items that left (or never entered) the history, newest last
    forgotten_at: int = 0  # the latest forget request applied (epoch ms), 0 if none

    @classmethod
    def from_doc(cls, doc: UserDoc, dedup: str | None = None, history_length: int | None = None) -> UserState:
        """Seed from a stored ``users/{id}`` document (history re-sorted defensively) and its
        ``dedup`` field; without one, a full history's oldest entry is the floor."""
        history = tuple(sorted(doc.history, key=_order_key))
        recent, floor = unpack_dedup(dedup)
        if dedup is None and history and (history_length is None or len(history) >= history_length):
            floor = _order_key(history[0])
        return cls(user_id=doc.user_id, history=history, event_count=doc.event_count,
                   last_event_id=doc.last_event_id, last_event_ts=doc.last_event_ts, recent=recent,
                   floor=floor, seen=tuple(getattr(doc, "seen", ()) or ()))

    @property
    def item_ids(self) -> list[str]:
        return [h.item_id for h in self.history]


def pack_dedup(state: UserState) -> str:
    """The dedup memory as one compact JSON string (``users/{id}.dedup``)."""
    return json.dumps({"floor": list(state.floor) if state.floor else None,
                       "recent": [list(r) for r in state.recent]}, separators=(",", ":"))


def unpack_dedup(value: str | None) -> tuple[tuple[tuple[int, int, str], ...], Key | None]:
    """``(recent, floor)`` from :func:`pack_dedup`'s string (empty for None)."""
    if not value:
        return (), None
    data = json.loads(value)
    floor = data.get("floor")
    return (tuple((int(a), int(t), str(i)) for a, t, i in data.get("recent") or ()),
            (int(floor[0]), str(floor[1])) if floor else None)


@dataclass(frozen=True)
class StoredUser:
    """A stored ``users/{id}`` (None: deleted by a forget) and its dedup memory (``None``: the
    document has none), and the time of the user's latest forget (``forgotten_users/{id}``)."""

    doc: UserDoc | None
    dedup: str | None = None
    forgotten_at: int | None = None


def apply_forget(state: UserState, request: ForgetRequest) -> tuple[UserState, bool]:
    """Forget everything about the user up to ``request.timestamp``: the empty state, with the
    floor at that time; ``False`` (state unchanged) if a forget at or after it was applied."""
    if request.timestamp <= state.forgotten_at:
        return state, False
    return forgotten_state(state.user_id, request.timestamp, state.floor), True


def forgotten_state(user_id: str, forgotten_at: int, floor: Key | None = None) -> UserState:
    """An empty state whose floor covers every event at or before ``forgotten_at``."""
    forget_floor = (forgotten_at, FORGET_FLOOR_ID)
    return UserState(user_id=user_id, forgotten_at=forgotten_at,
                     floor=max(floor, forget_floor) if floor is not None else forget_floor)


def _order_key(entry: HistoryEntry) -> Key:
    return entry.timestamp, entry.event_id


def apply_event(state: UserState, event: ProductEvent, history_length: int,
                now_s: float | None = None) -> tuple[UserState, str]:
    """Apply one event; return the new state and ``accepted``, ``duplicate`` or ``too_old``."""
    new_state, outcomes = apply_events(state, (event,), history_length, now_s)
    return new_state, outcomes[0]


def apply_events(state: UserState, events: Iterable[ProductEvent], history_length: int,
                 now_s: float | None = None, retention_s: float = DEDUP_RETENTION_S,
                 max_recent: int = MAX_RECENT) -> tuple[UserState, list[str]]:
    """Apply ``events`` in arrival order (see the module docstring for the rules); return the new
    state and one outcome per event. Out-of-order events are inserted in event-time order; the
    history is kept in lists and one ``UserState`` built at the end."""
    now = int(time.time() if now_s is None else now_s)
    history = list(state.history)
    keys = [_order_key(h) for h in history]
    recent = list(state.recent)
    ids = {h.event_id for h in history} | {r[2] for r in recent}
    left: list[str] = []  # items of counted events outside the history window, oldest first
    outcomes: list[str] = []
    count, last_id, last_ts = state.event_count, state.last_event_id, state.last_event_ts
    for event in events:
        if event.event_id in ids:
            outcomes.append(DUPLICATE)
            continue
        key = (event.timestamp, event.event_id)
        if state.floor is not None and key <= state.floor:
            outcomes.append(TOO_OLD)
            continue
        ids.add(event.event_id)
        if len(history) >= history_length and key < keys[0]:
            recent.append((now, event.timestamp, event.event_id))  # counted, never in the history
            left.append(event.item_id)
        else:
            at = bisect.bisect_right(keys, key)
            keys.insert(at, key)
            history.insert(at, HistoryEntry(event_id=event.event_id, item_id=event.item_id,
                                            event_type=event.event_type, timestamp=event.timestamp))
            while len(history) > history_length:
                old = history.pop(0)
                keys.pop(0)
                recent.append((now, old.timestamp, old.event_id))
                left.append(old.item_id)
        count, last_id, last_ts = count + 1, event.event_id, event.timestamp
        outcomes.append(ACCEPTED)
    recent, floor = _forget(recent, state.floor, now - retention_s, max_recent)
    if count == state.event_count and len(recent) == len(state.recent):
        return state, outcomes
    return replace(state, history=tuple(history), event_count=count, last_event_id=last_id,
                   last_event_ts=last_ts, recent=tuple(recent), floor=floor,
                   seen=with_seen(state.seen, left)), outcomes


def _forget(recent: list[tuple[int, int, str]], floor: Key | None, before_s: float,
            max_recent: int) -> tuple[list[tuple[int, int, str]], Key | None]:
    """Drop entries counted before ``before_s`` and the oldest beyond ``max_recent``; the floor
    rises to the highest key dropped."""
    keep = max(0, len(recent) - max_recent)
    while keep < len(recent) and recent[keep][0] < before_s:
        keep += 1
    for _, ts, event_id in recent[:keep]:
        if floor is None or (ts, event_id) > floor:
            floor = (ts, event_id)
    return recent[keep:], floor


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
    """Where state is seeded from: ``get`` returns the stored document (a ``UserDoc``, or a
    :class:`StoredUser` with its dedup memory) or ``None``."""

    def get(self, user_id: str) -> UserDoc | StoredUser | None: ...


@dataclass(frozen=True)
class Seed:
    """A prefetched ``users/{id}`` (``doc`` is None if there was none)."""

    doc: UserDoc | StoredUser | None


def get_many(store: UserStore, user_ids: Iterable[str]) -> dict[str, UserDoc | StoredUser | None]:
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
        self.forgotten = Metrics.counter(METRICS_NAMESPACE, "users_forgotten")

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
        if not isinstance(doc, StoredUser):
            return UserState.from_doc(doc, None, self.history_length)
        if doc.doc is None:
            return forgotten_state(user_id, doc.forgotten_at or 0)
        state = UserState.from_doc(doc.doc, doc.dedup, self.history_length)
        if doc.forgotten_at:
            floor = forgotten_state(user_id, doc.forgotten_at, state.floor).floor
            state = replace(state, forgotten_at=doc.forgotten_at, floor=floor)
        return state

    def _apply(self, current: UserState, elements: Sequence[ProductEvent | ForgetRequest]
               ) -> tuple[UserState, list[ProductEvent], list[ForgetRequest]]:
        """Apply events and forgets in order: state, events accepted since the last forget, forgets."""
        accepted: list[ProductEvent] = []
        forgets: list[ForgetRequest] = []
        run: list[ProductEvent] = []

        def flush_run(state: UserState) -> UserState:
            state, outcomes = apply_events(state, run, self.history_length)
            accepted.extend(e for e, outcome in zip(run, outcomes) if outcome == ACCEPTED)
            for outcome in outcomes:
                if outcome != ACCEPTED:
                    (self.duplicates if outcome == DUPLICATE else self.too_old).inc()
            run.clear()
            return state

        for element in elements:
            if not isinstance(element, ForgetRequest):
                run.append(element)
                continue
            current = flush_run(current)
            current, applied = apply_forget(current, element)
            if applied:
                forgets.append(element)
                accepted.clear()  # forgotten before they were written: neither doc nor archive
        current = flush_run(current)
        return current, accepted, forgets

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
        current, accepted, forgets = self._apply(current, events)
        if accepted or forgets or first_sight:
            state.write(current)  # on first sight even if nothing was accepted: Firestore is read once
        if forgets:  # at once, whatever the interval: what waited to be written is forgotten
            self.forgotten.inc(len(forgets))
            self._accepted = [e for e in self._accepted if e.user_id != user_id]
            self._accepted.extend(accepted)
            self.accepted.inc(len(accepted))
            emitted.write((time.time(), ()))
            for request in forgets:
                yield beam.pvalue.TaggedOutput(FORGETS, request)
            yield UserUpdate(current, (*forgets, *accepted))
            return
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
        grouped = seeded.grouped
        grouped.element_type = typehints.Tuple[str, typehints.Tuple[Any, Any]]  # a deterministic key coder
        users = (grouped
                 | "DedupAndUpdateHistory" >> beam.ParDo(
                     UpdateUserStateFn(self.history_length, self.store, self.write_interval_s)
                 ).with_outputs(ACCEPTED_BATCHES, FORGETS, DEAD_LETTER, main="states"))
        return {"states": users.states, ACCEPTED_BATCHES: users[ACCEPTED_BATCHES], FORGETS: users[FORGETS],
                DEAD_LETTER: (seeded[DEAD_LETTER], users[DEAD_LETTER]) | "StateDeadLetters" >> beam.Flatten()}
