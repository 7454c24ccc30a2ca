"""The demo's data: history for training, a live stream to replay, and malformed messages.

Splitting by time keeps the live stream newer than anything the model was trained on.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.catalog import CatalogItem
from schemas.clock import now_ms
from schemas.events import ProductEvent
from scripts.demo.config import DemoConfig


@dataclass
class DemoData:
    """The catalogue, the history written for training, and the events held back as live."""

    data_dir: Path
    items: list[CatalogItem]
    history: list[ProductEvent]
    live: list[ProductEvent]
    tastes: dict[str, dict[str, list[str]]] | None = None  # synthetic: each user's planted tastes


def build_data(cfg: DemoConfig) -> DemoData:
    """Load or generate the data; the newest ``live_events`` become the live stream."""
    from pipelines.data import generate_synthetic, load_dataset, write_events_jsonl

    now = now_ms()
    if cfg.data == "synthetic":
        ds = generate_synthetic(n_users=cfg.users, n_items=cfg.items, seed=cfg.seed,
                                start_ms=now - 30 * 24 * 3600 * 1000)
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
    return DemoData(data_dir=data_dir, items=list(ds.items), history=history, live=live,
                    tastes=(ds.metadata or {}).get("user_tastes"))


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


def raw_json(payload: bytes) -> Any:
    """An invalid message as the ingest function would receive it (JSON if it parses)."""
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return payload.decode("utf-8", errors="replace")
