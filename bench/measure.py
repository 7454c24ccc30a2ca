"""What every benchmark measures the same way: CPU and memory from /proc, load, machine, the report.

Figures from different benchmarks are compared side by side in docs/benchmarks.md, so CPU, memory
and load are read one way here (Linux ``/proc``) rather than once per benchmark.
"""

from __future__ import annotations

import json
import os
import platform
import re
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports" / "bench"


# ----------------------------------------------------------------------------- CPU


def _stat_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; raises OSError if it is gone."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` alone (all its threads, not its children)."""
    return _stat_cpu_seconds(pid)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of any of its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process tree under ``pid`` (live processes only)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += _stat_cpu_seconds(p)
        except OSError:
            continue
    return total


def group_cpu_seconds(pgids: list[int]) -> float:
    """CPU seconds of every live process in the process groups ``pgids`` (e.g. the emulators)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# ----------------------------------------------------------------------------- memory


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MB, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except FileNotFoundError:
        return None
    return None


def tree_memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS summed over the process tree under ``pid`` (e.g. gunicorn master + workers).

    RSS counts pages the forked workers share once per process; PSS splits them, so the PSS sum is
    the tree's real footprint.
    """
    pids = process_tree(pid)
    rss = pss = 0
    for p in pids:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))
        pss += int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
    return {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "processes": len(pids)}


class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval_s`` into ``samples`` as (t, MB)."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.interval_s):
            mb = rss_mb(self.pid)
            if mb is None:
                return
            self.samples.append((time.monotonic() - start, mb))

    def stop(self) -> None:
        self._stop.set()


def rss_summary(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, Any]:
    """First/last/max RSS and the slope (MB/min) after ``warmup_s`` (flat memory ~ 0)."""
    if not samples:
        return {"n": 0}
    t = np.array([s[0] for s in samples])
    mb = np.array([s[1] for s in samples])
    steady = t >= warmup_s
    slope = float(np.polyfit(t[steady], mb[steady], 1)[0] * 60) if steady.sum() >= 3 else None
    return {"n": len(samples), "first_mb": round(float(mb[0]), 1), "last_mb": round(float(mb[-1]), 1),
            "max_mb": round(float(mb.max()), 1),
            "steady_first_mb": round(float(mb[steady][0]), 1) if steady.any() else None,
            "steady_slope_mb_per_min": round(slope, 2) if slope is not None else None,
            "duration_s": round(float(t[-1]), 1)}


# ----------------------------------------------------------------------------- machine and report


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages: the machine is shared, so every figure carries them."""
    return os.getloadavg()


def machine_info(*packages: str) -> dict[str, Any]:
    """Platform, Python, CPU count and processor, and the versions of ``packages``."""
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            **{p: metadata.version(p) for p in packages}}


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON to ``path`` (normally ``REPORTS / "<bench>.json"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def print_rows(title: str, rows: list[tuple[str, str, str]]) -> None:
    """A titled table of (measure, value, target) rows, values right-aligned."""
    width = max(len(a) for a, _, _ in rows)
    print(f"\n{title}")
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>24}  {target}")
