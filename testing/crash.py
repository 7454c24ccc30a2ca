"""Kill the streaming pipeline with SIGKILL at random moments, restart it, and check what it counted.

Shared by ``tests/integration/test_streaming_crash.py`` (one scenario per run) and
``python -m bench.crash`` (the paced x burst x backlog matrix). A scenario publishes a known set of
events (distinct ids, a few users, so that each user's history fills and events come back older
than it), kills the pipeline's process group ``kills`` times at random moments while it works
(once the run has counted something, after a random delay: up to ``max_kill_delay_s`` for a
stream, up to 0.5 s for a burst or backlog, read in bundles of ``pull_max``), restarts it at
once, and finally compares every user's ``event_count`` and history in Firestore with what was
published: ``lost`` (published, not counted) and ``doubled`` (counted more than once).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import names
from schemas.events import ProductEvent
from schemas.firestore import UserDoc
from scripts.processes import ManagedProcess
from testing.stack import pipeline_env

KINDS = ("paced", "burst", "backlog")
ACK_DEADLINE_S = 10  # Pub/Sub's minimum: how long a killed run's held messages stay invisible


@dataclass
class Scenario:
    """One crash scenario: ``kind`` (paced at ``rate``/s, one burst, or a backlog before start)."""

    kind: str
    events: int
    kills: int
    users: list[str]
    items: list[str]
    rate: float = 50.0
    history_length: int = 5
    max_kill_delay_s: float = 1.5
    seed: int = 0
    pull_max: int | None = None  # the pipeline's --direct-pull-max-messages (None: its default)


@dataclass
class CrashStack:
    """Fresh topics/subscriptions on the emulators and the pipeline process (restartable)."""

    emulators: Any  # scripts.local_stack.StackConfig
    work: Path
    model_dir: str
    history_length: int = 5
    extra: tuple[str, ...] = ()
    paths: dict[str, tuple[str, str]] = field(default_factory=dict)
    runs: int = 0
    proc: ManagedProcess | None = None

    def __post_init__(self) -> None:
        from google.cloud import pubsub_v1

        self.publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01))
        subscriber = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:8]
        project = self.emulators.project
        for kind in ("events", "catalog", "dlq"):
            topic = self.publisher.topic_path(project, f"crash-{kind}-{suffix}")
            sub = subscriber.subscription_path(project, f"crash-{kind}-sub-{suffix}")
            self.publisher.create_topic(name=topic)
            subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=ACK_DEADLINE_S)
            self.paths[kind] = (topic, sub)
        subscriber.close()

    def start(self) -> ManagedProcess:
        self.runs += 1
        args = [sys.executable, "-m", "pipelines.streaming",
                "--events-subscription", self.paths["events"][1],
                "--catalog-subscription", self.paths["catalog"][1],
                "--dead-letter-topic", self.paths["dlq"][0],
                "--history-length", str(self.history_length), "--model-dir", self.model_dir,
                "--model-refresh-seconds", "5", "--archive-dir", str(self.work / "archive"),
                "--drain-idle-seconds", "1", *self.extra]
        env = pipeline_env(self.emulators.pubsub_host, self.emulators.firestore_host, self.emulators.project)
        self.proc = ManagedProcess("pipeline", args, self.work / f"pipeline-{self.runs}.log", env).start()
        return self.proc

    def kill(self) -> None:
        """SIGKILL the pipeline's whole process group: no drain, no flush, nothing acked."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.proc.wait(timeout=30)

    def stop(self) -> int | None:
        return self.proc.stop(timeout_s=60) if self.proc is not None else None

    def publish(self, events: list[ProductEvent]) -> None:
        topic = self.paths["events"][0]
        futures = [self.publisher.publish(topic, e.to_pubsub_data(), **e.pubsub_attributes()) for e in events]
        for f in futures:
            f.result(timeout=60)

    def log(self) -> str:
        return self.proc.log_tail() if self.proc is not None else ""


def make_events(scenario: Scenario, prefix: str) -> list[ProductEvent]:
    """Distinct events over the scenario's users, event times increasing in publish order."""
    rng = random.Random(scenario.seed)
    start = int(time.time() * 1000) - 600_000
    return [ProductEvent(f"{prefix}-{i}", "view", rng.choice(scenario.users), rng.choice(scenario.items),
                         start + i * 10) for i in range(scenario.events)]


def counted(db: Any, users: list[str]) -> dict[str, UserDoc]:
    """The users' documents (those that exist)."""
    coll = db.collection(names.USERS)
    return {s.id: UserDoc.from_document(s.to_dict()) for s in db.get_all([coll.document(u) for u in users])
            if s.exists}


def total(docs: dict[str, UserDoc]) -> int:
    return sum(d.event_count for d in docs.values())


