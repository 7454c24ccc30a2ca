"""Steady-state rates and CPU per event from progress samples of a pipeline working off a backlog.

Start-up and the first and last bundles distort a rate taken over a whole backlog, so rates are
taken between the samples where 20 % and 80 % of it were done.
"""

from __future__ import annotations


def steady_rate(progress: list[tuple[int, float]], total: int, lo: float = 0.2,
                hi: float = 0.8) -> float:
    """Events/s between the first progress samples at >= ``lo`` and >= ``hi`` of ``total``."""
    def first_at(frac: float) -> tuple[int, float]:
        return next((n, t) for n, t in progress if n >= frac * total)

    (n1, t1), (n2, t2) = first_at(lo), first_at(hi)
    if n2 <= n1 or t2 <= t1:
        raise ValueError(f"too few progress samples for a steady rate: {progress}")
    return (n2 - n1) / (t2 - t1)


def first_to_done_rate(progress: list[tuple[int, float]], total: int) -> float:
    """Events/s from the first progress sample to the end (events before the first excluded)."""
    n0, t0 = next((n, t) for n, t in progress if n > 0)
    return (total - n0) / max(progress[-1][1] - t0, 1e-6)


def cpu_ms_per_event(marks: list[tuple[int, float]], total: int, lo: float = 0.2,
                     hi: float = 0.8) -> float:
    """CPU ms per event between the first (count, CPU s) samples at >= ``lo`` and >= ``hi``."""
    (n1, c1), (n2, c2) = (next((n, c) for n, c in marks if n >= f * total) for f in (lo, hi))
    return 1000.0 * (c2 - c1) / max(n2 - n1, 1)
