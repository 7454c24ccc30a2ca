"""The main job end to end, locally: emulators, data, model, pipeline, functions, live stream.

    make demo                              # synthetic catalogue and history
    make demo DEMO_ARGS="--data PATH"      # a user's files (MovieLens 100K / latest-small,
                                           # `user item item ...` lines, events CSV/JSONL)
    python -m scripts.demo --short         # a quick version (the end-to-end test runs it)

Steps (each prints progress; Ctrl-C stops everything it started):
 1. start the Pub/Sub and Firestore emulators (fresh, on the demo's own ports);
 2. build the data and split it into history (for training) and a live stream;
 3. evaluate the two-tower against most-popular on the history (a short quality table);
 4. train the initial model, publish it to Firestore, seed users from their history;
 5. start the streaming pipeline (DirectRunner) and the recommend and ingest functions
    (functions-framework, production serving settings from functions/recommend/serving.env);
 6. replay the live stream at a steady rate through the ingest function and Pub/Sub, with
    duplicates and invalid events, while measuring freshness with probe events; show a few
    users' recommendations before and after their new views; add a new catalogue item and
    show it recommended to matching users; measure serving latency under load;
 7. fine-tune (warm start) on the events the pipeline archived; show the pipeline and the
    function switching to the new version without a restart;
 8. stop everything; write reports/demo/summary.json and reports/<timestamp>/report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from schemas import names
from schemas.catalog import CatalogItem
from schemas.events import ProductEvent
from schemas.firestore import UserDoc
from scripts import local_stack
from scripts.processes import ROOT, ManagedProcess, functions_framework, python_module, read_env_file

SERVING_ENV = ROOT / "functions" / "recommend" / "serving.env"


@dataclass
class DemoConfig:
    """Everything the demo can be told; ``--short`` shrinks it for the test."""

    data: str = "synthetic"
    users: int = 1000
    items: int = 600
    seed: int = 7
    live_events: int = 1500
    rate: float = 100.0  # events/s of the live replay
    invalid_fraction: float = 0.04
    duplicate_fraction: float = 0.03
    epochs: int = 4
    probes: int = 30
    load_seconds: float = 8.0
    load_concurrency: int = 8
    showcase_users: int = 3
    pubsub_port: int = 8095
    firestore_port: int = 8096
    recommend_port: int = 8091
    ingest_port: int = 8092
    out_dir: Path = ROOT / "reports" / "demo"
    work_dir: Path = ROOT / ".local" / "demo"
    reports_dir: Path = ROOT / "reports"
    timeout_s: float = 180.0
    short: bool = False

    def shortened(self) -> DemoConfig:
        return DemoConfig(**{**asdict(self), "users": 300, "items": 200, "live_events": 300,
                             "rate": 60.0, "epochs": 2, "probes": 8, "load_seconds": 3.0,
                             "showcase_users": 2, "short": True})


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


# ----------------------------------------------------------------------------- output

def say(text: str = "") -> None:
    print(text, flush=True)


def status_line(text: str) -> None:
    """A live status line on a terminal; nothing when the output goes to a file."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text}   ")
        sys.stderr.flush()


def end_status_line() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def step(n: int, title: str) -> None:
    say(f"\n\033[1m[{n}/8] {title}\033[0m")


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


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


# ----------------------------------------------------------------------------- data

@dataclass
class DemoData:
    data_dir: Path
    items: list[CatalogItem]
    history: list[ProductEvent]
    live: list[ProductEvent]


