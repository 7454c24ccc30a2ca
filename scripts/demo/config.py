"""What the demo can be told: ``DemoConfig`` and the command line that fills it.

One dataclass holds every knob so the summary can record the exact run configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import scripts.demo as package
from scripts.processes import ROOT


@dataclass
class DemoConfig:
    """Everything the demo can be told; ``--short`` shrinks it for the test."""

    data: str = "synthetic"
    users: int = 1000
    items: int = 600
    seed: int = 7
    live_events: int = 1500
    rate: float = 100.0  # events/s of the live replay
    invalid_fraction: float = 0.04
    duplicate_fraction: float = 0.03
    epochs: int = 4
    probes: int = 30
    load_seconds: float = 8.0
    load_concurrency: int = 8
    showcase_users: int = 3
    experiment_users: int = 400  # users served (once each) in the online experiment
    pubsub_port: int = 8095
    firestore_port: int = 8096
    recommend_port: int = 8091
    ingest_port: int = 8092
    out_dir: Path = ROOT / "reports" / "demo"
    work_dir: Path = ROOT / ".local" / "demo"
    reports_dir: Path = ROOT / "reports"
    timeout_s: float = 180.0
    short: bool = False

    def shortened(self) -> DemoConfig:
        return DemoConfig(**{**asdict(self), "users": 300, "items": 200, "live_events": 300,
                             "rate": 60.0, "epochs": 2, "probes": 8, "load_seconds": 3.0,
                             "showcase_users": 2, "experiment_users": 150, "short": True})


@dataclass(frozen=True)
class CommandLine:
    """The parsed command line: the run's config, and whether to write the Markdown report.

    ``write_report`` is kept out of ``DemoConfig`` so summary.json's config stays as it was.
    """

    config: DemoConfig
    write_report: bool


def parse_args(argv: Sequence[str] | None) -> CommandLine:
    """Build the config from the defaults, ``--short`` and any explicit overrides."""
    p = argparse.ArgumentParser(prog="python -m scripts.demo",
                                description=(package.__doc__ or "").split("\n\n")[0])
    d = DemoConfig()
    p.add_argument("--data", default=d.data, help="synthetic, a data set name or a directory/file")
    p.add_argument("--short", action="store_true", help="a quick run (what the test runs)")
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--live-events", type=int, default=None)
    p.add_argument("--rate", type=float, default=None, help="live events per second")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--probes", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=None, help="where summary.json goes")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="scratch space: data, models, archive, logs (default .local/demo)")
    p.add_argument("--reports-dir", type=Path, default=None,
                   help="where reports/<timestamp>/report.md goes (default reports/)")
    p.add_argument("--pubsub-port", type=int, default=None)
    p.add_argument("--firestore-port", type=int, default=None)
    p.add_argument("--recommend-port", type=int, default=None)
    p.add_argument("--ingest-port", type=int, default=None)
    p.add_argument("--no-report", action="store_true", help="skip the Markdown report and plots")
    args = p.parse_args(argv)
    cfg = d.shortened() if args.short else d
    overrides = {k.replace("-", "_"): v for k, v in vars(args).items()
                 if v is not None and k not in ("short", "no_report")}
    return CommandLine(config=DemoConfig(**{**asdict(cfg), **overrides}),
                       write_report=not args.no_report)
