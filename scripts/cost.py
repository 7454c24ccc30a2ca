"""What the system costs on Google Cloud, from measured figures and dated list prices.

    python -m scripts.cost                 # a table: scale-to-zero vs always-on at 10/100/1,000 req/s
    python -m scripts.cost --json          # the same as JSON (``scenarios``, Personalize's price)

Measured inputs come from the benchmarks' reports when they exist (``reports/bench/serving.json``:
server CPU per request and memory; ``reports/bench/stream.json``: pipeline CPU per event), else
from the figures recorded in docs/benchmarks.md (each input says which). Prices are
``scripts/prices.py``. The arithmetic is pinned by ``tests/unit/test_cost.py``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from scripts import prices

ROOT = Path(__file__).resolve().parent.parent
SECONDS_PER_MONTH = 730 * 3600  # the 730-hour month cloud price lists use
DEFAULT_RATES = (10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class Measured:
    """Per-request and per-event figures the bill follows, each with where it came from."""

    server_cpu_ms_per_request: float = 1.46  # docs/benchmarks.md, bench-serving 2026-11-27
    firestore_reads_per_request: float = 1.0  # the users/{id} document
    background_reads_per_instance_s: float = 1 / 5 + 1 / 5 + 1 / 30  # models/current, items poll, trending
    pipeline_cpu_ms_per_event: float = 0.157  # docs/scaling.md, bench-stream median (DirectRunner)
    firestore_writes_per_event: float = 0.9  # users/{id} writes after coalescing (docs/scaling.md)
    pubsub_bytes_per_event: float = 400.0  # data + attributes + 20 bytes of metadata
    sources: tuple[str, ...] = ("defaults: docs/benchmarks.md",)


@dataclass(frozen=True)
class Deployment:
    """What is deployed: the function's instance shape and the pipeline's workers (Terraform defaults)."""

    function_vcpu: float = 1.0
    function_memory_gib: float = 1.0
    min_instances: int = 1
    target_cpu_utilisation: float = 0.6  # Cloud Run scales out around 60 % CPU
    worker_vcpu: float = 2.0  # n1-standard-2
    worker_memory_gb: float = 7.5
    worker_disk_gb: float = 30.0
    worker_cpu_utilisation: float = 0.6
    dataflow_cpu_overhead: float = 3.0  # Dataflow's per-event CPU vs the DirectRunner's (docs/scaling.md)
    streaming_engine_bytes_per_event: float = 3000.0  # shuffle + state per event (docs/scaling.md)
    events_per_request: float = 1.0


def from_reports(reports: Path) -> Measured:
    """The measured figures from the benchmark reports under ``reports`` where they exist."""
    m, sources = Measured(), []
    serving = _read(reports / "serving.json")
    if serving and "recommend" in serving:
        m = replace(m, server_cpu_ms_per_request=float(serving["recommend"]["server_cpu_ms_per_request"]))
        sources.append(f"{reports / 'serving.json'}: server_cpu_ms_per_request")
    stream = _read(reports / "stream.json")
    if stream and "cpu_ms_per_event" in stream:
        m = replace(m, pipeline_cpu_ms_per_event=float(stream["cpu_ms_per_event"]["full"]["pipeline"]))
        sources.append(f"{reports / 'stream.json'}: cpu_ms_per_event.full.pipeline")
        if "firestore_writes_per_event" in stream:
            m = replace(m, firestore_writes_per_event=float(stream["firestore_writes_per_event"]))
            sources.append(f"{reports / 'stream.json'}: firestore_writes_per_event")
    m = replace(m, pubsub_bytes_per_event=event_bytes())
    return replace(m, sources=tuple(sources) or Measured().sources)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def event_bytes() -> float:
    """Billable Pub/Sub bytes of a typical view event as the publisher sends it."""
    from schemas.events import ProductEvent

    event = ProductEvent("e-0123456789abcdef", "view", "user-000123", "item-004567", 1_764_633_600_000,
                         session_id="s-89ab")
    attributes = event.pubsub_attributes()
    return float(len(event.to_pubsub_data()) + sum(len(k) + len(v) for k, v in attributes.items()) + 20)


def serving_month(rps: float, m: Measured, d: Deployment, always_on: bool) -> dict[str, float]:
    """USD per month of serving ``rps``: function compute, request fees, Firestore reads."""
    busy_vcpu_s = rps * SECONDS_PER_MONTH * m.server_cpu_ms_per_request / 1000 / d.target_cpu_utilisation
    if always_on:
        needed = math.ceil(busy_vcpu_s / SECONDS_PER_MONTH / d.function_vcpu)
        instance_s = max(d.min_instances, needed) * SECONDS_PER_MONTH
        compute = instance_s * (d.function_vcpu * prices.RUN_INSTANCE_CPU.value
                                + d.function_memory_gib * prices.RUN_INSTANCE_MEMORY.value)
        fees = 0.0
    else:
        instance_s = busy_vcpu_s / d.function_vcpu
        compute = instance_s * (d.function_vcpu * prices.RUN_REQUEST_CPU.value
                                + d.function_memory_gib * prices.RUN_REQUEST_MEMORY.value)
        fees = rps * SECONDS_PER_MONTH / 1e6 * prices.RUN_REQUESTS.value
    reads = (rps * SECONDS_PER_MONTH * m.firestore_reads_per_request
             + instance_s * m.background_reads_per_instance_s) * prices.FIRESTORE_READ.value
    return {"function_compute": compute, "function_requests": fees, "firestore_reads": reads}


def events_month(events_per_s: float, m: Measured, d: Deployment) -> dict[str, float]:
    """USD per month of ingesting ``events_per_s``: Pub/Sub, Dataflow workers and Firestore writes."""
    events = events_per_s * SECONDS_PER_MONTH
    pubsub = 2 * events * m.pubsub_bytes_per_event / 2**40 * prices.PUBSUB_THROUGHPUT.value  # in and out
    cpu_ms = m.pipeline_cpu_ms_per_event * d.dataflow_cpu_overhead
    busy = events_per_s * cpu_ms / 1000 / d.worker_cpu_utilisation
    workers = max(1, math.ceil(busy / d.worker_vcpu))  # a streaming job never scales to zero
    hours = SECONDS_PER_MONTH / 3600
    dataflow = workers * hours * (d.worker_vcpu * prices.DATAFLOW_VCPU.value
                                  + d.worker_memory_gb * prices.DATAFLOW_MEMORY.value
                                  + d.worker_disk_gb * prices.DATAFLOW_DISK.value)
    shuffled_gb = events * d.streaming_engine_bytes_per_event / 1e9
    return {"pubsub": pubsub, "dataflow_workers": dataflow,
            "dataflow_streaming_engine": shuffled_gb * prices.DATAFLOW_STREAMING_DATA.value,
            "firestore_writes": events * m.firestore_writes_per_event * prices.FIRESTORE_WRITE.value,
            "workers": float(workers)}


def personalize_month(rps: float) -> float:
    """Amazon Personalize's real-time price for ``rps`` all month (at least the 1 TPS minimum)."""
    tps_hours, cost, floor = max(rps, 1.0) * SECONDS_PER_MONTH / 3600, 0.0, 0.0
    for ceiling, price in prices.PERSONALIZE_TPS_HOUR_TIERS:
        cost += max(0.0, min(tps_hours, ceiling) - floor) * price
        floor = ceiling
    return cost


