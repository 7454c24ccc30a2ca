"""Publishing benchmark: synthetic events through the Pub/Sub emulator, default vs tuned batching.

    python -m bench.publish                 # 20,000 events, own emulator on a free port
    python -m bench.publish --events 5000 --emulator 127.0.0.1:8085   # reuse a running one

Publishes the same events four times per repeat, each run to a fresh topic: with the client's
default batch settings and with the tuned ones given by the flags, each end to end (validate,
encode, publish: what ``publish_events`` does) and publish-only (messages encoded beforehand), then
pulls every message back and counts the distinct event ids. The batching settings are what the
publisher ships with, so this shows what they buy and that nothing is lost with them. Prints a
table and writes ``reports/bench/publish.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.types import BatchSettings

from bench import measure
from schemas import names
from schemas.events import ProductEvent, validate_event
from scripts import local_stack
from scripts.publish_events import (
    OutMessage,
    PublishSummary,
    event_message,
    make_publisher,
    publish_events,
    publish_messages,
)

REPORT = measure.REPORTS / "publish.json"
TUNED = BatchSettings(max_bytes=4 * 1000 * 1000, max_latency=0.05, max_messages=1000)


@dataclass
class RunResult:
    """One publishing run and its verification."""

    name: str
    batch_settings: dict[str, Any]
    events: int
    published: int
    failed: int
    rejected: int
    seconds: float
    events_per_s: float
    verified: int
    missing: int
    unexpected: int
    pull_seconds: float

    @classmethod
    def of(cls, name: str, settings: BatchSettings, n: int, summary: PublishSummary,
           verified: int, missing: int, unexpected: int, pull_seconds: float) -> RunResult:
        return cls(name=name, batch_settings=settings._asdict(), events=n,
                   published=summary.published, failed=summary.failed, rejected=summary.rejected,
                   seconds=round(summary.seconds, 3), events_per_s=round(summary.events_per_s, 1),
                   verified=verified, missing=missing, unexpected=unexpected,
                   pull_seconds=round(pull_seconds, 3))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((local_stack.HOST, 0))
        return s.getsockname()[1]


@contextmanager
def pubsub_emulator(reuse: str | None, project: str) -> Iterator[str]:
    """Yield the emulator's host:port: ``reuse`` if given, else one started (and stopped) here."""
    if reuse:
        if not local_stack.emulator_healthy(reuse):
            raise local_stack.StackError(f"no healthy Pub/Sub emulator at {reuse}")
        yield reuse
        return
    config = local_stack.StackConfig(project=project, pubsub_port=free_port())
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as state_dir:
        print(f"starting the Pub/Sub emulator on {config.pubsub_host} ...", file=sys.stderr)
        pid = local_stack.start_emulator("pubsub", config, Path(state_dir))
        try:
            yield config.pubsub_host
        finally:
            local_stack.stop_state(local_stack.StackState(config=config, pids={"pubsub": pid}))


