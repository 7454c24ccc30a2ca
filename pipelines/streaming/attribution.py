"""Attribution: events that followed a served list -> per-experiment, per-arm counts.

Two keyed steps (keyed state and timers only: no side inputs, which the DirectRunner cannot run
here):

1. **Join**, keyed by ``recommendation_id``: the served record (``recommendations-served``) and
   the valid events that carry its id, taken before the per-user dedup: counts are once per
   (list, item, kind) here and the aggregator's memory drops a recount, so the join needs no
   event-id dedup, and must not depend on it: ``users/{id}`` may be committed before the counts,
   and after a crash between the two the per-user dedup would drop the redelivered event
   uncounted (measured with SIGKILL). State: the served record, the events that arrived
   before it (``pending``), and the (item, kind) pairs already counted. It emits a
   :class:`Contribution` per count: the first copy of a served record in an experiment counts
   ``served`` +1 and ``shown`` +len(items); a view of an item in the list ``clicks`` +1 and
   ``click_positions[position]`` +1, an add-to-cart ``carts`` +1, a purchase ``purchases`` +1,
   each once per (list, item). Items not in the list and lists without an experiment count
   nothing. The state expires ``ttl_s`` after the id was first seen (a processing-time timer
   named by :func:`pipelines.compat.beam_direct_pubsub.non_barrier_timer`: it holds no ack).
   Keyed state does not survive a restart of the DirectRunner (nor a new Dataflow job), so what
   the join needs across one is stored, each before the message that caused it is acked: the
   served records of experiments (``attribution_served/{id}``, read when an event of a list not
   seen since start arrives within ``ttl_s`` of the start) and the events that wait for their
   served record (``attribution_pending/{id}``, read when a served record answered before the
   start arrives; deleted when the state expires, not when matched: the counts of a match are
   committed later, and a crash in between must find the events again).
2. **Aggregate**, keyed by experiment id: per-arm :class:`ArmCounts`, seeded from the stored
   ``stats/experiments/{id}/*`` documents the first time the experiment is seen since start,
   plus a memory of the contributions counted in the last ``DEDUP_RETENTION_S`` (the TTL; at
   most ``MAX_COUNTED`` of them), stored with the counts (``_dedup``), which drops a contribution
   counted before a crash or restart and recomputed after it (a redelivered message, a list
   whose counted set was lost with the join state). Writes are coalesced like
   the per-user writes: at once if the last write is at least ``write_interval_s`` ago, else at a
   processing-time timer (a durability barrier: messages are acked once their counts are
   written). One experiment is one key: on Dataflow its contributions meet on one worker, at
   one element per count (enough for an experiment's click rate; pre-combine per bundle if not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.typehints import typehints
from apache_beam.utils.timestamp import Timestamp

from pipelines.compat.beam_direct_pubsub import non_barrier_timer
from pipelines.streaming.parse import DEAD_LETTER, METRICS_NAMESPACE, ParseFn, dead_letter
from pipelines.streaming.user_state import seed_errors
from schemas.errors import InvalidRecord
from schemas.events import ForgetRequest, ProductEvent
from schemas.experiments import ArmCounts, ServedRecord, parse_served

LOG = logging.getLogger(__name__)
SOURCE_SERVED = "served"
PERSIST = "persist"
SERVED, EVENT = "served", "event"
TTL_S = 1800.0  # how long a list's join state lives after its id was first seen
# Firestore's sustained limit: one write per second per document. Measured end to end on the
# emulators (tests/integration/test_streaming_attribution.py, 30 clicks 0.1-1.2 s apart), publish
# -> stats document: p50 0.65 s, p95 1.13 s at 1 s; p50 0.23 s, p95 0.49 s at 0.5 s (which would
# write each document twice a second). The target is 2 s p95.
WRITE_INTERVAL_S = 1.0
# A counted contribution is remembered as long as its list is attributed: a redelivered message
# (it trails its first delivery by the ack deadline, 60 s, plus a restart) and a count recomputed
# after a restart (the join state is in memory) are dropped within the TTL...
DEDUP_RETENTION_S = TTL_S
MAX_COUNTED = 5000  # ...unless the experiment counted more than this since
COUNT_ID_CHARS = 24  # a remembered count is 96 bits of SHA-256 (ids may be 256 characters each):
# at most ~40 bytes an entry, ~200 KB per _dedup document, well within Firestore's 1 MiB
# A served record answered up to this long after start may have had events in the previous run.
START_SKEW_MS = 60_000
SEED_RETRY_S = 1.0

Item = tuple[str, str]  # (item id, event type)
CountKey = tuple[str, str, str]  # (recommendation id, item id or "", event type or "")


@dataclass(frozen=True)
class Contribution:
    """One count of one list in one arm; ``key`` identifies it for the dedup memory."""

    experiment: str
    arm: str
    key: CountKey
    counts: ArmCounts


@dataclass(frozen=True)
class PendingWrite:
    """Add ``events`` to ``attribution_pending/{id}``, or delete it (``delete``)."""

    recommendation_id: str
    events: tuple[Item, ...] = ()
    delete: bool = False


@dataclass(frozen=True)
class JoinState:
    """One list's join state: its served record, events waiting for it, what was counted."""

    served: ServedRecord | None = None
    pending: tuple[Item, ...] = ()
    counted: frozenset[Item] = frozenset()
    served_seen: bool = False  # False while ``served`` is only what a previous run persisted
    stored_pending: bool = False  # attribution_pending/{id} exists (deleted when the state expires)


