"""Crash benchmark: SIGKILL the streaming pipeline at random moments, restart, count (``make bench-crash``).

Starts its own Pub/Sub and Firestore emulators and runs :mod:`testing.crash` for a paced stream
(``--paced-events`` at ``--rate``/s), a burst (``--burst-events`` published at once while the
pipeline runs) and a backlog (``--backlog-events`` published before it starts), ``--kills`` kills
each, over ``--users`` users with history length ``--history-length`` (short, so redelivered
events come back older than a full history). Burst and backlog are read in bundles of
``--batch-pull-max`` and killed 0-0.5 s after the run's first counts (0-1.5 s for the stream). Per scenario:
events lost (published, not counted in ``users/*.event_count``), double-counted, users whose
history differs from the newest published events. Then (``--hot-user-seconds`` > 0) one user at
``--hot-user-rate`` events/s (:mod:`testing.hot_user`): writes of its document per second, every
event counted. Prints a table and writes ``reports/bench/crash.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import measure
from testing import artifacts, crash
from testing.hot_user import run_hot_user

REPORT = measure.REPORTS / "crash.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(crash.KINDS), help="comma-separated subset")
    parser.add_argument("--paced-events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=50.0, help="paced events per second")
    parser.add_argument("--burst-events", type=int, default=1500)
    parser.add_argument("--backlog-events", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--batch-pull-max", type=int, default=500,
                        help="burst and backlog: the pipeline's read bundle, so a kill can land mid-way")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--history-length", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hot-user-seconds", type=float, default=30.0, help="0: skip the hot-user run")
    parser.add_argument("--hot-user-rate", type=float, default=200.0)
    parser.add_argument("--pubsub-port", type=int, default=int(os.environ.get("BENCH_PUBSUB_PORT", 18595)))
    parser.add_argument("--firestore-port", type=int,
                        default=int(os.environ.get("BENCH_FIRESTORE_PORT", 18596)))
    parser.add_argument("--out", default=str(REPORT))
    args = parser.parse_args(argv)
    report = run_bench(args)
    print_table(report)
    measure.write_report(report, args.out)
    print(f"\nwrote {args.out}")
    bad = sum(r["lost"] + r["doubled"] + r["histories_differing"] for r in report["scenarios"])
    return 1 if bad else 0


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from google.cloud import firestore

    from pipelines.training.artifact import load_towers
    from scripts import local_stack

    config = local_stack.StackConfig(pubsub_port=args.pubsub_port, firestore_port=args.firestore_port)
    work = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    state = local_stack.start(config, state_dir=work / "stack")
    os.environ.update(config.client_env())
    load_before = measure.load_average()
    try:
        artifact = artifacts.tiny_artifact(seed=0)
        towers = load_towers(artifact)
        vocab = [u for u in towers.users_vocab() if u]
        items = [i for i in towers.items_vocab() if i]
        db = firestore.Client(project=config.project)
        sizes = {"paced": args.paced_events, "burst": args.burst_events, "backlog": args.backlog_events}
        scenarios = []
        for n, kind in enumerate(k for k in args.kinds.split(",") if k):
            users = vocab[n * args.users:(n + 1) * args.users]  # fresh users per scenario
            scenario = crash.Scenario(kind, sizes[kind], args.kills, users, items, rate=args.rate,
                                      history_length=args.history_length, seed=args.seed + n,
                                      pull_max=None if kind == "paced" else args.batch_pull_max)
            stack = crash.CrashStack(config, work / kind, str(artifact), args.history_length)
            print(f"{kind}: {scenario.events} events, {args.kills} kills ...", flush=True)
            result = crash.run_scenario(scenario, stack, db)
            print(f"  {result}", flush=True)
            scenarios.append(result)
        hot = None
        if args.hot_user_seconds > 0:
            stack = crash.CrashStack(config, work / "hot", str(artifact), 50)
            print(f"hot user: {args.hot_user_rate:.0f}/s for {args.hot_user_seconds:.0f} s ...", flush=True)
            hot = run_hot_user(stack, db, vocab[-1], items[0], args.hot_user_rate, args.hot_user_seconds)
    finally:
        local_stack.stop_state(state)
    return {
        "runner": "DirectRunner + Pub/Sub and Firestore emulators; kill -9 of the pipeline's process group",
        "ack_deadline_s": crash.ACK_DEADLINE_S, "history_length": args.history_length,
        "users_per_scenario": args.users, "scenarios": scenarios, "hot_user": hot,
        "totals": {k: sum(r[k] for r in scenarios) for k in ("published", "lost", "doubled", "kills")},
        "cpu_count": os.cpu_count(), "load_avg_1m_before": round(load_before[0], 2),
        "load_avg_1m": round(measure.load_average()[0], 2),
    }


def print_table(r: dict[str, Any]) -> None:
    rows = [(f"{s['kind']} ({s['published']} events, {s['kills']} kills at {s['kill_at_s']} s)",
             f"lost {s['lost']}, doubled {s['doubled']}, histories differing {s['histories_differing']}",
             f"{s['runs']} runs, {s['seconds']} s") for s in r["scenarios"]]
    hot = r.get("hot_user")
    if hot:
        rows.append((f"hot user {hot['rate_per_s']:.0f}/s x {hot['seconds']:.0f} s",
                     f"{hot['writes']} writes ({hot['writes_per_s']}/s, min gap {hot['min_gap_s']} s)",
                     f"counted {hot['counted']} / {hot['published']}"))
    measure.print_rows(f"Crash benchmark (load {r['load_avg_1m_before']} -> {r['load_avg_1m']})", rows)


if __name__ == "__main__":
    sys.exit(main())
