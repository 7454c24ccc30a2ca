"""The ``recommend_experiment`` row: the function with an experiment running and served records on.

Two arms (the version's alpha against alpha = 1.0, half the users each) in a collection of their own
(``EXPERIMENTS_COLLECTION``), so the ``recommend`` and ``recommend_exact`` servers of the same run,
on the same emulator, see no experiment; every answered list is published to a Pub/Sub emulator
topic (``SERVED_TOPIC``) with no subscription, so the emulator stores nothing it would grow on.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from schemas.experiments import Experiment
from scripts import local_stack

COLLECTION = "bench_experiments"
TOPIC = "bench-recommendations-served"
EXPERIMENT_ID = "bench-alpha"


def setup_experiment(client: Any, stack: local_stack.StackConfig) -> dict[str, str]:
    """Write the experiment, create the topic; return the server environment that turns both on."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    experiment = Experiment.from_document(EXPERIMENT_ID, {
        "arms": [{"name": "control", "share": 0.5},
                 {"name": "alpha1", "share": 0.5, "overrides": {"alpha": 1.0}}],
        "start_ms": 0, "description": "bench: the version's alpha vs the two-tower alone"})
    client.collection(COLLECTION).document(EXPERIMENT_ID).set(experiment.to_document())
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(stack.project, TOPIC)
    try:
        publisher.create_topic(name=topic)
    except AlreadyExists:  # a re-run against the same emulator
        pass
    return {"EXPERIMENTS_COLLECTION": COLLECTION, "SERVED_TOPIC": topic}


def served_counts(port: int, polls: int = 24, settle_s: float = 1.0) -> dict[str, Any]:
    """The served-record counters summed over the workers ``/healthz`` reached (each reports its pid)."""
    time.sleep(settle_s)  # let the publisher threads drain their queues
    by_pid: dict[int, dict[str, Any]] = {}
    for _ in range(polls):  # a fresh connection each time: the kernel spreads them over the workers
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                served = json.loads(resp.read()).get("served_records") or {}
        except (urllib.error.URLError, OSError, ValueError):
            continue
        if "pid" in served:
            by_pid[served["pid"]] = served
    keys = ("published", "dropped_queue_full", "failed", "batches", "queued")
    return {**{k: sum(int(s.get(k, 0)) for s in by_pid.values()) for k in keys},
            "workers_seen": len(by_pid)}