def served_contribution(record: ServedRecord) -> Contribution | None:
    """``served`` +1 and ``shown`` +len(items) in the record's arm; None without an experiment."""
    if record.experiment is None or record.arm is None:
        return None
    return Contribution(record.experiment, record.arm, (record.recommendation_id, "", ""),
                        ArmCounts(served=1, shown=len(record.items)))


def event_contribution(record: ServedRecord, item_id: str, kind: str) -> Contribution | None:
    """The count of one (item, kind) on the list, or None (no experiment, item not in the list)."""
    if record.experiment is None or record.arm is None or item_id not in record.items:
        return None
    if kind == "view":
        position = record.items.index(item_id)
        counts = ArmCounts(clicks=1, click_positions=(0,) * position + (1,))
    elif kind == "add_to_cart":
        counts = ArmCounts(carts=1)
    elif kind == "purchase":
        counts = ArmCounts(purchases=1)
    else:
        return None
    return Contribution(record.experiment, record.arm, (record.recommendation_id, item_id, kind), counts)


def join(state: JoinState, served: ServedRecord | None = None,
         events: Iterable[Item] = ()) -> tuple[JoinState, list[Contribution], tuple[Item, ...]]:
    """Apply a served record and/or events: the new state, the contributions, the events that now
    wait for their served record (newly pending). A second served record counts nothing; the
    first one counts even if a previous run's copy was loaded (the aggregator's memory drops it
    if that run counted it)."""
    out: list[Contribution] = []
    waiting: list[Item] = []
    counted = set(state.counted)
    record = state.served
    if served is not None and not state.served_seen:
        # a list outside any experiment counts nothing: its state keeps only that it was served
        record = record or (served if served.experiment is not None
                            else ServedRecord(served.recommendation_id, served.timestamp, ()))
        c = served_contribution(record)
        if c is not None:
            out.append(c)
        events = (*state.pending, *events)
    pending = list(state.pending) if record is None else []
    for item in events:
        if record is None:
            if item not in pending:
                pending.append(item)
                waiting.append(item)
            continue
        if item in counted:
            continue
        counted.add(item)
        c = event_contribution(record, *item)
        if c is not None:
            out.append(c)
    seen = state.served_seen or served is not None
    stored = state.stored_pending or bool(waiting)
    return JoinState(record, tuple(pending), frozenset(counted), seen, stored), out, tuple(waiting)


class AttributionStore(Protocol):
    """Where attribution seeds from: the events persisted while waiting for a served record, the
    served records of experiments, and an experiment's stored counts, memory and arm order."""

    def pending(self, recommendation_id: str) -> tuple[Item, ...]: ...

    def served(self, recommendation_id: str) -> ServedRecord | None: ...

    def experiment(self, experiment_id: str) -> StoredExperiment: ...


def served_dead_letter(record: ServedRecord, stage: str, error: BaseException) -> Any:
    reason = f"{stage}: {type(error).__name__}: {error}"
    return dead_letter(record.to_pubsub_data(), record.pubsub_attributes(), InvalidRecord(stage, reason),
                       SOURCE_SERVED)


