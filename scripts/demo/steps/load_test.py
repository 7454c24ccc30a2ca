"""Step 6 (last part): serving latency under closed-loop load from concurrent clients.

A rough figure from inside the demo; ``make bench-serving`` is the careful measurement.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import requests

from scripts.demo.clients import RecommendClient
from scripts.demo.console import say
from scripts.demo.context import Context
from scripts.demo.measure import percentile


def load_test(ctx: Context, rec: RecommendClient, user_ids: Sequence[str]) -> None:
    """Closed-loop load: ``load_concurrency`` clients for ``load_seconds``."""
    cfg, fig = ctx.cfg, ctx.fig
    latencies: list[float] = []
    errors = Counter()
    deadline = time.monotonic() + cfg.load_seconds
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        local: list[float] = []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                rec.recommend(rng.choice(user_ids), k=10)
                local.append((time.perf_counter() - t0) * 1000)
            except requests.RequestException as e:
                errors[type(e).__name__] += 1
        with lock:
            latencies.extend(local)

    t0 = time.monotonic()
    with ThreadPoolExecutor(cfg.load_concurrency) as pool:
        list(pool.map(client, range(cfg.load_concurrency)))
    elapsed = time.monotonic() - t0
    fig.serving_latencies_ms = [round(x, 3) for x in latencies]
    fig.serving.update({
        "requests": len(latencies), "errors": dict(errors), "seconds": round(elapsed, 2),
        "concurrency": cfg.load_concurrency, "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) or 0, 2),
        "p99_ms": round(percentile(latencies, 99) or 0, 2),
        "note": "Python load generator on the same 2-core machine; make bench-serving uses wrk"})
    say(f"\n  Serving under load ({cfg.load_concurrency} clients, {elapsed:.0f} s): "
        f"{fig.serving['rps']} requests/s, p50 {fig.serving['p50_ms']} ms, "
        f"p99 {fig.serving['p99_ms']} ms")
