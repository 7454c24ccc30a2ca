"""Small measuring helpers: the wall clock in milliseconds and a percentile.

Local to the demo for now, so its figures are computed exactly as they always were.
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of ``values``, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


def now_ms() -> int:
    """Milliseconds since the epoch, the unit of event and item timestamps."""
    return int(time.time() * 1000)