def scenario(rps: float, always_on: bool, m: Measured, d: Deployment) -> dict[str, Any]:
    """One traffic level under one scaling mode: per-million prices and the monthly total."""
    serving = serving_month(rps, m, d, always_on)
    events = events_month(rps * d.events_per_request, m, d)
    workers = events.pop("workers")
    requests_m = rps * SECONDS_PER_MONTH / 1e6
    events_m = requests_m * d.events_per_request
    return {"mode": "always_on" if always_on else "scale_to_zero", "requests_per_s": rps,
            "events_per_s": rps * d.events_per_request,
            "usd_per_million_recommendations": sum(serving.values()) / requests_m,
            "usd_per_million_events": sum(events.values()) / events_m if events_m else 0.0,
            "usd_per_month": sum(serving.values()) + sum(events.values()),
            "dataflow_workers": int(workers),
            "personalize_usd_per_million_recommendations": personalize_month(rps) / requests_m,
            "breakdown_usd_per_month": {k: round(v, 2) for k, v in {**serving, **events}.items()}}


def estimate(m: Measured, d: Deployment, rates: Sequence[float] = DEFAULT_RATES) -> dict[str, Any]:
    """Every scenario, the inputs behind them and the prices used."""
    scenarios = [scenario(r, always_on, m, d) for r in rates for always_on in (False, True)]
    return {"scenarios": scenarios,
            "personalize_usd_per_million_recommendations": {
                f"{r:g}": personalize_month(r) / (r * SECONDS_PER_MONTH / 1e6) for r in rates},
            "measured": asdict(m), "deployment": asdict(d),
            "prices": {name: asdict(p) for name, p in vars(prices).items() if isinstance(p, prices.Price)},
            "prices_as_of": prices.AS_OF}


def print_table(result: dict[str, Any]) -> None:
    """The scenarios side by side, with Personalize's price for the same traffic."""
    print(f"{'req/s':>7} {'mode':<14} {'$/M recs':>9} {'$/M events':>11} {'$/month':>10} "
          f"{'workers':>8} {'Personalize $/M':>16}")
    for s in result["scenarios"]:
        print(f"{s['requests_per_s']:>7g} {s['mode']:<14} {s['usd_per_million_recommendations']:>9.2f} "
              f"{s['usd_per_million_events']:>11.2f} {s['usd_per_month']:>10,.0f} {s['dataflow_workers']:>8} "
              f"{s['personalize_usd_per_million_recommendations']:>16.2f}")
    print(f"prices as of {result['prices_as_of']} (scripts/prices.py); inputs: "
          + "; ".join(result["measured"]["sources"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports" / "bench",
                        help="where the benchmark reports are (default reports/bench)")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                        help="requests per second, comma-separated")
    parser.add_argument("--events-per-request", type=float, default=Deployment.events_per_request)
    parser.add_argument("--min-instances", type=int, default=Deployment.min_instances)
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates takes numbers, got {args.rates!r}")
    if not rates or min(rates) <= 0 or args.events_per_request < 0 or args.min_instances < 0:
        parser.error("rates must be positive; events per request and min instances not negative")
    deployment = Deployment(events_per_request=args.events_per_request, min_instances=args.min_instances)
    result = estimate(from_reports(args.reports), deployment, rates)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