def compare(events: list[ProductEvent], docs: dict[str, UserDoc], history_length: int) -> dict[str, Any]:
    """Per user, published vs counted: ``lost``, ``doubled``, histories that differ."""
    by_user: dict[str, list[ProductEvent]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    lost = doubled = bad_histories = 0
    for user, evs in by_user.items():
        got = docs[user].event_count if user in docs else 0
        lost += max(0, len(evs) - got)
        doubled += max(0, got - len(evs))
        newest = sorted(evs, key=lambda e: (e.timestamp, e.event_id))[-history_length:]
        expected = [e.event_id for e in newest]
        if user not in docs or [h.event_id for h in docs[user].history] != expected:
            bad_histories += 1
    return {"published": len(events), "counted": total(docs), "lost": lost, "doubled": doubled,
            "histories_differing": bad_histories, "users": len(by_user)}


class Pacer(threading.Thread):
    """Publishes ``events`` at ``rate`` per second in the background."""

    def __init__(self, stack: CrashStack, events: list[ProductEvent], rate: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.events, self.rate = stack, events, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            for i in range(0, len(self.events), 5):  # 5 at a time keeps the pace without a thread per call
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.stack.publish(self.events[i:i + 5])
        except Exception as e:  # noqa: BLE001 - surfaced by the caller
            self.error = e


def wait_progress(db: Any, users: list[str], since: int, timeout_s: float, stack: CrashStack,
                  poll_s: float = 0.1) -> bool:
    """Wait until the users' counts exceed ``since`` (the pipeline is working); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.proc is not None and stack.proc.poll() is not None:
            raise RuntimeError(f"pipeline exited with {stack.proc.returncode}:\n{stack.log()}")
        if total(counted(db, users)) > since:
            return True
        time.sleep(poll_s)
    return False


def run_scenario(scenario: Scenario, stack: CrashStack, db: Any, settle_timeout_s: float = 90.0
                 ) -> dict[str, Any]:
    """Publish, kill ``kills`` times at random moments, restart, wait, compare. Leaves the last run
    stopped (drained)."""
    rng = random.Random(scenario.seed + 1)
    if scenario.pull_max:
        stack.extra = (*stack.extra, "--direct-pull-max-messages", str(scenario.pull_max))
    events = make_events(scenario, f"{scenario.kind}-{uuid.uuid4().hex[:6]}")
    users = sorted({e.user_id for e in events})
    t0 = time.monotonic()
    kill_at: list[float] = []
    counted_at_kill: list[int] = []
    pacer = None
    if scenario.kind == "backlog":
        stack.publish(events)
        stack.start()
    else:
        stack.start()
        stack.publish(events[:1])  # a first event: the pipeline is up once it is counted
        if not wait_progress(db, users, 0, 120, stack):
            raise TimeoutError(f"the pipeline counted nothing:\n{stack.log()}")
        if scenario.kind == "burst":
            stack.publish(events[1:])
        else:
            pacer = Pacer(stack, events[1:], scenario.rate)
            pacer.start()
    try:
        for _ in range(scenario.kills):
            before = total(counted(db, users))
            remaining = len(events) - before
            # once this run counts something, after a random delay; a burst or backlog is worked
            # off in about a second (the first bundle's users written at once, the next ones'
            # a second later, coalesced), so its delay is short: the kill lands mid-way
            wait_progress(db, users, before, 25, stack, poll_s=0.02)
            short = scenario.kind != "paced" and remaining >= 50
            time.sleep(rng.uniform(0.0, 0.5 if short else scenario.max_kill_delay_s))
            kill_at.append(round(time.monotonic() - t0, 2))
            stack.kill()
            counted_at_kill.append(total(counted(db, users)))
            stack.start()
        if pacer is not None:
            pacer.join(timeout=300)
            if pacer.error is not None:
                raise pacer.error
        deadline = time.monotonic() + settle_timeout_s
        while time.monotonic() < deadline and total(counted(db, users)) < len(events):
            if stack.proc.poll() is not None:
                raise RuntimeError(f"pipeline exited with {stack.proc.returncode}:\n{stack.log()}")
            time.sleep(0.5)
        # messages a killed run held come back at most ACK_DEADLINE_S after the kill (the lease
        # extends only batches held over 5 s): wait for them, a double count would show then
        last_kill = t0 + kill_at[-1] if kill_at else time.monotonic()
        time.sleep(max(0.0, last_kill + ACK_DEADLINE_S + 3 - time.monotonic()))
        result = compare(events, counted(db, users), scenario.history_length)
    finally:
        exit_code = stack.stop()
    result.update(kind=scenario.kind, kills=len(kill_at), kill_at_s=kill_at, counted_at_kill=counted_at_kill,
                  runs=stack.runs,
                  seconds=round(time.monotonic() - t0, 1), last_exit_code=exit_code)
    return result
