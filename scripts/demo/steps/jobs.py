"""Run a batch job (quality benchmark, training, seeding) as a child process and time it.

A child process keeps TensorFlow out of the demo's own process and its output in a log file.
"""

from __future__ import annotations

import time

from scripts.demo.console import end_status_line, say, status_line
from scripts.demo.context import Context
from scripts.demo.errors import DemoError
from scripts.processes import ManagedProcess


def run_job(ctx: Context, name: str, args: list[str]) -> None:
    """Run ``args`` to completion; record ``timings_s[name]``; raise if it failed."""
    proc = ManagedProcess(name, args, ctx.logs / f"{name}.log", env=ctx.env)
    t0 = time.monotonic()
    proc.start()
    try:
        say(f"  {name}: running (log: {proc.log_path})")
        while proc.alive():
            status_line(f"  {name}: {time.monotonic() - t0:5.0f} s")
            time.sleep(0.5)
    finally:
        end_status_line()
        proc.stop()
    ctx.fig.timings_s[name] = round(time.monotonic() - t0, 2)
    if proc.proc.returncode != 0:
        raise DemoError(f"{name} failed (exit {proc.proc.returncode}):\n{proc.log_tail()}")
