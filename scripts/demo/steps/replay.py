"""Replay the live stream at a steady rate, with duplicates and invalid messages mixed in.

Half the chunks go through the ingest function and half straight to Pub/Sub, to exercise both.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import requests
from tqdm import tqdm

from schemas.clock import now_ms
from schemas.events import ProductEvent
from scripts.demo.clients import Publisher
from scripts.demo.config import DemoConfig
from scripts.demo.data import invalid_payloads, raw_json, restamp
from scripts.demo.errors import DemoError


def replay_plan(cfg: DemoConfig, live: Sequence[ProductEvent]) -> list[tuple[str, Any]]:
    """The live events, plus duplicates and invalid messages at random places."""
    rng = random.Random(cfg.seed)
    plan: list[tuple[str, Any]] = [("event", e) for e in live]
    n_dup = int(len(live) * cfg.duplicate_fraction)
    n_bad = max(2, int(len(live) * cfg.invalid_fraction))
    for e in rng.sample(list(live), n_dup):
        plan.insert(rng.randrange(len(plan) + 1), ("duplicate", e))
    for payload in invalid_payloads(rng, n_bad):
        plan.insert(rng.randrange(len(plan) + 1), ("invalid", payload))
    return plan


def replay(plan: list[tuple[str, Any]], publisher: Publisher, ingest_url: str, rate: float,
           ingest_reject_reasons: dict[str, int]) -> dict[str, Any]:
    """Send the plan at ``rate``; even chunks via the ingest function, odd via Pub/Sub.

    Returns the counts sent by kind; counts the ingest function's rejections by field.
    """
    restamped: dict[str, ProductEvent] = {}
    counts = Counter()
    futures = []
    session = requests.Session()
    chunk = 10
    interval = chunk / rate
    next_t = time.monotonic()
    for i in tqdm(range(0, len(plan), chunk), desc="  replay", unit="chunk", leave=False,
                  disable=not sys.stderr.isatty()):
        now = now_ms()
        batch = plan[i:i + chunk]
        via_ingest = (i // chunk) % 2 == 0
        bodies: list[Any] = []
        for kind, value in batch:
            if kind == "invalid":
                counts["rejected"] += 1
                if via_ingest:
                    bodies.append(raw_json(value[0]))
                else:
                    futures.append(publisher.publish_raw(value[0]))
                    counts["invalid_pubsub"] += 1
                continue
            event = restamped.setdefault(value.event_id, restamp(value, now))
            if kind == "duplicate":
                counts["duplicates"] += 1
            if via_ingest:
                bodies.append(event.to_dict())
            else:
                futures.append(publisher.publish_event(event))
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
                ingest_reject_reasons[err.get("field", "?")] = \
                    ingest_reject_reasons.get(err.get("field", "?"), 0) + 1
        next_t += interval
        time.sleep(max(0.0, next_t - time.monotonic()))
    for f in futures:
        f.result(timeout=60)
    counts["unique_valid"] = len(restamped)
    return dict(counts)
