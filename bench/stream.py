"""Streaming benchmark: freshness, throughput vs a pass-through pipeline, memory (``make bench-stream``).

Starts its own Pub/Sub and Firestore emulators, publishes a tiny trained model as ``models/current``
and, on DirectRunner, measures: a pass-through pipeline (read, parse, ack) working off a backlog of
``--events`` events; the full pipeline (:mod:`pipelines.streaming`) on a backlog of the same size,
users seeded with full histories as a restarted pipeline finds them; freshness (publish time to the
first poll that sees the event in ``users/{id}``) for views published at ``--rate`` for
``--duration`` seconds; the full pipeline's RSS over the run; the pass-through again afterwards, so
a change of machine load shows as a difference between the two pass-through rates.

Throughput is the steady-state rate of :mod:`testing.throughput` (20 % to 80 % of the backlog), for
both pipelines alike, because start-up and the first and last bundles are not what a running system
pays; ``ratio`` = full / mean of the two pass-through rates. Prints a table and writes
``reports/bench/stream.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import measure
from bench.passthrough import passthrough_progress
from pipelines.streaming.user_state import WRITE_INTERVAL_S
from schemas import names
from schemas.events import ProductEvent
from schemas.firestore import unpack_history
from scripts.processes import ManagedProcess, python_module
from testing import artifacts
from testing.stack import pipeline_env
from testing.throughput import cpu_ms_per_event, first_to_done_rate, steady_rate

REPORT = measure.REPORTS / "stream.json"
PASSTHROUGH_TOPIC = "bench-passthrough-events"
PASSTHROUGH_SUB = "bench-passthrough-events-sub"
# run through the module's import name so the DoFn is pickled by reference, not as __main__
PASSTHROUGH_CMD = (
    "import sys; from bench.passthrough import passthrough_main; passthrough_main(sys.argv[1:])")


# ----------------------------------------------------------------------------- events and measurement


@dataclass
class Workload:
    users: list[str]
    items: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    counter: int = 0

    def event(self, prefix: str, user: str | None = None) -> ProductEvent:
        self.counter += 1
        return ProductEvent(event_id=f"{prefix}-{self.counter}", event_type="view",
                            user_id=user or self.rng.choice(self.users), item_id=self.rng.choice(self.items),
                            timestamp=int(time.time() * 1000))


def seed_full_histories(client: Any, workload: Workload, history_length: int = 50) -> int:
    """Write every user's document with a full history of older views, as a pipeline restart
    finds them in steady state (the pipeline seeds its state from them); returns the sum of their
    ``event_count``. Without it the throughput phase would start with empty histories, i.e.
    smaller documents than a running system writes."""
    from pipelines.streaming.firestore_io import commit_in_batches
    from schemas.firestore import HistoryEntry, UserDoc

    start = int(time.time() * 1000) - 3_600_000
    coll = client.collection(names.USERS)
    writes = []
    for u, user in enumerate(workload.users):
        history = tuple(HistoryEntry(event_id=f"seed-{u}-{i}", item_id=workload.rng.choice(workload.items),
                                     event_type="view", timestamp=start + i) for i in range(history_length))
        doc = UserDoc(user_id=user, history=history, last_event_id=history[-1].event_id,
                      last_event_ts=history[-1].timestamp, updated_at=start, event_count=history_length)
        writes.append((coll.document(user), doc.to_document()))
    commit_in_batches(client, writes)
    return history_length * len(workload.users)


def publish_backlog(topic: str, events: list[ProductEvent]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.05))
    futures = [publisher.publish(topic, e.to_pubsub_data(), **e.pubsub_attributes()) for e in events]
    for f in futures:
        f.result(timeout=60)


def users_event_total(client: Any) -> int:
    """Sum of ``users/*.event_count``, by an aggregation query.

    Polled every 0.25 s while the full pipeline works off its backlog, so it must stay light: streaming
    the documents back took CPU from the pipeline it measures (docs/benchmarks.md, bench-stream).
    """
    result = client.collection(names.USERS).sum("event_count").get()
    value = result[0][0].value if result and result[0] else 0
    return int(value or 0)


def wait_for_count(client: Any, expected: int, timeout_s: float, poll_s: float = 0.25,
                   cpu: Any = None, base: int = 0) -> list[tuple[int, float]]:
    """Poll ``users/*`` until the event counts sum to ``base + expected``; the (count - base,
    time) samples from the first one with progress on (``cpu(count)`` is called at each)."""
    progress: list[tuple[int, float]] = []
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        total = users_event_total(client) - base
        if total > 0:
            progress.append((total, time.time()))
            if cpu is not None:
                cpu(total)
        if total >= expected:
            return progress
        time.sleep(poll_s)
    raise TimeoutError(f"users/* counted fewer than {expected} events after {timeout_s:.0f} s")


class FreshnessPoller(threading.Thread):
    """First time each published event id shows up in its user's document.

    Reads the documents of the users with events in flight in one ``get_all`` per round, because a
    Firestore listener delivered changes seconds after their commit (docs/benchmarks.md, bench-stream).
    """

    def __init__(self, client: Any, idle_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.client, self.idle_s = client, idle_s
        self.seen: dict[str, float] = {}
        self._pending: dict[str, str] = {}  # event id -> user id
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def watch(self, event_id: str, user_id: str) -> None:
        with self._lock:
            self._pending[event_id] = user_id

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def run(self) -> None:
        coll = self.client.collection(names.USERS)
        while not self._stop.is_set():
            time.sleep(self.idle_s)  # rounds at most every ~idle_s + one read: light on the emulator
            with self._lock:
                pending = dict(self._pending)
            if not pending:
                continue
            refs = [coll.document(u) for u in set(pending.values())]
            ids: dict[str, set[str]] = {}
            for snap in self.client.get_all(refs, field_paths=["last_event_id", "history"]):
                doc = snap.to_dict() or {}
                history = unpack_history(doc.get("history"))
                ids[snap.id] = {doc.get("last_event_id")} | {h.event_id for h in history}
            now = time.time()
            with self._lock:
                for event_id, user_id in pending.items():
                    if event_id in ids.get(user_id, ()):
                        self.seen[event_id] = now
                        self._pending.pop(event_id, None)

    def stop(self) -> None:
        self._stop.set()


def steady_publish(topic: str, workload: Workload, rate: float, duration_s: float,
                   poller: FreshnessPoller, users: dict[str, str] | None = None) -> dict[str, float]:
    """Publish one view every 1/rate s; return event id -> publish time (before the call) and
    fill ``users`` (event id -> user id)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1, max_latency=0.001))
    sent: dict[str, float] = {}
    futures = []
    start = time.time()
    n = int(rate * duration_s)
    for i in range(n):
        target = start + i / rate
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        event = workload.event("fresh")
        poller.watch(event.event_id, event.user_id)
        sent[event.event_id] = time.time()
        if users is not None:
            users[event.event_id] = event.user_id
        futures.append(publisher.publish(topic, event.to_pubsub_data(), **event.pubsub_attributes()))
    for f in futures:
        f.result(timeout=60)
    return sent


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60000,
                        help="backlog size for throughput (each pipeline): large enough for several read "
                             "bundles between the 20%% and 80%% marks of the steady rate")
    parser.add_argument("--rate", type=float, default=20.0, help="steady views/s for freshness")
    parser.add_argument("--duration", type=float, default=30.0, help="steady phase seconds (600: memory)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--model-dir", default=None,
                        help="tiny artefact's directory (default: the shared cache, testing.artifacts)")
    parser.add_argument("--retrain", action="store_true", help="train a new tiny artefact")
    parser.add_argument("--inference", choices=["bundle", "runinference"], default="bundle")
    parser.add_argument("--direct-pull-max-messages", type=int, default=None,
                        help="both pipelines' largest Pub/Sub read bundle (default: the pipeline's)")
    parser.add_argument("--pubsub-port", type=int, default=int(os.environ.get("BENCH_PUBSUB_PORT", 18495)))
    parser.add_argument("--firestore-port", type=int,
                        default=int(os.environ.get("BENCH_FIRESTORE_PORT", 18496)))
    parser.add_argument("--pipeline-args", default="",
                        help="extra flags for the full pipeline, e.g. '--user-write-interval-seconds 0'")
    parser.add_argument("--out", default=str(REPORT))
    args = parser.parse_args(argv)
    if args.duration * args.rate < 200:
        parser.error("--duration x --rate must give at least 200 freshness samples")
    report = run_bench(args)
    print_table(report)
    measure.write_report(report, args.out)
    print(f"\nwrote {args.out}")
    return 0


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from scripts import local_stack

    config = local_stack.StackConfig(pubsub_port=args.pubsub_port, firestore_port=args.firestore_port)
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    state = local_stack.start(config, state_dir=work / "stack")
    os.environ.update(config.client_env())
    try:
        return _bench(args, config, work, list(state.pids.values()))
    finally:
        local_stack.stop_state(state)


def _bench(args: argparse.Namespace, config: Any, work: Path, emulators: list[int]) -> dict[str, Any]:
    from google.cloud import firestore, pubsub_v1

    from pipelines.training import publish
    from pipelines.training.artifact import load_towers

    model_dir = Path(args.model_dir) if args.model_dir else artifacts.cache_dir(artifacts.TINY)
    artifact = None if args.retrain else artifacts.existing_artifact(model_dir)
    if artifact is None:
        print("training a tiny artefact ...", flush=True)
        artifact = artifacts.train_artifact(artifacts.TINY, model_dir).version_dir
    publish.publish_version(artifact, project=config.project)
    towers = load_towers(artifact)
    users = [u for u in towers.users_vocab() if u][: args.users]
    items = [i for i in towers.items_vocab() if i]
    workload = Workload(users=users, items=items)
    project = config.project
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    pt_topic = publisher.topic_path(project, PASSTHROUGH_TOPIC)
    pt_sub = subscriber.subscription_path(project, PASSTHROUGH_SUB)
    publisher.create_topic(name=pt_topic)
    subscriber.create_subscription(name=pt_sub, topic=pt_topic, ack_deadline_seconds=60)
    env = pipeline_env(config.pubsub_host, config.firestore_host, project)
    db = firestore.Client(project=project)

    # 1. pass-through baseline on a backlog
    pt_runs = [run_passthrough(pt_topic, pt_sub, workload, args.events, env, work / "passthrough-1.log",
                               emulators, args.direct_pull_max_messages)]

    # 2. full pipeline on the same-size backlog, users in steady state (full histories)
    base = seed_full_histories(db, workload)
    events_topic = publisher.topic_path(project, names.EVENTS_TOPIC)
    publish_backlog(events_topic, [workload.event("tp") for _ in range(args.events)])
    proc = ManagedProcess("pipeline", python_module(
        "pipelines.streaming", "--model-refresh-seconds", "5", "--inference", args.inference,
        *(["--direct-pull-max-messages", str(args.direct_pull_max_messages)]
          if args.direct_pull_max_messages else []),
        "--archive-dir", str(work / "archive"), *args.pipeline_args.split()),
        work / "pipeline.log", env).start()
    sampler = measure.RssSampler(proc.pid)
    sampler.start()
    poller = FreshnessPoller(db)
    try:
        cpu_marks: list[tuple[int, float, float]] = []
        full_progress = wait_for_count(
            db, args.events, timeout_s=600, base=base,
            cpu=lambda n: cpu_marks.append((n, measure.process_cpu_seconds(proc.pid),
                                               measure.group_cpu_seconds(emulators))))
        full_rate = steady_rate(full_progress, args.events)
        full_cpu = {"pipeline": cpu_ms_per_event([(n, c) for n, c, _ in cpu_marks], args.events),
                    "emulators": cpu_ms_per_event([(n, e) for n, _, e in cpu_marks], args.events)}
        # 3. freshness at a steady rate (also the memory run)
        poller.start()
        steady_start = sampler.samples[-1][0] if sampler.samples else 0.0
        sent_users: dict[str, str] = {}
        cpu0, wall0 = measure.process_cpu_seconds(proc.pid), time.time()
        sent = steady_publish(events_topic, workload, args.rate, args.duration, poller, sent_users)
        steady_cpu = (measure.process_cpu_seconds(proc.pid) - cpu0, time.time() - wall0)
        deadline = time.time() + 30
        while time.time() < deadline and poller.pending():
            time.sleep(0.2)
    finally:
        poller.stop()
        sampler.stop()
        proc.stop(timeout_s=60)
    # 5. pass-through again, interleaved after the full pipeline
    pt_runs.append(run_passthrough(pt_topic, pt_sub, workload, args.events, env, work / "passthrough-2.log",
                                   emulators, args.direct_pull_max_messages))
    pt_rate = float(np.mean([r["steady"] for r in pt_runs]))
    from pipelines.streaming.pipeline import StreamingConfig

    pull_default = StreamingConfig.direct_pull_max_messages
    pt_cpu = float(np.mean([r["cpu_pipeline"] + r["cpu_emulators"] for r in pt_runs]))
    lat = np.array([poller.seen[e] - t for e, t in sent.items() if e in poller.seen])
    missing = sum(1 for e in sent if e not in poller.seen)
    over = over_the_rate(sent, sent_users, poller.seen, WRITE_INTERVAL_S)
    lat_within = np.array([poller.seen[e] - t for e, t in sent.items() if e in poller.seen and e not in over])
    lat_over = np.array([poller.seen[e] - t for e, t in sent.items() if e in poller.seen and e in over])
    counters = pipeline_counters(work / "pipeline.log")
    total_events = args.events + len(sent)
    counted = users_event_total(db) - base
    return {
        "runner": "DirectRunner (BundleBased, streaming) + Pub/Sub and Firestore emulators",
        "inference": args.inference,
        "model_version": towers.version,
        "freshness_p50_s": round(float(np.percentile(lat, 50)), 4) if len(lat) else None,
        "freshness_p95_s": round(float(np.percentile(lat, 95)), 4) if len(lat) else None,
        "freshness_max_s": round(float(lat.max()), 4) if len(lat) else None,
        "freshness_samples": int(len(lat)),
        "freshness_missing": missing,
        "freshness_rate_per_s": args.rate,
        "freshness_p95_within_rate_s": _p(lat_within, 95),
        "freshness_p95_over_rate_s": _p(lat_over, 95),
        "freshness_over_rate_events": len(over),
        "freshness_split_method": f"over the rate: published less than {WRITE_INTERVAL_S} s after the "
                                  f"user's previous view was published or first seen in users/{{id}} "
                                  f"(the document was written less than the coalescing interval "
                                  f"before, so it may be written only when the interval is over); "
                                  f"within: all others",
        "pipeline_counters": counters,  # as the DirectRunner reports them at the drain (partial)
        "freshness_by_10s": freshness_timeline(sent, poller.seen),
        "events_per_s": round(full_rate, 1),
        "passthrough_events_per_s": round(pt_rate, 1),
        "ratio": round(full_rate / pt_rate, 3),
        "throughput_method": "steady state: events/s between 20% and 80% of the backlog done; "
                             "pass-through run before and after the full pipeline, mean of both",
        "passthrough_runs_events_per_s": [round(r["steady"], 1) for r in pt_runs],
        "events_per_s_first_to_done": round(first_to_done_rate(full_progress, args.events), 1),
        "passthrough_events_per_s_first_to_done": [round(r["first_to_done"], 1) for r in pt_runs],
        "cpu_ms_per_event": {
            "full": {k: round(v, 4) for k, v in full_cpu.items()},
            "passthrough": [{"pipeline": round(r["cpu_pipeline"], 4),
                             "emulators": round(r["cpu_emulators"], 4)} for r in pt_runs]},
        "steady_cpu_ms_per_event": round(1000 * steady_cpu[0] / max(len(sent), 1), 3),
        "steady_cpu_cores": round(steady_cpu[0] / steady_cpu[1], 3),
        "cpu_ratio": round(pt_cpu / (full_cpu["pipeline"] + full_cpu["emulators"]), 3),
        "cpu_method": "CPU s of the pipeline process and of both emulators' process groups between the "
                      "20% and 80% marks, per event; cpu_ratio = pass-through / full (a load-robust "
                      "companion of ratio: CPU time barely depends on what else runs)",
        "direct_pull_max_messages": args.direct_pull_max_messages or pull_default,
        "backlog_events": args.events,
        "pipeline_args": args.pipeline_args,
        "events_counted_in_firestore": counted,
        "events_published": total_events,
        "rss": measure.rss_summary(sampler.samples, warmup_s=steady_start),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(measure.load_average()[0], 2),
    }


def run_passthrough(topic: str, subscription: str, workload: Workload, n: int, env: dict[str, str],
                    log: Path, emulators: list[int], pull_max: int | None = None) -> dict[str, float]:
    """Publish a backlog of ``n`` views, let the pass-through pipeline work it off; its rates
    and CPU ms per event (its own, as it printed them; the emulators', sampled every 0.05 s)."""
    publish_backlog(topic, [workload.event("pt") for _ in range(n)])
    extra = ["--direct-pull-max-messages", str(pull_max)] if pull_max else []
    proc = ManagedProcess("passthrough", [sys.executable, "-c", PASSTHROUGH_CMD, "--subscription",
                                          subscription, *extra], log, env).start()
    emulator_cpu: list[tuple[float, float]] = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            emulator_cpu.append((time.time(), measure.group_cpu_seconds(emulators)))
            progress = passthrough_progress(log)
            if progress and progress[-1][0] >= n:
                break
            if not proc.alive():
                raise RuntimeError(f"pass-through pipeline exited; see {log}")
            time.sleep(0.05)
        else:
            raise TimeoutError("pass-through pipeline did not finish the backlog")
    finally:
        proc.stop(timeout_s=60)
    with_cpu = passthrough_progress(log, with_cpu=True)
    times, emu = np.array([t for t, _ in emulator_cpu]), np.array([c for _, c in emulator_cpu])
    return {"steady": steady_rate(progress, n), "first_to_done": first_to_done_rate(progress, n),
            "cpu_pipeline": cpu_ms_per_event([(m, c) for m, _, c in with_cpu], n),
            "cpu_emulators": cpu_ms_per_event(
                [(m, float(np.interp(t, times, emu))) for m, t, _ in with_cpu], n)}


def _p(values: Any, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if len(values) else None


def over_the_rate(sent: dict[str, float], users: dict[str, str], seen: dict[str, float],
                  interval_s: float) -> set[str]:
    """Events published less than ``interval_s`` after the same user's previous event was
    published or became visible (about when its document was last written)."""
    last: dict[str, float] = {}
    over = set()
    for event_id, t in sorted(sent.items(), key=lambda kv: kv[1]):
        user = users[event_id]
        if user in last and t - last[user] < interval_s:
            over.add(event_id)
        last[user] = max(last.get(user, 0.0), t, seen.get(event_id, t))
    return over


def pipeline_counters(log: Path) -> dict[str, int]:
    """The counters the pipeline logged when it drained (``pipelines.direct_runner.log_counters``)."""
    import json

    for line in reversed(log.read_text(errors="replace").splitlines()):
        if " counters {" in line:
            return json.loads(line.split(" counters ", 1)[1])
    return {}


def freshness_timeline(sent: dict[str, float], seen: dict[str, float], bucket_s: float = 10.0) -> list:
    """[seconds since start, n, p50, max] per ``bucket_s`` of publish time: shows spikes."""
    if not sent:
        return []
    t0 = min(sent.values())
    buckets: dict[int, list[float]] = {}
    for event_id, t in sent.items():
        if event_id in seen:
            buckets.setdefault(int((t - t0) // bucket_s), []).append(seen[event_id] - t)
    return [[int(b * bucket_s), len(v), round(float(np.median(v)), 3), round(max(v), 3)]
            for b, v in sorted(buckets.items())]


def print_table(r: dict[str, Any]) -> None:
    rows = [
        ("freshness p50 (publish -> users/{id})", f"{r['freshness_p50_s']} s", "aim 0.3 s"),
        ("freshness p95", f"{r['freshness_p95_s']} s", "target < 0.5 s"),
        ("  users within 1 write/s / over it", f"{r['freshness_p95_within_rate_s']} s / "
                                                f"{r['freshness_p95_over_rate_s']} s",
         f"{r['freshness_over_rate_events']} events over"),
        ("CPU ms per event (pipeline / emulators)",
         f"{r['cpu_ms_per_event']['full']['pipeline']} / {r['cpu_ms_per_event']['full']['emulators']}",
         "backlog"),
        ("pipeline CPU at the steady rate", f"{r['steady_cpu_ms_per_event']} ms/event",
         f"{r['steady_cpu_cores']} cores (idle polling included)"),
        ("freshness samples / missing", f"{r['freshness_samples']} / {r['freshness_missing']}", ">= 200 / 0"),
        ("full pipeline throughput (steady)", f"{r['events_per_s']} ev/s",
         f"{r['backlog_events']}-event backlog"),
        ("pass-through throughput (same run)", f"{r['passthrough_events_per_s']} ev/s",
         f"mean of {r['passthrough_runs_events_per_s']}"),
        ("ratio full / pass-through", f"{r['ratio']}", "target >= 0.5"),
        ("events counted / published",
         f"{r['events_counted_in_firestore']} / {r['events_published']}", "equal"),
        ("RSS first / max / last", f"{r['rss'].get('first_mb')} / {r['rss'].get('max_mb')} / "
                                   f"{r['rss'].get('last_mb')} MB", ""),
        ("RSS slope in steady phase", f"{r['rss'].get('steady_slope_mb_per_min')} MB/min", "~0 = flat"),
    ]
    measure.print_rows(f"Streaming benchmark ({r['runner']}, inference={r['inference']}, "
                       f"load {r['load_avg_1m']})", rows)


if __name__ == "__main__":
    sys.exit(main())
