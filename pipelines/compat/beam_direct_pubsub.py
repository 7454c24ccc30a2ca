"""Compatibility shim for Beam 2.77's DirectRunner internals: a Pub/Sub read that acks only what is
durable, drain, idle clock.

Pinned to apache-beam 2.77.0 by ``tests/unit/test_compat_pipelines.py``. Beam's own DirectRunner
read pulls 10 messages per call with a 30 s long poll and acks them at once, so a crash (or an
exception that ends the pipeline) loses every message pulled but not yet written. This replaces
``_PubSubReadEvaluator._read_from_pubsub`` / ``finish_bundle`` with a read that:

* pulls up to ``max_messages`` without blocking (repeating while a backlog answers), sleeping
  after an empty pull only when no other step has a bundle queued;
* keeps every pulled message **un-acked** in a registry, extends its ack deadline
  (``modify_ack_deadline``) while it is held, and acks it only once the runner shows that
  everything it caused is done: a batch is acked when (1) no step other than a Pub/Sub read has
  a bundle pending (produced, not yet consumed) or a fired timer unprocessed, and (2) none of
  the user timers (a stateful ``DoFn``'s ``TimerSpec``) that were set when the batch's bundles
  had all been processed is still set (the per-user write coalescing holds events until its
  timer fires). A timer named with :data:`NON_BARRIER_PREFIX` (:func:`non_barrier_timer`) is
  not a barrier: it only forgets state (attribution's 30-minute TTL), nothing a message must
  reach waits for it, and holding acks that long would stall the read at ``max_unacked``.
  The DirectRunner runs every bundle and the read on one worker thread, so at a
  read every earlier bundle has either finished (its Firestore commits, dead-letter publishes
  and archive appends are synchronous in ``finish_bundle``) or is pending. Windowed state
  (trending's GBK) is not waited for: it is derived, not part of what a message must reach;
* stops pulling while ``max_unacked`` messages wait (bounded memory and redelivery);
* drains: after :func:`start_drain` nothing more is pulled, and :func:`unacked` /
  :func:`idle_seconds` tell when in-flight work has finished and been acked.

Dataflow uses its own source (it acks after its checkpoint); nothing here runs there. Figures:
docs/benchmarks.md (bench-stream, bench-crash).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub

LOG = logging.getLogger(__name__)
_draining = threading.Event()
_settings: dict[str, float] = {"max_messages": 5000, "idle_sleep_s": 0.01, "max_unacked": 20000,
                               "lease_after_s": 5.0, "lease_extend_s": 30}
ACK_CHUNK = 1000
# User timers whose name starts with this are not durability barriers (see the module docstring).
NON_BARRIER_PREFIX = "expire_"
_Evaluator = transform_evaluator._PubSubReadEvaluator
_original = _Evaluator._read_from_pubsub
_original_finish = _Evaluator.finish_bundle
_original_service_init = executor._ExecutorService.__init__
_original_call = executor.TransformExecutor.call
_services: weakref.WeakSet = weakref.WeakSet()
_activity = {"running": 0, "last": time.monotonic()}
_activity_lock = threading.Lock()


# ----------------------------------------------------------------------------- un-acked registry


@dataclass
class _Batch:
    """The messages of one read bundle, held un-acked until their effects are durable."""

    ack_ids: list[str]
    pulled_at: float
    barrier: frozenset | None = None  # user timers set once the batch's bundles were all processed


@dataclass
class _Subscription:
    client: Any
    name: str
    batches: list[_Batch] = field(default_factory=list)


_subs: dict[str, _Subscription] = {}
_subs_lock = threading.Lock()
_stats = {"acked": 0, "lease_extensions": 0, "ack_errors": 0}
_lease_thread: threading.Thread | None = None


def unacked() -> int:
    """Messages pulled in this process and not yet acked."""
    with _subs_lock:
        return sum(len(b.ack_ids) for s in _subs.values() for b in s.batches)


def stats() -> dict[str, int]:
    """Counts since start: ``acked``, ``lease_extensions``, ``ack_errors`` (tests, logs)."""
    with _subs_lock:
        return dict(_stats, unacked=sum(len(b.ack_ids) for s in _subs.values() for b in s.batches))


def _runner_busy(ctx: Any) -> bool:
    """True if a step other than a Pub/Sub read has a pending bundle or an unprocessed fired timer."""
    for applied, tw in ctx._watermark_manager._transform_to_watermarks.items():
        if isinstance(applied.transform, _DirectReadFromPubSub):
            continue
        if tw._pending or tw._fired_timers:
            return True
    return False


def _user_timer_steps(ctx: Any) -> list[Any]:
    cached = getattr(ctx, "_ack_timer_steps", None)
    if cached is None:
        import apache_beam as beam
        from apache_beam.transforms.userstate import get_dofn_specs

        cached = [a for a in ctx._watermark_manager._transform_to_watermarks
                  if type(a.transform) is beam.ParDo and get_dofn_specs(a.transform.fn)[1]]
        ctx._ack_timer_steps = cached
    return cached


def non_barrier_timer(name: str) -> str:
    """The ``TimerSpec`` name of a timer that must not hold acks (it only forgets state)."""
    return name if name.startswith(NON_BARRIER_PREFIX) else NON_BARRIER_PREFIX + name


def _is_non_barrier(name: str) -> bool:
    """The runner keys a user timer as ``user/<TimerSpec.name>``, which is ``ts-<name given>``."""
    return name.rpartition("/")[2].removeprefix("ts-").startswith(NON_BARRIER_PREFIX)


def _user_timers(ctx: Any) -> frozenset:
    """Every user timer currently set that is a barrier: (step, key, window, name, firing time)."""
    out = set()
    for applied in _user_timer_steps(ctx):
        for key, state in ctx._transform_keyed_states[applied].items():
            for win, timers in state.timers.items():
                for (name, _domain, tag), ts in timers.items():
                    if not _is_non_barrier(name):
                        out.add((applied.full_label, key, win, name, tag, ts))
    return frozenset(out)


def _ack(sub: _Subscription, ack_ids: list[str]) -> None:
    from google.api_core import exceptions

    for i in range(0, len(ack_ids), ACK_CHUNK):  # Pub/Sub caps a request at 512 KiB
        try:
            sub.client.acknowledge(subscription=sub.name, ack_ids=ack_ids[i:i + ACK_CHUNK])
        except exceptions.GoogleAPICallError as e:  # expired ids are redelivered; dedup drops them
            _stats["ack_errors"] += 1
            LOG.warning("ack of %d messages failed: %s", len(ack_ids[i:i + ACK_CHUNK]), e)
    _stats["acked"] += len(ack_ids)


def ack_finished(ctx: Any) -> int:
    """Ack every held batch whose effects are durable (see the module docstring); returns how many
    messages were acked. Called on the runner's worker thread, before each pull."""
    with _subs_lock:
        if not any(s.batches for s in _subs.values()):
            return 0
    if _runner_busy(ctx):
        return 0
    timers = _user_timers(ctx)
    done: list[tuple[_Subscription, list[str]]] = []
    with _subs_lock:
        for sub in _subs.values():
            keep, ids = [], []
            for batch in sub.batches:
                if batch.barrier is None:
                    batch.barrier = timers
                if batch.barrier & timers:
                    keep.append(batch)
                else:
                    ids.extend(batch.ack_ids)
            sub.batches = keep
            if ids:
                done.append((sub, ids))
    for sub, ids in done:
        _ack(sub, ids)
    return sum(len(ids) for _, ids in done)