def build_data(cfg: DemoConfig) -> DemoData:
    """Load or generate the data; the newest ``live_events`` become the live stream."""
    from pipelines.data import generate_synthetic, load_dataset, write_events_jsonl

    now_ms = int(time.time() * 1000)
    if cfg.data == "synthetic":
        ds = generate_synthetic(n_users=cfg.users, n_items=cfg.items, seed=cfg.seed,
                                start_ms=now_ms - 30 * 24 * 3600 * 1000)
    else:
        ds = load_dataset(cfg.data)
    events = sorted(ds.events, key=lambda e: (e.timestamp, e.event_id))
    n_live = min(cfg.live_events, len(events) // 5)
    history, live = events[:-n_live], events[-n_live:]
    data_dir = cfg.work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_events_jsonl(history, data_dir / "events.jsonl")
    with open(data_dir / "items.jsonl", "w", encoding="utf-8") as f:
        for item in ds.items:
            f.write(json.dumps(item.to_dict()) + "\n")
    return DemoData(data_dir=data_dir, items=list(ds.items), history=history, live=live)


def restamp(event: ProductEvent, ts: int, suffix: str = "") -> ProductEvent:
    """The event as if it happened now (the stream is replayed live)."""
    return ProductEvent(**{**event.to_dict(), "timestamp": ts,
                           "event_id": event.event_id + suffix})


def invalid_payloads(rng: random.Random, n: int) -> list[tuple[bytes, str]]:
    """Malformed messages of several kinds, each with the field we expect to be blamed."""
    kinds = [
        (b'{"event_id": "bad-1", "event_type": "teleport", "user_id": "u", "item_id": "i", '
         b'"timestamp": 1700000000000}', "event_type"),
        (b'{"event_id": "bad-2", "event_type": "view", "item_id": "i", '
         b'"timestamp": 1700000000000}', "user_id"),
        (b"\xff\xfenot utf-8", "payload"),
        (b"{not json", "payload"),
        (b'{"event_id": "bad-3", "event_type": "view", "user_id": "u", "item_id": "i", '
         b'"timestamp": "yesterday"}', "timestamp"),
    ]
    return [kinds[rng.randrange(len(kinds))] for _ in range(n)]


# ----------------------------------------------------------------------------- clients

class RecommendClient:
    """The recommend function over HTTP (one session per thread)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def recommend(self, user_id: str, k: int = 10, **params: Any) -> dict[str, Any]:
        resp = self.session.get(f"{self.base_url}/recommendations",
                                params={"user_id": user_id, "k": k, **params}, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def health(self) -> dict[str, Any]:
        resp = self.session.get(f"{self.base_url}/healthz", timeout=10)
        return resp.json()


class UserReader:
    """Reads users/{id} from the Firestore emulator."""

    def __init__(self, project: str) -> None:
        from google.cloud import firestore

        self.client = firestore.Client(project=project)

    def get(self, user_id: str) -> UserDoc | None:
        snap = self.client.collection(names.USERS).document(user_id).get()
        return UserDoc.from_document(snap.to_dict()) if snap.exists else None

    def total_events(self) -> int:
        return sum(int((s.to_dict() or {}).get("event_count") or 0)
                   for s in self.client.collection(names.USERS).select(["event_count"]).stream())

    def current_version(self) -> str | None:
        snap = self.client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).get()
        return snap.to_dict()["version"] if snap.exists else None


# ----------------------------------------------------------------------------- the run

@dataclass
class Figures:
    """Everything measured, written to summary.json."""

    config: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    ingest_reject_reasons: dict[str, int] = field(default_factory=dict)
    freshness_s: list[float] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    serving: dict[str, Any] = field(default_factory=dict)
    serving_latencies_ms: list[float] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    showcase: list[dict[str, Any]] = field(default_factory=list)
    new_item: dict[str, Any] = field(default_factory=dict)
    hot_reload: dict[str, Any] = field(default_factory=dict)


class Demo:
    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.fig = Figures(config={k: str(v) if isinstance(v, Path) else v
                                   for k, v in asdict(cfg).items()})
        self.stack = local_stack.StackConfig(pubsub_port=cfg.pubsub_port,
                                             firestore_port=cfg.firestore_port)
        self.rng = random.Random(cfg.seed)
        self.exits = ExitStack()
        self.env = self.stack.client_env()
        self.logs = cfg.work_dir / "logs"

    # -- 1
    def start_stack(self) -> None:
        step(1, "Local GCP stack: Pub/Sub and Firestore emulators")
        state_dir = self.cfg.work_dir / "stack"
        local_stack.stop(state_dir)  # a previous run that was killed hard
        t0 = time.monotonic()
        state = local_stack.start(self.stack, state_dir=state_dir)
        self.exits.callback(local_stack.stop_state, state)
        os.environ.update(self.env)
        self.fig.timings_s["emulators_start"] = round(time.monotonic() - t0, 2)
        say(f"  Pub/Sub {self.stack.pubsub_host}, Firestore {self.stack.firestore_host} "
            f"({self.fig.timings_s['emulators_start']} s)")

    # -- 2
    def build_data(self) -> DemoData:
        step(2, f"Data: {self.cfg.data}")
        data = build_data(self.cfg)
        users = {e.user_id for e in data.history}
        say(f"  {len(data.items)} items, {len(users)} users, {len(data.history)} history events "
            f"for training, {len(data.live)} held back for the live stream")
        self.fig.events["history"] = len(data.history)
        return data

    # -- 3
    def evaluate(self, data: DemoData) -> None:
        step(3, "Offline quality on the history (temporal split): two-tower vs most-popular")
        out = self.cfg.work_dir / "quality"
        args = ["--data", str(data.data_dir), "--models", "two_tower,popularity",
                "--out-dir", str(out)]
        if self.cfg.short:
            args.append("--quick")
        self._run_step("quality", python_module("scripts.bench_quality", *args))
        report = json.loads(next(p for p in out.glob("quality-*.json")
                                 if not p.name.endswith(".details.json")).read_text())
        self.fig.quality = report
        say(f"  {'model':<13} {'Recall@10':>9} {'Recall@20':>9} {'NDCG@10':>8} {'NDCG@20':>8} "
            f"{'train s':>8}")
        for name, m in report["models"].items():
            say(f"  {name:<13} {m['recall@10']:>9.4f} {m['recall@20']:>9.4f} {m['ndcg@10']:>8.4f} "
                f"{m['ndcg@20']:>8.4f} {m.get('train_seconds') or 0:>8.1f}")

    # -- 4
    def train_and_publish(self, data: DemoData) -> str:
        step(4, "Train the two-tower model, publish it to Firestore, seed users")
        models = self.cfg.work_dir / "models"
        self._run_step("train", python_module(
            "pipelines.training", "--data", str(data.data_dir), "--model-dir", str(models),
            "--epochs", str(self.cfg.epochs), "--publish"))
        version = UserReader(self.stack.project).current_version()
        if version is None:
            raise DemoError("training finished but models/current is not set")
        self._run_step("seed_users", python_module(
            "scripts.seed_users", "--events", str(data.data_dir / "events.jsonl")))
        self.fig.models["initial"] = {"version": version,
                                      "train_seconds": self.fig.timings_s["train"]}
        say(f"  model {version} trained in {self.fig.timings_s['train']:.1f} s and published")
        return version

    # -- 5
    def start_services(self, model_dir: Path) -> tuple[RecommendClient, str]:
        step(5, "Start the streaming pipeline (DirectRunner) and the two functions")
        pipeline = ManagedProcess("pipeline", python_module(
            "pipelines.streaming.pipeline", "--model-dir", str(model_dir),
            "--archive-dir", str(self.cfg.work_dir / "archive"), "--archive-window-seconds", "5",
            "--model-refresh-seconds", "2", "--trending-window-seconds", "600",
            "--trending-period-seconds", "60"), self.logs / "pipeline.log", env=self.env)
        serving = read_env_file(SERVING_ENV)
        recommend = ManagedProcess("recommend", functions_framework(
            "recommend", "functions/recommend/main.py", self.cfg.recommend_port),
            self.logs / "recommend.log", env={**self.env, **serving, "REFRESH_SECONDS": "1"})
        ingest = ManagedProcess("ingest", functions_framework(
            "ingest", "functions/ingest/main.py", self.cfg.ingest_port),
            self.logs / "ingest.log", env={**self.env, "EVENTS_TOPIC": names.EVENTS_TOPIC})
        for proc in (pipeline, recommend, ingest):
            proc.start()
            self.exits.callback(proc.stop)
        base = f"http://127.0.0.1:{self.cfg.recommend_port}"
        cold = recommend.wait_http(f"{base}/healthz", self.cfg.timeout_s)
        ingest.wait_http(f"http://127.0.0.1:{self.cfg.ingest_port}/healthz", self.cfg.timeout_s)
        self.fig.serving["cold_start_s"] = round(cold, 2)
        self.fig.serving["settings"] = serving
        self.pipeline = pipeline
        say(f"  recommend function up in {cold:.1f} s with {serving or 'default settings'}")
        return RecommendClient(base), f"http://127.0.0.1:{self.cfg.ingest_port}/"

    def wait_pipeline_ready(self, users: UserReader, publisher, topic: str, user_id: str) -> None:
        """The DirectRunner takes a while to start reading: wait for a first event to land."""
        event = ProductEvent(event_id=f"warmup-{uuid.uuid4().hex[:8]}", event_type="view",
                             user_id=user_id, item_id=self._any_item, timestamp=_now_ms())
        publisher.publish(topic, event.to_pubsub_data(), **event.pubsub_attributes()).result()
        t0 = time.monotonic()
        wait_until("the pipeline to process its first event",
                   lambda: (u := users.get(user_id)) is not None and u.last_event_id == event.event_id,
                   self.cfg.timeout_s, status=lambda: "" if self.pipeline.alive()
                   else "pipeline exited: " + self.pipeline.log_tail(500))
        self.fig.timings_s["pipeline_first_event"] = round(time.monotonic() - t0, 2)
        self.fig.events["warmup"] = 1

    # -- 6
    def live(self, data: DemoData, rec: RecommendClient, ingest_url: str, users: UserReader) -> None:
        step(6, f"Live stream: {len(data.live)} events at {self.cfg.rate:.0f}/s "
                "through the ingest function and Pub/Sub")
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(self.stack.project, names.EVENTS_TOPIC)
        counts = Counter(e.user_id for e in data.live)
        showcase = [u for u, c in counts.most_common() if c >= 3][:self.cfg.showcase_users]
        self._any_item = data.items[0].item_id
        self.wait_pipeline_ready(users, publisher, topic, showcase[0] if showcase else "demo-user")
        before = {u: rec.recommend(u) for u in showcase}
        base_events = users.total_events()

        plan = self._replay_plan(data.live)
        stop_probes = threading.Event()
        # Probes go to users the live stream does not touch, or a live event for the same user
        # could overtake the probe before the function is asked.
        probe_users = sorted({e.user_id for e in data.history} - set(counts)) or \
            [f"probe-user-{i}" for i in range(self.cfg.probes)]
        prober = threading.Thread(target=self._probe_loop, daemon=True,
                                  args=(rec, publisher, topic, probe_users, stop_probes))
        t0 = time.monotonic()
        prober.start()
        sent = self._replay(plan, publisher, topic, ingest_url)
        replay_s = time.monotonic() - t0
        wait_until("the probes", lambda: len(self.fig.probes) >= self.cfg.probes,
                   self.cfg.timeout_s)
        stop_probes.set()
        prober.join(timeout=30)
        expected = sent["unique_valid"] + len(self.fig.probes)
        wait_until("every accepted event to reach Firestore",
                   lambda: users.total_events() - base_events >= expected, self.cfg.timeout_s,
                   interval_s=1.0,
                   status=lambda: f"{users.total_events() - base_events}/{expected}")
        time.sleep(2.0)  # anything double-counted would show up now
        accepted = users.total_events() - base_events - len(self.fig.probes)
        dead = self._drain_dead_letters(sent["invalid_pubsub"])
        self.fig.events.update({
            "published": sent["published"], "accepted": accepted, "rejected": sent["rejected"],
            "rejected_by_ingest": sent["rejected_ingest"], "sent_to_pubsub_invalid": sent["invalid_pubsub"],
            "dead_lettered": dead, "duplicates_sent": sent["duplicates"],
            "unique_valid": sent["unique_valid"], "via_ingest": sent["via_ingest"],
            "via_pubsub": sent["via_pubsub"], "replay_seconds": round(replay_s, 2),
            "replay_events_per_s": round(sent["published"] / replay_s, 1),
        })
        fresh = self.fig.freshness_s
        say(f"  sent {sent['published']} ({sent['duplicates']} duplicates, {sent['rejected']} invalid) "
            f"in {replay_s:.1f} s; accepted {accepted}, dead-lettered {dead}, "
            f"rejected at ingest {sent['rejected_ingest']}")
        say(f"  freshness over {len(fresh)} probes: p50 {percentile(fresh, 50):.3f} s, "
            f"p95 {percentile(fresh, 95):.3f} s")
        self._show_changes(before, {u: rec.recommend(u) for u in showcase}, data)
        self.publisher, self.topic = publisher, topic

    def _replay_plan(self, live: Sequence[ProductEvent]) -> list[tuple[str, Any]]:
        """The live events, plus duplicates and invalid messages at random places."""
        plan: list[tuple[str, Any]] = [("event", e) for e in live]
        n_dup = int(len(live) * self.cfg.duplicate_fraction)
        n_bad = max(2, int(len(live) * self.cfg.invalid_fraction))
        for e in self.rng.sample(list(live), n_dup):
            plan.insert(self.rng.randrange(len(plan) + 1), ("duplicate", e))
        for payload in invalid_payloads(self.rng, n_bad):
            plan.insert(self.rng.randrange(len(plan) + 1), ("invalid", payload))
        return plan

    def _replay(self, plan: list[tuple[str, Any]], publisher, topic: str, ingest_url: str
                ) -> dict[str, Any]:
        """Send the plan at the target rate; even chunks via the ingest function, odd via Pub/Sub."""
        restamped: dict[str, ProductEvent] = {}
        counts = Counter()
        futures = []
        session = requests.Session()
        chunk = 10
        interval = chunk / self.cfg.rate
        next_t = time.monotonic()
        for i in tqdm(range(0, len(plan), chunk), desc="  replay", unit="chunk", leave=False,
                      disable=not sys.stderr.isatty()):
            now = _now_ms()
            batch = plan[i:i + chunk]
            via_ingest = (i // chunk) % 2 == 0
            bodies: list[Any] = []
            for kind, value in batch:
                if kind == "invalid":
                    counts["rejected"] += 1
                    if via_ingest:
                        bodies.append(_raw_json(value[0]))
                    else:
                        futures.append(publisher.publish(topic, value[0]))
                        counts["invalid_pubsub"] += 1
                    continue
                event = restamped.setdefault(value.event_id, restamp(value, now))
                if kind == "duplicate":
                    counts["duplicates"] += 1
                if via_ingest:
                    bodies.append(event.to_dict())
                else:
                    futures.append(publisher.publish(topic, event.to_pubsub_data(),
                                                     **event.pubsub_attributes()))
            counts["published"] += len(batch)
            counts["via_ingest" if via_ingest else "via_pubsub"] += len(batch)
            if via_ingest and bodies:
                resp = session.post(ingest_url, json=bodies, timeout=30)
                if resp.status_code not in (202, 400):
                    raise DemoError(f"ingest answered {resp.status_code}: {resp.text[:300]}")
                result = resp.json()
                rejected_here = len(result.get("errors", [])) if resp.status_code == 202 else len(bodies)
                counts["rejected_ingest"] += rejected_here
                for err in result.get("errors", []):
                    self.fig.ingest_reject_reasons[err.get("field", "?")] = \
                        self.fig.ingest_reject_reasons.get(err.get("field", "?"), 0) + 1
            next_t += interval
            time.sleep(max(0.0, next_t - time.monotonic()))
        for f in futures:
            f.result(timeout=60)
        counts["unique_valid"] = len(restamped)
        return dict(counts)

    def _probe_loop(self, rec: RecommendClient, publisher, topic: str, user_ids: Sequence[str],
                    stop: threading.Event) -> None:
        """Publish a view, then ask the function until it answers with that event."""
        rng = random.Random(self.cfg.seed + 1)
        while not stop.is_set() and len(self.fig.probes) < self.cfg.probes:
            user = rng.choice(list(user_ids))
            event = ProductEvent(event_id=f"probe-{uuid.uuid4().hex[:12]}", event_type="view",
                                 user_id=user, item_id=self._any_item, timestamp=_now_ms())
            t0 = time.monotonic()
            publisher.publish(topic, event.to_pubsub_data(), **event.pubsub_attributes()).result()
            seen = None
            while time.monotonic() - t0 < 30:
                if rec.recommend(user, k=5).get("last_event_id") == event.event_id:
                    seen = time.monotonic() - t0
                    break
                time.sleep(0.01)
            self.fig.probes.append({"event_id": event.event_id, "user_id": user,
                                    "freshness_s": round(seen, 4) if seen is not None else None})
            if seen is not None:
                self.fig.freshness_s.append(round(seen, 4))
            time.sleep(0.3)

    def _drain_dead_letters(self, expected: int) -> int:
        from google.cloud import pubsub_v1

        sub = pubsub_v1.SubscriberClient()
        path = sub.subscription_path(self.stack.project, names.DEAD_LETTER_SUBSCRIPTION)
        seen = 0

        def pull() -> bool:
            nonlocal seen
            resp = sub.pull(subscription=path, max_messages=500, timeout=5)
            for m in resp.received_messages:
                reason = m.message.attributes.get(names.DLQ_FIELD_ATTR, "?")
                self.fig.dead_letter_reasons[reason] = self.fig.dead_letter_reasons.get(reason, 0) + 1
            if resp.received_messages:
                sub.acknowledge(subscription=path, ack_ids=[m.ack_id for m in resp.received_messages])
            seen += len(resp.received_messages)
            return seen >= expected

        wait_until("the dead letters", pull, self.cfg.timeout_s, interval_s=0.5)
        time.sleep(1.0)
        pull()
        sub.close()
        return seen

    def _show_changes(self, before: dict[str, dict], after: dict[str, dict], data: DemoData) -> None:
        by_id = {i.item_id: i for i in data.items}
        for user, b in before.items():
            a = after[user]
            old = [i["item_id"] for i in b["items"]]
            new = [i["item_id"] for i in a["items"]]
            entered = [i for i in a["items"] if i["item_id"] not in old]
            say(f"\n  user {user}: strategy {b['strategy']} -> {a['strategy']}, "
                f"{len(entered)} of {len(new)} recommendations changed")
            for it in entered[:4]:
                meta = by_id.get(it["item_id"])
                say(f"    + {it['item_id']:<14} score {it['score']:.3f} (cf {_fmt(it['cf_score'])}, "
                    f"cb {_fmt(it['cb_score'])}) {meta.category + ' / ' + meta.brand if meta else ''}")
            self.fig.showcase.append({"user_id": user, "before": old, "after": new,
                                      "entered": entered, "strategy_before": b["strategy"],
                                      "strategy_after": a["strategy"]})

    def new_item(self, data: DemoData, rec: RecommendClient, users: UserReader) -> None:
        """Publish an unseen item like a showcase user's favourite; is it recommended?"""
        say("\n  New catalogue item, never seen in training:")
        target_user = (self.fig.showcase[0]["user_id"] if self.fig.showcase
                       else data.live[0].user_id)
        doc = users.get(target_user)
        by_id = {i.item_id: i for i in data.items}
        liked = [by_id[h.item_id] for h in (doc.history if doc else ()) if h.item_id in by_id]
        fav_cat = Counter(i.category for i in liked).most_common(1)[0][0]
        fav_brand = Counter(i.brand for i in liked if i.category == fav_cat).most_common(1)[0][0]
        template = next(i for i in reversed(liked) if i.category == fav_cat)
        item = CatalogItem(item_id=f"new-{uuid.uuid4().hex[:8]}", title=f"New {template.title}",
                           category=fav_cat, brand=fav_brand, price=template.price,
                           tags=template.tags, in_stock=True, updated_at=_now_ms())
        topic = self.publisher.topic_path(self.stack.project, names.CATALOG_TOPIC)
        t0 = time.monotonic()
        self.publisher.publish(topic, item.to_pubsub_data()).result()
        wait_until("the function to index the new item",
                   lambda: rec.session.get(f"{rec.base_url}/similar-items",
                                           params={"item_id": item.item_id, "k": 3},
                                           timeout=5).status_code == 200, self.cfg.timeout_s)
        indexed_s = time.monotonic() - t0
        matching = [u for u in {e.user_id for e in data.history}
                    if (d := users.get(u)) is not None and _share(d, by_id, fav_cat) >= 0.5][:20] \
            if not self.cfg.short else [target_user]
        ranks = {}
        for u in matching or [target_user]:
            items = [i["item_id"] for i in rec.recommend(u, k=20, category=fav_cat)["items"]]
            ranks[u] = items.index(item.item_id) + 1 if item.item_id in items else None
        hits = sum(r is not None for r in ranks.values())
        self.fig.new_item = {"item": item.to_dict(), "indexed_s": round(indexed_s, 2),
                             "matching_users": len(ranks), "recommended_to": hits,
                             "ranks": ranks, "k": 20, "category_filter": fav_cat}
        say(f"    {item.item_id} ({fav_cat} / {fav_brand}) indexed by the function in "
            f"{indexed_s:.1f} s; in the top 20 ({fav_cat}) of {hits} of {len(ranks)} users "
            f"whose history is mostly {fav_cat}")

    def load_test(self, rec: RecommendClient, user_ids: Sequence[str]) -> None:
        """Closed-loop load: ``load_concurrency`` clients for ``load_seconds``."""
        latencies: list[float] = []
        errors = Counter()
        deadline = time.monotonic() + self.cfg.load_seconds
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
        with ThreadPoolExecutor(self.cfg.load_concurrency) as pool:
            list(pool.map(client, range(self.cfg.load_concurrency)))
        elapsed = time.monotonic() - t0
        self.fig.serving_latencies_ms = [round(x, 3) for x in latencies]
        self.fig.serving.update({
            "requests": len(latencies), "errors": dict(errors), "seconds": round(elapsed, 2),
            "concurrency": self.cfg.load_concurrency, "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50) or 0, 2),
            "p99_ms": round(percentile(latencies, 99) or 0, 2),
            "note": "Python load generator on the same 2-core machine; make bench-serving uses wrk"})
        say(f"\n  Serving under load ({self.cfg.load_concurrency} clients, {elapsed:.0f} s): "
            f"{self.fig.serving['rps']} requests/s, p50 {self.fig.serving['p50_ms']} ms, "
            f"p99 {self.fig.serving['p99_ms']} ms")

    # -- 7
    def warm_start(self, rec: RecommendClient, users: UserReader, first: str, model_dir: Path
                   ) -> None:
        step(7, "Warm start on the archived events; hot reload in the pipeline and the function")
        archive = self.cfg.work_dir / "archive"
        wait_until("the pipeline's event archive", lambda: any(archive.rglob("*.jsonl*")),
                   self.cfg.timeout_s)
        time.sleep(6)  # let the current archive window close
        self._run_step("warm_start", python_module(
            "pipelines.training", "--data", str(archive), "--model-dir", str(model_dir),
            "--init-from", first, "--epochs", str(max(1, self.cfg.epochs // 2)), "--publish"))
        second = users.current_version()
        if second == first:
            raise DemoError("warm start did not switch models/current")
        t0 = time.monotonic()
        wait_until("the function to load the new version",
                   lambda: rec.health().get("model_version") == second, self.cfg.timeout_s)
        function_switch = time.monotonic() - t0
        user = self.fig.showcase[0]["user_id"] if self.fig.showcase else self.fig.probes[0]["user_id"]
        t1 = time.monotonic()
        doc, event, sent = None, None, 0
        # The pipeline polls models/current on its own schedule: send a view every second until
        # the user's document comes back embedded with the new version.
        while doc is None:
            if time.monotonic() - t1 > self.cfg.timeout_s:
                raise DemoError("the pipeline did not switch to the new version in time")
            event = ProductEvent(event_id=f"after-reload-{uuid.uuid4().hex[:8]}",
                                 event_type="view", user_id=user, item_id=self._any_item,
                                 timestamp=_now_ms())
            self.publisher.publish(self.topic, event.to_pubsub_data(),
                                   **event.pubsub_attributes()).result()
            sent += 1
            written = wait_until("the pipeline to write the event",
                                 lambda e=event: (d := users.get(user)) is not None
                                 and d.last_event_id == e.event_id and d, self.cfg.timeout_s)
            if written.model_version == second:
                doc = written
            else:
                time.sleep(1.0)
        answer = wait_until("the function to answer with the new event",
                            lambda: (a := rec.recommend(user))["last_event_id"] == event.event_id
                            and a, self.cfg.timeout_s)
        self.fig.models["warm_start"] = {"version": second, "parent": first,
                                         "train_seconds": self.fig.timings_s["warm_start"]}
        self.fig.hot_reload = {
            "function_switch_s": round(function_switch, 2),
            "pipeline_switch_s": round(time.monotonic() - t1, 2),
            "events_sent_until_switch": sent,
            "user_doc_model_version": doc.model_version,
            "function_model_version": answer["model_version"],
            "function_last_event_id_matches": answer.get("last_event_id") == event.event_id,
            "pipeline_restarted": False, "pipeline_pid_alive": self.pipeline.alive()}
        say(f"  {second} (from {first}) fine-tuned in {self.fig.timings_s['warm_start']:.1f} s "
            f"(initial training {self.fig.timings_s['train']:.1f} s)")
        say(f"  function switched in {function_switch:.1f} s; the pipeline embedded {user}'s events "
            f"with {doc.model_version} {self.fig.hot_reload['pipeline_switch_s']} s after the "
            f"switch; no restart (pipeline pid {self.pipeline.pid} alive)")

    # -- helpers
    def _run_step(self, name: str, args: list[str]) -> None:
        proc = ManagedProcess(name, args, self.logs / f"{name}.log", env=self.env)
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
        self.fig.timings_s[name] = round(time.monotonic() - t0, 2)
        if proc.proc.returncode != 0:
            raise DemoError(f"{name} failed (exit {proc.proc.returncode}):\n{proc.log_tail()}")

    def run(self) -> Figures:
        shutil.rmtree(self.cfg.work_dir, ignore_errors=True)
        self.cfg.work_dir.mkdir(parents=True)
        t_start = time.monotonic()
        with self.exits:
            self.start_stack()
            data = self.build_data()
            self.evaluate(data)
            first = self.train_and_publish(data)
            model_dir = self.cfg.work_dir / "models"
            rec, ingest_url = self.start_services(model_dir)
            users = UserReader(self.stack.project)
            self.live(data, rec, ingest_url, users)
            self.new_item(data, rec, users)
            self.load_test(rec, sorted({e.user_id for e in data.history})[:500])
            self.warm_start(rec, users, first, model_dir)
            step(8, "Stop everything, write the summary and the report")
        self.fig.timings_s["total"] = round(time.monotonic() - t_start, 1)
        return self.fig


def _share(doc: UserDoc, by_id: dict[str, CatalogItem], category: str) -> float:
    cats = [by_id[h.item_id].category for h in doc.history if h.item_id in by_id]
    return cats.count(category) / len(cats) if cats else 0.0


def _raw_json(payload: bytes) -> Any:
    """An invalid message as the ingest function would receive it (JSON if it parses)."""
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return payload.decode("utf-8", errors="replace")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def summary(fig: Figures) -> dict[str, Any]:
    """The figures people look at first (summary.json's top level)."""
    fresh = fig.freshness_s
    lat = fig.serving_latencies_ms
    q = fig.quality.get("models", {})
    return {
        "events": fig.events,
        "dead_letter_reasons": fig.dead_letter_reasons,
        "ingest_reject_reasons": fig.ingest_reject_reasons,
        "freshness": {"probes": len(fig.probes), "measured": len(fresh),
                      "p50_s": percentile(fresh, 50), "p95_s": percentile(fresh, 95)},
        "serving": {**fig.serving, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)},
        "quality": {name: {k: m.get(k) for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
                    for name, m in q.items()},
        "models": fig.models,
        "new_item": {k: v for k, v in fig.new_item.items() if k != "ranks"},
        "hot_reload": fig.hot_reload,
        "timings_s": fig.timings_s,
    }


def print_summary(s: dict[str, Any]) -> None:
    ev, fr, sv = s["events"], s["freshness"], s["serving"]
    say("\n\033[1mSummary\033[0m")
    say(f"  events published      {ev.get('published')}  (unique valid {ev.get('unique_valid')}, "
        f"duplicates {ev.get('duplicates_sent')}, invalid {ev.get('rejected')})")
    say(f"  accepted by pipeline  {ev.get('accepted')}")
    say(f"  rejected              {ev.get('rejected')}: at ingest {ev.get('rejected_by_ingest')} "
        f"{s['ingest_reject_reasons']}, dead-lettered {ev.get('dead_lettered')} "
        f"{s['dead_letter_reasons']}")
    say(f"  freshness             p50 {_fmt(fr['p50_s'])} s, p95 {_fmt(fr['p95_s'])} s "
        f"({fr['measured']}/{fr['probes']} probes)")
    say(f"  serving               p50 {_fmt(sv.get('p50_ms'))} ms, p99 {_fmt(sv.get('p99_ms'))} ms, "
        f"{sv.get('rps')} requests/s, cold start {sv.get('cold_start_s')} s")
    for name, m in s["quality"].items():
        say(f"  quality {name:<13} NDCG@10 {_fmt(m.get('ndcg@10'))}  Recall@20 {_fmt(m.get('recall@20'))}")
    for role, m in s["models"].items():
        say(f"  model {role:<15} {m['version']} ({m['train_seconds']} s)")
    ni = s["new_item"]
    if ni:
        say(f"  new item              recommended to {ni['recommended_to']} of "
            f"{ni['matching_users']} matching users, indexed in {ni['indexed_s']} s")


def parse_args(argv: Sequence[str] | None) -> DemoConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = DemoConfig()
    p.add_argument("--data", default=d.data, help="synthetic, a data set name or a directory/file")
    p.add_argument("--short", action="store_true", help="a quick run (what the test runs)")
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--live-events", type=int, default=None)
    p.add_argument("--rate", type=float, default=None, help="live events per second")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--probes", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=None, help="where summary.json goes")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="scratch space: data, models, archive, logs (default .local/demo)")
    p.add_argument("--reports-dir", type=Path, default=None,
                   help="where reports/<timestamp>/report.md goes (default reports/)")
    p.add_argument("--pubsub-port", type=int, default=None)
    p.add_argument("--firestore-port", type=int, default=None)
    p.add_argument("--recommend-port", type=int, default=None)
    p.add_argument("--ingest-port", type=int, default=None)
    p.add_argument("--no-report", action="store_true", help="skip the Markdown report and plots")
    args = p.parse_args(argv)
    cfg = d.shortened() if args.short else d
    overrides = {k.replace("-", "_"): v for k, v in vars(args).items()
                 if v is not None and k not in ("short", "no_report")}
    cfg = DemoConfig(**{**asdict(cfg), **overrides})
    cfg.no_report = args.no_report  # type: ignore[attr-defined]
    return cfg


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the ExitStack stops every child."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    with sigterm_as_interrupt():
        try:
            fig = Demo(cfg).run()
        except KeyboardInterrupt:
            say("\ninterrupted: everything the demo started has been stopped")
            return 130
        except (DemoError, local_stack.StackError) as e:
            say(f"\ndemo failed: {e}")
            return 1
    s = summary(fig)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "summary.json").write_text(json.dumps({**s, "details": asdict(fig)}, indent=2))
    print_summary(s)
    if not getattr(cfg, "no_report", False):
        from scripts.demo_report import write_report

        path = write_report(s, asdict(fig), cfg.reports_dir)
        say(f"\n  report: {path}")
    say(f"  summary: {cfg.out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
