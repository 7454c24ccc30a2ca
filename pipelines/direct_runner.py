"""Running the streaming pipeline on the DirectRunner: a Pub/Sub read that acks only durable work,
serve until a signal, drain.

Nothing here runs on Dataflow (it has its own Pub/Sub source, acks after its checkpoint, and
``gcloud dataflow jobs drain``) and no DoFn calls into it: what is done, and so may be acked, is
read from the runner's executor (:mod:`pipelines.compat.beam_direct_pubsub`).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.compat import beam_direct_pubsub

LOG = logging.getLogger(__name__)


def is_direct(options: PipelineOptions) -> bool:
    """True when ``options`` select the DirectRunner (Beam's default)."""
    runner = options.view_as(StandardOptions).runner
    return runner is None or "Direct" in str(runner)


def install(max_messages: int, max_unacked: int | None = None) -> None:
    """Use the tuned, drainable, ack-when-durable Pub/Sub read for the DirectRunner sources
    started after this call."""
    beam_direct_pubsub.install(max_messages=max_messages, max_unacked=max_unacked)


def serve(result: Any, drain_idle_s: float, settle_s: float) -> None:
    """Block until SIGTERM/SIGINT (then drain) or until the pipeline stops by itself."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            result.wait_until_finish()
        except BaseException as e:  # noqa: B036 - re-raised in the main thread below
            failures.append(e)

    waiter = threading.Thread(target=wait, name="pipeline-wait", daemon=True)
    waiter.start()
    while not stop.wait(0.5) and waiter.is_alive():
        pass
    if failures:
        raise failures[0]
    if stop.is_set():
        drain(result, drain_idle_s, settle_s)
        log_counters(result)


def log_counters(result: Any) -> dict[str, int]:
    """Log (one ``counters {json}`` line) and return the pipeline's counters, summed per name."""
    counters: dict[str, int] = {}
    try:
        for c in result.metrics().query()["counters"]:
            value = max(int(c.committed or 0), int(c.attempted or 0))  # the DirectRunner commits late
            counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + value
    except (AttributeError, KeyError, TypeError) as e:  # a runner without committed metrics
        LOG.warning("no counters: %s", e)
    LOG.info("counters %s", json.dumps(counters, sort_keys=True))
    return counters


def drain(result: Any, idle_s: float, settle_s: float = 0.0, timeout_s: float = 120.0) -> None:
    """Stop pulling, wait until every pulled message is acked and no step has worked for
    ``idle_s`` (and ``settle_s`` passed), then stop.

    Whatever is still held at the timeout is redelivered by Pub/Sub to the next run.
    """
    LOG.info("draining: no more pulls; waiting for in-flight work")
    beam_direct_pubsub.start_drain()
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        waited = time.monotonic() - started
        if (beam_direct_pubsub.unacked() == 0 and beam_direct_pubsub.idle_seconds() >= idle_s
                and waited >= max(settle_s, idle_s)):
            break
        time.sleep(0.2)
    LOG.info("drained after %.1f s (%s); stopping", time.monotonic() - started, beam_direct_pubsub.stats())
    result.cancel()