class JoinServedFn(beam.DoFn):
    """Keyed by recommendation id: ``(SERVED, ServedRecord)`` and ``(EVENT, (item, kind))`` ->
    :class:`Contribution`\\s; tagged ``persist`` (:class:`PendingWrite`, and the served records
    of experiments to store) and ``dead_letter``."""

    STATE = ReadModifyWriteStateSpec("join", PickleCoder())
    EXPIRE = TimerSpec(non_barrier_timer("ttl"), TimeDomain.REAL_TIME)

    def __init__(self, store: AttributionStore | None, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self.started_ms = 0  # set by setup: when this worker started
        self.duplicates = Metrics.counter(METRICS_NAMESPACE, "served_duplicate")
        self.waited = Metrics.counter(METRICS_NAMESPACE, "attribution_events_waited")
        self.expired = Metrics.counter(METRICS_NAMESPACE, "attribution_pending_expired")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "attribution_seed_failed")
        self.loaded = Metrics.counter(METRICS_NAMESPACE, "attribution_served_loaded")

    def setup(self) -> None:
        self.started_ms = int(self.clock() * 1000)

    def process(self, element: tuple[str, tuple[str, Any]],
                state: beam.DoFn.StateParam = beam.DoFn.StateParam(STATE),
                expire: beam.DoFn.TimerParam = beam.DoFn.TimerParam(EXPIRE)) -> Iterator[Any]:
        rid, (tag, value) = element
        current = state.read()
        if current is None:
            expire.set(Timestamp.of(self.clock() + self.ttl_s))
            current = JoinState(served=self._stored_served(rid) if tag == EVENT else None)
        if tag == SERVED:
            if current.served_seen:
                self.duplicates.inc()
                return
            stored: tuple[Item, ...] = ()
            if self.store is not None and value.timestamp < self.started_ms + START_SKEW_MS:
                try:
                    stored = self.store.pending(rid)
                except seed_errors() as e:  # republishable: nothing of it was counted
                    self.failed.inc()
                    state.write(current)
                    letter = served_dead_letter(value, "attribution_seed", e)
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
                    return
            current, out, _ = join(current, served=value, events=stored)
            current = replace(current, stored_pending=current.stored_pending or bool(stored))
            if value.experiment is not None:
                yield beam.pvalue.TaggedOutput(PERSIST, value)
        else:
            current, out, waiting = join(current, events=(value,))
            if waiting:
                self.waited.inc(len(waiting))
                yield beam.pvalue.TaggedOutput(PERSIST, PendingWrite(rid, waiting))
        state.write(current)
        yield from out

    def _stored_served(self, rid: str) -> ServedRecord | None:
        """An event of a list not seen in this run, in the first TTL after start: the served record
        a previous run stored (its count is not repeated; it already counted)."""
        now = self.clock()
        if self.store is None or now * 1000 - self.started_ms > self.ttl_s * 1000:
            return None
        try:
            record = self.store.served(rid)
        except seed_errors() as e:  # the event waits as if its list were unknown
            self.failed.inc()
            LOG.warning("reading the served record %s failed: %s", rid, e)
            return None
        if record is None or record.timestamp / 1000 + self.ttl_s < now:
            return None
        self.loaded.inc()
        return record

    @on_timer(EXPIRE)
    def expire_state(self, key: str = beam.DoFn.KeyParam,
                     state: beam.DoFn.StateParam = beam.DoFn.StateParam(STATE)) -> Iterator[Any]:
        """The list's TTL is over: forget it, and delete its stored waiting events (kept until now
        even once matched: a served record redelivered after a crash re-reads them, and the
        aggregator's memory drops what was already counted)."""
        current = state.read()
        state.clear()
        if current is not None and current.pending:
            self.expired.inc(len(current.pending))
        if current is not None and current.stored_pending:
            yield beam.pvalue.TaggedOutput(PERSIST, PendingWrite(key, delete=True))


# ----------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class StoredExperiment:
    """What is stored of an experiment: per-arm counts, the dedup memory, the arm order."""

    arms: dict[str, ArmCounts]
    counted: tuple[tuple[float, str], ...] = ()  # (counted at, s; count_id(key)), oldest first
    order: tuple[str, ...] | None = None  # experiments/{id}'s arms, control first


