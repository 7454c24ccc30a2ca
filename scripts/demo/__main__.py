"""Entry point: ``python -m scripts.demo [args]``, what ``make demo`` runs.

Owns what the caller sees: exit codes (0, 1 when a step fails, 130 on Ctrl-C or SIGTERM) and outputs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict

from scripts import local_stack
from scripts.demo.config import parse_args
from scripts.demo.console import say
from scripts.demo.errors import DemoError
from scripts.demo.run import run
from scripts.demo.summary import print_summary, summary, write_summary_json


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the run stops every child."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; write summary.json and the report; return the exit code."""
    cmd = parse_args(argv)
    cfg = cmd.config
    with sigterm_as_interrupt():
        try:
            fig = run(cfg)
        except KeyboardInterrupt:
            say("\ninterrupted: everything the demo started has been stopped")
            return 130
        except (DemoError, local_stack.StackError) as e:
            say(f"\ndemo failed: {e}")
            return 1
    s = summary(fig)
    summary_path = write_summary_json(s, fig, cfg.out_dir)
    print_summary(s)
    if cmd.write_report:
        from scripts.demo.report import write_report  # matplotlib: only when a report is wanted

        path = write_report(s, asdict(fig), cfg.reports_dir)
        say(f"\n  report: {path}")
    say(f"  summary: {summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