def _lease_loop() -> None:
    """Every ``lease_after_s``: extend the deadline of batches held longer than that."""
    from google.api_core import exceptions

    while True:
        time.sleep(_settings["lease_after_s"])
        now = time.monotonic()
        with _subs_lock:
            due = [(s, [i for b in s.batches if now - b.pulled_at >= _settings["lease_after_s"]
                        for i in b.ack_ids]) for s in _subs.values()]
        for sub, ids in due:
            for i in range(0, len(ids), ACK_CHUNK):
                try:
                    sub.client.modify_ack_deadline(subscription=sub.name, ack_ids=ids[i:i + ACK_CHUNK],
                                                   ack_deadline_seconds=int(_settings["lease_extend_s"]))
                    _stats["lease_extensions"] += len(ids[i:i + ACK_CHUNK])
                except exceptions.GoogleAPICallError as e:
                    LOG.warning("modify_ack_deadline failed: %s", e)


def _start_lease_thread() -> None:
    global _lease_thread
    if _lease_thread is None or not _lease_thread.is_alive():
        _lease_thread = threading.Thread(target=_lease_loop, name="pubsub-lease", daemon=True)
        _lease_thread.start()


# ----------------------------------------------------------------------------- idle clock, drain


def _register_service(self: Any, num_workers: int) -> None:
    _original_service_init(self, num_workers)
    _services.add(self)


def _tracked_call(self: Any, state_sampler: Any) -> Any:
    """Beam's ``TransformExecutor.call``, recording when a non-read step works on elements or timers."""
    busy = not isinstance(self._applied_ptransform.transform, _DirectReadFromPubSub) and (
        self._input_bundle.has_elements() or bool(self._fired_timers))
    if not busy:
        return _original_call(self, state_sampler)
    with _activity_lock:
        _activity["running"] += 1
    try:
        return _original_call(self, state_sampler)
    finally:
        with _activity_lock:
            _activity["running"] -= 1
            _activity["last"] = time.monotonic()