@dataclass(frozen=True)
class ExperimentWrite:
    """The documents of one experiment to write (a full snapshot: the newest one wins)."""

    experiment_id: str
    arms: tuple[tuple[str, ArmCounts], ...]  # control first
    counted: tuple[tuple[float, str], ...]
    seq: int
    updated_at: int


def arm_order(arms: Iterable[str], order: Sequence[str] | None) -> list[str]:
    """The experiment's arm order (then any other arm by name), or name order without one."""
    known = list(order or ())
    return known + sorted(set(arms) - set(known))


def count_id(key: CountKey) -> str:
    """What the memory keeps of a contribution's key: a fixed-size digest."""
    return hashlib.sha256("\x1f".join(key).encode("utf-8")).hexdigest()[:COUNT_ID_CHARS]


def pack_counted(counted: Sequence[tuple[float, str]]) -> str:
    """The dedup memory as one compact JSON string (``_dedup.counted``)."""
    return json.dumps([[round(at, 3), key] for at, key in counted], separators=(",", ":"))


def unpack_counted(value: str | None) -> tuple[tuple[float, str], ...]:
    if not value:
        return ()
    return tuple((float(at), str(key)) for at, key in json.loads(value))


def apply_contributions(stored: StoredExperiment, contributions: Iterable[Contribution], now_s: float,
                        retention_s: float = DEDUP_RETENTION_S, max_counted: int = MAX_COUNTED
                        ) -> tuple[StoredExperiment, int]:
    """Add the contributions not in the memory; prune the memory (age, then size). Returns the new
    state and how many contributions were dropped as already counted."""
    arms = dict(stored.arms)
    counted = [c for c in stored.counted if c[0] >= now_s - retention_s]
    seen = {key for _, key in counted}
    dropped = 0
    for c in contributions:
        key = count_id(c.key)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        counted.append((now_s, key))
        arms[c.arm] = arms.get(c.arm, ArmCounts()).plus(c.counts)
    return replace(stored, arms=arms, counted=tuple(counted[-max_counted:])), dropped


@dataclass(frozen=True)
class _Buffer:
    """Contributions not yet applied, when the experiment was last written, whether a flush
    timer is set."""

    waiting: tuple[Contribution, ...] = ()
    last_write_s: float = 0.0
    timer_set: bool = False


