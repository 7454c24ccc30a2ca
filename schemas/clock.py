"""The time unit of every contract: epoch milliseconds."""

from __future__ import annotations

import time


def now_ms() -> int:
    """The current time in epoch milliseconds, as stored in events and documents."""
    return int(time.time() * 1000)