def idle_seconds() -> float:
    """Seconds since a step other than a Pub/Sub read last finished a bundle (0 while one runs)."""
    with _activity_lock:
        return 0.0 if _activity["running"] else time.monotonic() - _activity["last"]


def downstream_work_queued() -> bool:
    """True if a bundle of a step other than a Pub/Sub read waits in the runner's queue."""
    for service in list(_services):
        for task in list(service.queue.queue):
            applied = getattr(task, "_applied_ptransform", None)
            if applied is not None and not isinstance(applied.transform, _DirectReadFromPubSub):
                return True
    return False


def start_drain() -> None:
    """Stop pulling from every subscription in this process (held messages are still acked)."""
    _draining.set()


def is_draining() -> bool:
    """True once :func:`start_drain` was called."""
    return _draining.is_set()


# ----------------------------------------------------------------------------- the read


def _pull(client: Any, subscription: str, max_messages: int) -> list[Any]:
    """Up to ``max_messages``: pulls again while a backlog keeps answering (the emulator caps one
    pull at ~100), so a backlog makes large bundles that coalesce per-user writes."""
    received: list[Any] = []
    while len(received) < max_messages:
        response = client.pull(request={"subscription": subscription,
                                        "max_messages": max_messages - len(received),
                                        "return_immediately": True}, timeout=30)
        if not response.received_messages:
            break
        received.extend(response.received_messages)
    return received


def _read_from_pubsub(self: Any, timestamp_attribute: str | None) -> list[Any]:
    """Ack what is durable, then pull (non-blocking, large batches) unless draining or too many
    messages are held; the pulled batch is registered by :func:`_finish_bundle` once its bundle
    is built."""
    self._pulled = None
    ack_finished(self._evaluation_context)
    if _draining.is_set():
        time.sleep(_settings["idle_sleep_s"] * 5)
        return []
    client = self._get_subscriber_client(self._applied_ptransform)
    if unacked() >= _settings["max_unacked"]:
        received = []
    else:
        received = _pull(client, self._sub_name, int(_settings["max_messages"]))
    if not received:
        if not downstream_work_queued():
            time.sleep(_settings["idle_sleep_s"])
        return []
    self._pulled = (client, [rm.ack_id for rm in received])
    return [_to_element(rm.message, timestamp_attribute) for rm in received]


def _finish_bundle(self: Any) -> Any:
    """Beam's ``finish_bundle`` (which reads), then hold the batch it pulled: only a batch whose
    bundle was built is ever acked; one lost to an exception is redelivered by Pub/Sub."""
    result = _original_finish(self)
    pulled = getattr(self, "_pulled", None)
    if pulled:
        client, ack_ids = pulled
        with _subs_lock:
            sub = _subs.setdefault(self._sub_name, _Subscription(client, self._sub_name))
            sub.batches.append(_Batch(ack_ids, time.monotonic()))
        self._pulled = None
    return result


def _to_element(message: Any, timestamp_attribute: str | None) -> tuple[Any, Any]:
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.utils.timestamp import Timestamp

    parsed = PubsubMessage._from_message(message)
    if timestamp_attribute and timestamp_attribute in parsed.attributes:
        return Timestamp(micros=int(parsed.attributes[timestamp_attribute]) * 1000), parsed
    return Timestamp.from_utc_datetime(message.publish_time), parsed


def install(max_messages: int = 5000, idle_sleep_s: float = 0.01, max_unacked: int | None = None,
            lease_after_s: float = 5.0, lease_extend_s: int = 30) -> None:
    """Use this read for every DirectRunner Pub/Sub source started after this call.

    ``max_unacked`` (default 4 x ``max_messages``): pulling pauses while that many are held.
    Held messages older than ``lease_after_s`` get their ack deadline pushed to
    ``lease_extend_s`` from now, every ``lease_after_s``.
    """
    _settings.update(max_messages=max_messages, idle_sleep_s=idle_sleep_s,
                     max_unacked=max_unacked or 4 * max_messages, lease_after_s=lease_after_s,
                     lease_extend_s=lease_extend_s)
    _Evaluator._read_from_pubsub = _read_from_pubsub
    _Evaluator.finish_bundle = _finish_bundle
    executor._ExecutorService.__init__ = _register_service
    executor.TransformExecutor.call = _tracked_call
    _start_lease_thread()


def uninstall() -> None:
    """Restore Beam's own read (tests)."""
    _Evaluator._read_from_pubsub = _original
    _Evaluator.finish_bundle = _original_finish
    executor._ExecutorService.__init__ = _original_service_init
    executor.TransformExecutor.call = _original_call
    _draining.clear()
    with _subs_lock:
        _subs.clear()