def synthetic_events(n: int, seed: int) -> list[ProductEvent]:
    """The first ``n`` events (by time) of a synthetic data set large enough to hold them."""
    from pipelines.data import generate_synthetic

    users = max(10, n // 35)
    while True:
        events = generate_synthetic(n_users=users, n_items=1000, mean_events_per_user=40, seed=seed).events
        if len(events) >= n:
            return list(events[:n])
        users = int(users * 1.5) + 1


@contextmanager
def fresh_topic(project: str) -> Iterator[tuple[str, str]]:
    """A new topic with a subscription (so nothing published is lost); deleted afterwards."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    suffix = uuid.uuid4().hex[:8]
    topic = publisher.topic_path(project, f"bench-publish-{suffix}")
    sub = subscriber.subscription_path(project, f"bench-publish-{suffix}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=120)
    try:
        yield topic, sub
    finally:
        subscriber.delete_subscription(subscription=sub)
        publisher.delete_topic(topic=topic)
        subscriber.close()


def pull_event_ids(subscription: str, expected: int, timeout_s: float = 120.0) -> list[str]:
    """Pull and ack until ``expected`` messages arrived or two pulls come back empty."""
    subscriber = pubsub_v1.SubscriberClient()
    ids: list[str] = []
    empty = 0
    deadline = time.monotonic() + timeout_s
    try:
        while len(ids) < expected and empty < 2 and time.monotonic() < deadline:
            resp = subscriber.pull(subscription=subscription, max_messages=1000, timeout=10)
            if not resp.received_messages:
                empty += 1
                continue
            empty = 0
            ids.extend(m.message.attributes.get("event_id", "") for m in resp.received_messages)
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[m.ack_id for m in resp.received_messages])
    finally:
        subscriber.close()
    return ids


def run_once(name: str, events: Sequence[ProductEvent], settings: BatchSettings, project: str,
             progress: bool, prepared: Sequence[OutMessage] | None = None) -> RunResult:
    """Publish ``events`` to a fresh topic with ``settings`` and verify what arrived.

    With ``prepared`` (the same events, already validated and encoded) only the client's
    publishing is measured.
    """
    with fresh_topic(project) as (topic, sub):
        publisher = make_publisher(settings)
        try:
            if prepared is None:
                summary = publish_events(events, topic, publisher=publisher, progress=progress,
                                         total=len(events), keep_ids=False)
            else:
                summary = publish_messages(prepared, topic, publisher=publisher, progress=progress,
                                           total=len(prepared), keep_ids=False)
        finally:
            publisher.stop()
        start = time.monotonic()
        received = pull_event_ids(sub, expected=summary.published)
        pull_seconds = time.monotonic() - start
    expected = {e.event_id for e in events}
    distinct = set(received)
    return RunResult.of(name, settings, len(events), summary, verified=len(distinct & expected),
                        missing=len(expected - distinct), unexpected=len(distinct - expected),
                        pull_seconds=pull_seconds)


def median_run(runs: list[RunResult]) -> RunResult:
    """The run with the median rate (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r.events_per_s)
    return ordered[(len(ordered) - 1) // 2]


def per_event_costs(events: Sequence[ProductEvent]) -> dict[str, float]:
    """Microseconds per event spent validating and Avro-JSON encoding (client CPU, no network)."""
    start = time.perf_counter()
    validated = [validate_event(e.to_dict()) for e in events]
    mid = time.perf_counter()
    for e in validated:
        e.to_pubsub_data()
    end = time.perf_counter()
    n = max(1, len(events))
    return {"validate_us": round((mid - start) / n * 1e6, 1), "encode_us": round((end - mid) / n * 1e6, 1)}


def format_table(results: list[RunResult]) -> str:
    head = (f"{'run':<22} {'max_msgs':>8} {'max_bytes':>10} {'latency':>8} {'events':>7} {'failed':>6} "
            f"{'seconds':>8} {'events/s':>9} {'verified':>9} {'missing':>7}")
    rows = [head, "-" * len(head)]
    for r in results:
        b = r.batch_settings
        rows.append(f"{r.name:<22} {b['max_messages']:>8} {b['max_bytes']:>10} {b['max_latency']:>8.3f} "
                     f"{r.events:>7} {r.failed:>6} {r.seconds:>8.2f} {r.events_per_s:>9,.0f} "
                     f"{r.verified:>9} {r.missing:>7}")
    return "\n".join(rows)


def build_report(results: dict[str, RunResult], costs: dict[str, float], emulator: str,
                 own: bool) -> dict[str, Any]:
    """The JSON report: headline figures are the tuned end-to-end run (validate, encode, publish)."""
    baseline, tuned = results["default"], results["tuned"]
    raw_default, raw_tuned = results["default publish-only"], results["tuned publish-only"]
    return {
        "events": tuned.events, "seconds": tuned.seconds, "events_per_s": tuned.events_per_s,
        "rejected": tuned.rejected, "failed": tuned.failed, "verified": tuned.verified,
        "batch_settings": tuned.batch_settings,
        "baseline": asdict(baseline),
        "tuned": asdict(tuned),
        "publish_only": {"default": asdict(raw_default), "tuned": asdict(raw_tuned)},
        "speedup_vs_default_batching": _ratio(tuned, baseline),
        "publish_only_speedup_vs_default_batching": _ratio(raw_tuned, raw_default),
        "client_cpu_per_event_us": costs,
        "emulator": {"host": emulator, "started_by_bench": own},
        "machine": measure.machine_info("google-cloud-pubsub"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _ratio(a: RunResult, b: RunResult) -> float | None:
    return round(a.events_per_s / b.events_per_s, 2) if b.events_per_s else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--emulator", default=os.environ.get("PUBSUB_EMULATOR_HOST"),
                   help="reuse this running emulator (host:port); default: start one on a free port")
    p.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", names.DEFAULT_PROJECT))
    p.add_argument("--max-messages", type=int, default=TUNED.max_messages)
    p.add_argument("--max-bytes", type=int, default=TUNED.max_bytes)
    p.add_argument("--max-latency", type=float, default=TUNED.max_latency)
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported")
    p.add_argument("--output", type=Path, default=REPORT)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    tuned = BatchSettings(max_bytes=args.max_bytes, max_latency=args.max_latency,
                          max_messages=args.max_messages)

    events = synthetic_events(args.events, args.seed)
    costs = per_event_costs(events)
    prepared = [event_message(e) for e in events]
    runs = [("default", BatchSettings(), None), ("tuned", tuned, None),
            ("default publish-only", BatchSettings(), prepared), ("tuned publish-only", tuned, prepared)]
    all_runs: dict[str, list[RunResult]] = {name: [] for name, _, _ in runs}
    try:
        with pubsub_emulator(args.emulator, args.project) as host:
            os.environ["PUBSUB_EMULATOR_HOST"] = host
            # Warm-up (channel, imports) so that no measured run pays for it.
            run_once("warm-up", events[:500], tuned, args.project, progress=False)
            for _ in range(args.repeats):  # interleaved, so that load changes hit every setting alike
                for name, settings, prep in runs:
                    all_runs[name].append(run_once(name, events, settings, args.project,
                                                   not args.no_progress, prep))
    except local_stack.StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {name: median_run(rs) for name, rs in all_runs.items()}
    report = build_report(results, costs, host, own=not args.emulator)
    report["repeats"] = args.repeats
    report["all_runs_events_per_s"] = {name: [r.events_per_s for r in rs] for name, rs in all_runs.items()}
    measure.write_report(report, args.output)
    print(f"median of {args.repeats} interleaved runs per setting, {len(events):,} events each")
    print(format_table(list(results.values())))
    print(f"\nclient CPU per event: validate {costs['validate_us']} us, "
          f"Avro-JSON encode {costs['encode_us']} us")
    print(f"tuned vs default batching: x{report['speedup_vs_default_batching']} end to end, "
          f"x{report['publish_only_speedup_vs_default_batching']} publish-only")
    print(f"report written to {args.output}")
    ok = all(r.failed == 0 and r.missing == 0 and r.unexpected == 0
             for rs in all_runs.values() for r in rs)
    if not ok:
        print("error: some events failed or did not arrive", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
