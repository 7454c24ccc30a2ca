"""Everything the demo measures, in one dataclass the steps fill in.

It is written as ``details`` in summary.json, so a new figure is a new field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figures:
    """Everything measured, written to summary.json."""

    config: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    ingest_reject_reasons: dict[str, int] = field(default_factory=dict)
    freshness_s: list[float] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    serving: dict[str, Any] = field(default_factory=dict)
    serving_latencies_ms: list[float] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    showcase: list[dict[str, Any]] = field(default_factory=list)
    new_item: dict[str, Any] = field(default_factory=dict)
    hot_reload: dict[str, Any] = field(default_factory=dict)
    forget_user: dict[str, Any] = field(default_factory=dict)  # see scripts.demo.steps.forget_user
    console: dict[str, Any] = field(default_factory=dict)  # URL, screenshot, load time
    experiment: dict[str, Any] = field(default_factory=dict)  # see scripts.demo.steps.experiment
