"""The steady-state throughput arithmetic bench-stream uses (:mod:`testing.throughput`)."""

from __future__ import annotations

import pytest

from testing.throughput import cpu_ms_per_event, first_to_done_rate, steady_rate


def test_steady_rate_ignores_start_up_and_the_last_bundles():
    # a slow first bundle (start-up), then 1,000 events per second, then a slow tail
    progress = [(1000, 10.0)] + [(1000 * k, 10.0 + (k - 1)) for k in range(2, 10)] + [(10000, 30.0)]
    assert steady_rate(progress, 10000) == pytest.approx(1000.0)  # 2,000 -> 8,000 in 6 s
    assert first_to_done_rate(progress, 10000) == pytest.approx(9000 / 20.0)


def test_steady_rate_needs_samples_inside_the_window():
    with pytest.raises(ValueError):
        steady_rate([(10000, 5.0)], 10000)


def test_cpu_ms_per_event_between_the_marks():
    marks = [(1000, 1.0), (2000, 1.2), (5000, 1.8), (8000, 2.4), (10000, 9.0)]
    assert cpu_ms_per_event(marks, 10000) == pytest.approx(1000 * (2.4 - 1.2) / 6000)
