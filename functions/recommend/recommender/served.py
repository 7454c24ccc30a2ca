"""Served records: one ``ServedRecord`` (schemas.experiments) per answered list, off the request path.

A request only puts its record into a bounded in-memory queue (``SERVED_QUEUE_MAX``) and never
waits: when the queue is full the record is dropped and counted. A background thread, started by
the first record of each process (gunicorn forks its workers after ``main.py`` is imported, and
neither threads nor gRPC channels survive a fork), takes up to ``SERVED_BATCH_MAX`` records at a
time: it sleeps ``SERVED_BATCH_LATENCY_SECONDS`` after the first, then takes what came meanwhile
(one RPC per list cost a loaded benchmark server ~1.4 ms CPU per request), and publishes them in
one Pub/Sub ``Publish`` call of google-cloud-pubsub's ``PublisherClient``, bounded by
``SERVED_PUBLISH_TIMEOUT_SECONDS``. A batch that fails or times out is dropped and counted as
``failed``. The counters are the process's (``pid``) and show in ``/healthz``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from schemas.experiments import ServedRecord

from .config import Settings

log = logging.getLogger(__name__)


class BatchSink(Protocol):
    """Publishes one batch of records or raises (``PubSubSink``; a fake in unit tests)."""

    def publish(self, records: Sequence[ServedRecord]) -> None: ...


class PubSubSink:
    """One synchronous ``Publish`` RPC per batch through ``pubsub_v1.PublisherClient``.

    Why: one bounded call per batch keeps exactly one batch in flight and makes its outcome countable.
    """

    def __init__(self, topic_path: str, timeout_s: float) -> None:
        from google.api_core import retry as gretry
        from google.cloud import pubsub_v1  # imported here: only a process that publishes pays for it

        self._client = pubsub_v1.PublisherClient()
        self._message = pubsub_v1.types.PubsubMessage
        self._topic, self._timeout = topic_path, timeout_s
        self._retry = gretry.Retry(initial=0.05, maximum=1.0, multiplier=2.0, timeout=timeout_s,
                                   predicate=gretry.if_transient_error)

    def publish(self, records: Sequence[ServedRecord]) -> None:
        messages = [self._message(data=r.to_pubsub_data(), attributes=r.pubsub_attributes())
                    for r in records]
        self._client.api.publish(topic=self._topic, messages=messages, retry=self._retry,
                                 timeout=self._timeout)


class ServedPublisher:
    """The bounded queue, its drain thread and the counters of one process.

    Why: a served record must never delay or fail a request, and a lost one must be counted.
    """

    def __init__(self, topic_path: str | None, queue_max: int = 10_000, batch_max: int = 500,
                 sink_factory: Callable[[], BatchSink] | None = None, timeout_s: float = 5.0,
                 linger_s: float = 0.0) -> None:
        self.topic_path = topic_path
        self._queue_max, self._batch_max, self._linger = queue_max, batch_max, linger_s
        self._sink_factory = sink_factory or (lambda: PubSubSink(topic_path or "", timeout_s))
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._reset()
        os.register_at_fork(after_in_child=self._forked)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServedPublisher:
        """The publisher ``SERVED_TOPIC`` and the ``SERVED_*`` settings describe (off when unset)."""
        return cls(settings.served_topic_path, settings.served_queue_max, settings.served_batch_max,
                   timeout_s=settings.served_publish_timeout_seconds,
                   linger_s=settings.served_batch_latency_seconds)

    @property
    def enabled(self) -> bool:
        return self.topic_path is not None

    def _reset(self) -> None:
        """Fresh queue, counters and no thread: at construction, and in a forked child."""
        self._queue: queue.Queue[ServedRecord] = queue.Queue(maxsize=self._queue_max)
        self._thread: threading.Thread | None = None
        self._pending = 0  # queued or in flight
        self.counts = {"published": 0, "dropped_queue_full": 0, "failed": 0, "batches": 0,
                       "failed_batches": 0}

    def _forked(self) -> None:
        """In a forked child: the parent's lock, queue and thread are not this process's."""
        self._lock = threading.Lock()
        self._pid = None
        self._reset()

    def submit(self, record: ServedRecord) -> bool:
        """Queue ``record`` without blocking; False (and counted) when dropped or off."""
        if self.topic_path is None:
            return False
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.counts["dropped_queue_full"] += 1
                return False
            self._pending += 1
        return True

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._drain, name="served-records", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        """Forever: wait for a record, let ``linger`` pass, take up to ``batch_max``, publish, count."""
        sink: BatchSink | None = None
        while True:
            batch = [self._queue.get()]
            if self._linger > 0:  # one sleep, not a wake-up per record: requests keep the GIL
                time.sleep(self._linger)
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            outcome = ("published", "batches")
            try:
                if sink is None:
                    sink = self._sink_factory()
                sink.publish(batch)
            # Any failure (RPC error, timeout, a client that cannot be built) loses this batch only:
            # counted and logged, and the thread lives on for the next one.
            except Exception as e:
                outcome = ("failed", "failed_batches")
                log.warning("served records: a batch of %d not published to %s: %s", len(batch),
                            self.topic_path, e)
            with self._lock:
                self.counts[outcome[0]] += len(batch)
                self.counts[outcome[1]] += 1
                self._pending -= len(batch)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the queue is drained and no batch is in flight (tests, the benchmark)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._pending == 0:
                return True
            time.sleep(0.01)
        return False

    def health(self) -> dict[str, Any]:
        """The counters for ``/healthz`` (this process's, since it started)."""
        with self._lock:
            counts = dict(self.counts)
        return {"topic": self.topic_path, **counts, "queued": self._queue.qsize(),
                "queue_max": self._queue_max, "pid": os.getpid()}
