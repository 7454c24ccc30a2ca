"""Wall time and peak memory of a block of code.

Peak memory is the process's resident set size (RSS) sampled every 10 ms by a background thread
from ``/proc/self/statm`` (Linux); the reported figure is the peak minus the RSS at the start of
the block, i.e. what the block added (MB). Freed heap memory is handed back to the OS
(``malloc_trim``) first, so a model reusing pages an earlier model freed still shows its growth.
``tracemalloc`` would miss numpy/BLAS/TF native buffers, and ``ru_maxrss`` is a process-lifetime
high-water mark that cannot see a second model's peak once a bigger one has run. Without
``/proc`` the monitor falls back to ``ru_maxrss`` deltas (a lower bound), as ``method`` says.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import threading
import time
from types import TracebackType

_STATM = "/proc/self/statm"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def release_free_memory() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim``) so RSS deltas start clean.

    Without it, a model allocating into heap pages an earlier model freed (but glibc kept)
    shows no RSS growth. Returns ``False`` where ``malloc_trim`` is unavailable.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def current_rss_bytes() -> int | None:
    """The process's current RSS in bytes, or ``None`` without ``/proc``."""
    try:
        with open(_STATM, encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class ResourceMonitor:
    """Context manager measuring wall seconds and peak RSS increase (MB).

    >>> with ResourceMonitor() as mon:
    ...     work()
    >>> mon.seconds, mon.peak_rss_mb
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.seconds = 0.0
        self.peak_rss_mb = 0.0
        self.method = "rss-sampling" if current_rss_bytes() is not None else "ru_maxrss-delta"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_rss = 0
        self._peak = 0
        self._t0 = 0.0

    def __enter__(self) -> ResourceMonitor:
        if self.method == "rss-sampling":
            release_free_memory()
        self._t0 = time.perf_counter()
        if self.method == "rss-sampling":
            self._start_rss = self._peak = current_rss_bytes() or 0
            self._thread = threading.Thread(target=self._sample, name="rss-monitor", daemon=True)
            self._thread.start()
        else:
            self._start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, current_rss_bytes() or 0)
        else:
            self._peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_rss_mb = max(0, self._peak - self._start_rss) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = current_rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss
