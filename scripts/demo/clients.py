"""Clients for what the demo talks to: the recommend function, Firestore and Pub/Sub.

Thin wrappers so the steps read as what they ask, not how the request is made.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import requests

from schemas import names
from schemas.catalog import CatalogItem
from schemas.events import ProductEvent
from schemas.firestore import UserDoc


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
        """``/healthz`` on a new connection, so successive probes can reach different workers."""
        resp = requests.get(f"{self.base_url}/healthz", timeout=10, headers={"Connection": "close"})
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


@dataclass
class Publisher:
    """Publishes events and catalogue items to the Pub/Sub emulator.

    One client for the whole run, as several steps publish.
    """

    client: Any  # google.cloud.pubsub_v1.PublisherClient (imported lazily)
    project: str
    events_topic: str

    @classmethod
    def connect(cls, project: str) -> Publisher:
        from google.cloud import pubsub_v1

        client = pubsub_v1.PublisherClient()
        return cls(client=client, project=project,
                   events_topic=client.topic_path(project, names.EVENTS_TOPIC))

    def publish_event(self, event: ProductEvent) -> Future:
        return self.client.publish(self.events_topic, event.to_pubsub_data(),
                                   **event.pubsub_attributes())

    def publish_raw(self, payload: bytes) -> Future:
        """Bytes as they are, without attributes (how the invalid messages are sent)."""
        return self.client.publish(self.events_topic, payload)

    def publish_item(self, item: CatalogItem) -> Future:
        topic = self.client.topic_path(self.project, names.CATALOG_TOPIC)
        return self.client.publish(topic, item.to_pubsub_data())
