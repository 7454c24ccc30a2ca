"""Freshness probes: publish a view, then ask the recommend function until it answers with it.

This measures what a user sees: the time from an event to recommendations that reflect it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Sequence

from schemas.clock import now_ms
from schemas.events import ProductEvent
from scripts.demo.clients import Publisher, RecommendClient
from scripts.demo.config import DemoConfig
from scripts.demo.figures import Figures


def probe_loop(cfg: DemoConfig, fig: Figures, rec: RecommendClient, publisher: Publisher,
               user_ids: Sequence[str], item_id: str, stop: threading.Event) -> None:
    """Probe until ``stop`` or ``cfg.probes`` probes; append to ``fig.probes``/``freshness_s``."""
    rng = random.Random(cfg.seed + 1)
    while not stop.is_set() and len(fig.probes) < cfg.probes:
        user = rng.choice(list(user_ids))
        event = ProductEvent(event_id=f"probe-{uuid.uuid4().hex[:12]}", event_type="view",
                             user_id=user, item_id=item_id, timestamp=now_ms())
        t0 = time.monotonic()
        publisher.publish_event(event).result()
        seen = None
        while time.monotonic() - t0 < 30:
            if rec.recommend(user, k=5).get("last_event_id") == event.event_id:
                seen = time.monotonic() - t0
                break
            time.sleep(0.01)
        fig.probes.append({"event_id": event.event_id, "user_id": user,
                           "freshness_s": round(seen, 4) if seen is not None else None})
        if seen is not None:
            fig.freshness_s.append(round(seen, 4))
        time.sleep(0.3)
