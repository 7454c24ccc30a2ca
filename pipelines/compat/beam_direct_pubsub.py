"""Compatibility shim for Beam 2.77's DirectRunner internals: a tuned Pub/Sub read, drain, idle clock.

Pinned to apache-beam 2.77.0 by ``tests/unit/test_compat_pipelines.py``. Beam's own DirectRunner
read pulls 10 messages per call with a 30 s long poll on the runner's single worker thread, so an
idle second subscription blocks the pipeline and small bundles cap throughput. This replaces
``_PubSubReadEvaluator._read_from_pubsub`` with a pull that returns at once and takes up to
``max_messages`` (bigger bundles coalesce per-user writes under a backlog), sleeping after an
empty pull only when no other step has a bundle queued. It also adds the drain the DirectRunner
lacks (it acks on pull): after :func:`start_drain` nothing more is pulled, and
:func:`idle_seconds` tells when in-flight work has finished. Dataflow uses its own source and
``gcloud dataflow jobs drain``; nothing here runs there. Figures: docs/benchmarks.md (bench-stream).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub

_draining = threading.Event()
_settings = {"max_messages": 5000, "idle_sleep_s": 0.01}
ACK_CHUNK = 1000
_original = transform_evaluator._PubSubReadEvaluator._read_from_pubsub
_original_service_init = executor._ExecutorService.__init__
_original_call = executor.TransformExecutor.call
_services: weakref.WeakSet = weakref.WeakSet()
_activity = {"running": 0, "last": time.monotonic()}
_activity_lock = threading.Lock()


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
    """Stop pulling from every subscription in this process (messages stay in Pub/Sub)."""
    _draining.set()


def is_draining() -> bool:
    """True once :func:`start_drain` was called."""
    return _draining.is_set()


def _pull(evaluator: Any, max_messages: int) -> list[Any]:
    """Up to ``max_messages``: pulls again while a backlog keeps answering (the emulator caps one
    pull at ~100), so a backlog makes large bundles that coalesce per-user writes."""
    client = evaluator._get_subscriber_client(evaluator._applied_ptransform)
    received: list[Any] = []
    while len(received) < max_messages:
        response = client.pull(request={"subscription": evaluator._sub_name,
                                        "max_messages": max_messages - len(received),
                                        "return_immediately": True}, timeout=30)
        if not response.received_messages:
            break
        received.extend(response.received_messages)
    return received


def _read_from_pubsub(self: Any, timestamp_attribute: str | None) -> list[Any]:
    """Like Beam's, but non-blocking, larger batches, no idle sleep in front of queued work,
    and nothing while draining."""
    if _draining.is_set():
        time.sleep(_settings["idle_sleep_s"] * 5)
        return []
    received = _pull(self, int(_settings["max_messages"]))
    if not received:
        if not downstream_work_queued():
            time.sleep(_settings["idle_sleep_s"])
        return []
    results = [_to_element(rm.message, timestamp_attribute) for rm in received]
    client = self._get_subscriber_client(self._applied_ptransform)
    ack_ids = [rm.ack_id for rm in received]
    for i in range(0, len(ack_ids), ACK_CHUNK):  # Pub/Sub caps a request at 512 KiB
        client.acknowledge(subscription=self._sub_name, ack_ids=ack_ids[i:i + ACK_CHUNK])
    return results


def _to_element(message: Any, timestamp_attribute: str | None) -> tuple[Any, Any]:
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.utils.timestamp import Timestamp

    parsed = PubsubMessage._from_message(message)
    if timestamp_attribute and timestamp_attribute in parsed.attributes:
        return Timestamp(micros=int(parsed.attributes[timestamp_attribute]) * 1000), parsed
    return Timestamp.from_utc_datetime(message.publish_time), parsed


def install(max_messages: int = 5000, idle_sleep_s: float = 0.01) -> None:
    """Use the tuned read for every DirectRunner Pub/Sub source started after this call."""
    _settings.update(max_messages=max_messages, idle_sleep_s=idle_sleep_s)
    transform_evaluator._PubSubReadEvaluator._read_from_pubsub = _read_from_pubsub
    executor._ExecutorService.__init__ = _register_service
    executor.TransformExecutor.call = _tracked_call


def uninstall() -> None:
    """Restore Beam's own read (tests)."""
    transform_evaluator._PubSubReadEvaluator._read_from_pubsub = _original
    executor._ExecutorService.__init__ = _original_service_init
    executor.TransformExecutor.call = _original_call
    _draining.clear()
