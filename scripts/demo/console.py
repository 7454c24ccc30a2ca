"""What the demo prints: progress lines, step headers, a live status line, polling.

Kept in one place so every step reports progress the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from scripts.demo.errors import DemoError

TOTAL_STEPS = 9


def say(text: str = "") -> None:
    """Print a line now (flushed, so progress shows up in logs as it happens)."""
    print(text, flush=True)


def status_line(text: str) -> None:
    """A live status line on a terminal; nothing when the output goes to a file."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text}   ")
        sys.stderr.flush()


def end_status_line() -> None:
    """Move past the live status line, if one was shown."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def step(n: int, title: str) -> None:
    """A bold ``[n/TOTAL_STEPS] title`` header for the start of a step."""
    say(f"\n\033[1m[{n}/{TOTAL_STEPS}] {title}\033[0m")


def fmt(x: float | None) -> str:
    """A score or a figure with three decimals, or ``n/a``."""
    return "n/a" if x is None else f"{x:.3f}"


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.2,
               status: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; show a live status line."""
    t0 = time.monotonic()
    last_print = 0.0
    while True:
        value = check()
        if value:
            if last_print:
                end_status_line()
            return value
        elapsed = time.monotonic() - t0
        if elapsed > timeout_s:
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                            + (f" ({status()})" if status else ""))
        if elapsed - last_print >= 1.0:
            last_print = elapsed
            status_line(f"  waiting for {what}: {elapsed:4.0f} s {status() if status else ''}")
        time.sleep(interval_s)
