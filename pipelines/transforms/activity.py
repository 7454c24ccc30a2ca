"""Process-wide "last time a pipeline step did work", used to drain the DirectRunner.

On SIGTERM the local runner stops pulling from Pub/Sub, then waits until no step has
touched this clock for a while before it shuts down (see :mod:`pipelines.transforms.direct_pubsub`).
"""

from __future__ import annotations

import time

_last_activity = time.monotonic()


def touch() -> None:
    """Record that a step just processed something."""
    global _last_activity
    _last_activity = time.monotonic()


def idle_seconds() -> float:
    """Seconds since any step last called :func:`touch`."""
    return time.monotonic() - _last_activity