class AggregateArmsFn(beam.DoFn):
    """Keyed by experiment id: :class:`Contribution`\\s -> :class:`ExperimentWrite`\\s, at most one
    per ``write_interval_s`` (see the module docstring)."""

    STATS = ReadModifyWriteStateSpec("arms", PickleCoder())
    BUFFER = ReadModifyWriteStateSpec("buffer", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, store: AttributionStore | None, write_interval_s: float = WRITE_INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.write_interval_s = write_interval_s
        self.clock = clock
        self.dropped = Metrics.counter(METRICS_NAMESPACE, "attribution_already_counted")
        self.seed_failed = Metrics.counter(METRICS_NAMESPACE, "experiment_seed_failed")
        self.seeded = Metrics.counter(METRICS_NAMESPACE, "experiments_seeded_from_firestore")

    def process(self, element: tuple[str, Contribution],
                stats: beam.DoFn.StateParam = beam.DoFn.StateParam(STATS),
                buffer: beam.DoFn.StateParam = beam.DoFn.StateParam(BUFFER),
                flush: beam.DoFn.TimerParam = beam.DoFn.TimerParam(FLUSH)) -> Iterator[ExperimentWrite]:
        experiment_id, contribution = element
        buf = buffer.read() or _Buffer()
        buf = replace(buf, waiting=(*buf.waiting, contribution))
        now = self.clock()
        if not buf.timer_set and now - buf.last_write_s >= self.write_interval_s:
            yield from self._flush(experiment_id, buf, stats, buffer, flush, now)
            return
        if not buf.timer_set:
            flush.set(Timestamp.of(max(now, buf.last_write_s + self.write_interval_s)))
            buf = replace(buf, timer_set=True)
        buffer.write(buf)

    @on_timer(FLUSH)
    def flush_coalesced(self, key: str = beam.DoFn.KeyParam,
                        stats: beam.DoFn.StateParam = beam.DoFn.StateParam(STATS),
                        buffer: beam.DoFn.StateParam = beam.DoFn.StateParam(BUFFER),
                        flush: beam.DoFn.TimerParam = beam.DoFn.TimerParam(FLUSH)
                        ) -> Iterator[ExperimentWrite]:
        """The interval since the experiment's last write is over: write what waited."""
        buf = replace(buffer.read() or _Buffer(), timer_set=False)
        yield from self._flush(key, buf, stats, buffer, flush, self.clock())

    def _flush(self, experiment_id: str, buf: _Buffer, stats: Any, buffer: Any, flush: Any,
               now: float) -> Iterator[ExperimentWrite]:
        held = stats.read()
        if held is None:
            try:
                stored = self.store.experiment(experiment_id) if self.store is not None else None
            except seed_errors() as e:  # keep the contributions; their messages stay un-acked
                self.seed_failed.inc()
                LOG.warning("reading stats/experiments/%s failed (retrying): %s", experiment_id, e)
                flush.set(Timestamp.of(now + SEED_RETRY_S))
                buffer.write(replace(buf, timer_set=True))
                return
            if stored is not None and stored.arms:
                self.seeded.inc()
            held = (stored or StoredExperiment(arms={}), 0)
        state, seq = held
        state, dropped = apply_contributions(state, buf.waiting, now)
        self.dropped.inc(dropped)
        changed = dropped < len(buf.waiting)
        if changed:
            seq += 1
        stats.write((state, seq))
        buffer.write(_Buffer(last_write_s=now if changed else buf.last_write_s))
        if changed:
            order = arm_order(state.arms, state.order)
            yield ExperimentWrite(experiment_id, tuple((a, state.arms.get(a, ArmCounts())) for a in order),
                                  state.counted, seq, int(now * 1000))


# ----------------------------------------------------------------------------- transforms


class ParseServed(beam.PTransform):
    """``recommendations-served`` messages -> ``valid`` (:class:`ServedRecord`) and ``dead_letter``."""

    def expand(self, messages: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        fn = ParseFn(parse_served, SOURCE_SERVED, "served")
        return messages | "Parse" >> beam.ParDo(fn).with_outputs(DEAD_LETTER, main="valid")


def attributed_events(event: ProductEvent | ForgetRequest) -> Iterator[tuple[str, tuple[str, Item]]]:
    """An event carrying a ``recommendation_id`` -> ``(id, (EVENT, (item, kind)))``; others (and
    forget requests, which share the events' parse) -> nothing."""
    rid = getattr(event, "recommendation_id", None)
    if rid is not None:
        yield rid, (EVENT, (event.item_id, event.event_type))


class Attribute(beam.PTransform):
    """``{"served": ServedRecord, "events": ProductEvent (or ForgetRequest)}`` -> ``writes``
    (:class:`ExperimentWrite`), ``persist`` (:class:`PendingWrite`, ``ServedRecord``), ``dead_letter``."""

    def __init__(self, store: AttributionStore | None, ttl_s: float = TTL_S,
                 write_interval_s: float = WRITE_INTERVAL_S) -> None:
        super().__init__()
        self.store, self.ttl_s, self.write_interval_s = store, ttl_s, write_interval_s

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        served = inputs["served"] | "KeyServed" >> beam.Map(lambda r: (r.recommendation_id, (SERVED, r)))
        events = inputs["events"] | "KeyEvents" >> beam.FlatMap(attributed_events)
        keyed = (served, events) | "ServedAndEvents" >> beam.Flatten()
        keyed.element_type = typehints.Tuple[str, typehints.Tuple[str, Any]]  # a deterministic key coder
        joined = keyed | "JoinServedAndEvents" >> beam.ParDo(
            JoinServedFn(self.store, self.ttl_s)).with_outputs(PERSIST, DEAD_LETTER, main="contributions")
        by_experiment = joined.contributions | "KeyByExperiment" >> beam.Map(lambda c: (c.experiment, c))
        by_experiment.element_type = typehints.Tuple[str, Any]
        writes = by_experiment | "CountPerArm" >> beam.ParDo(
            AggregateArmsFn(self.store, self.write_interval_s))
        return {"writes": writes, PERSIST: joined[PERSIST], DEAD_LETTER: joined[DEAD_LETTER]}
