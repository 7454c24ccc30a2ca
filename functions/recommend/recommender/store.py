"""Firestore reads of the recommend function, each bounded by a short deadline.

Every failure (emulator or service down, timeout, malformed document) surfaces as
:class:`StoreUnavailable` so the service can degrade instead of failing. The client is
created lazily per process: gunicorn forks workers after the module is imported, and a
gRPC channel must not cross a fork.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from schemas.firestore import CurrentModelDoc, ItemDoc, ModelDoc, TrendingDoc, UserDoc

from .compat.firestore_unary_read import read_document
from .config import Settings

__all__ = ["FirestoreStore", "Store", "StoreUnavailable", "read_document"]


class StoreUnavailable(RuntimeError):
    """Firestore could not answer in time, or answered with something unreadable."""


class Store(Protocol):
    """What the service reads from Firestore (:class:`FirestoreStore`, or a fake in tests)."""

    def get_user(self, user_id: str) -> UserDoc | None: ...
    def get_current_model(self) -> CurrentModelDoc | None: ...
    def get_trending(self) -> TrendingDoc | None: ...
    def items_since(self, indexed_from: int, limit: int
                    ) -> list[tuple[str, int, ItemDoc | None]]: ...


_ERRORS = (gexc.GoogleAPIError, gexc.RetryError)
_DOC_ERRORS = (KeyError, TypeError, ValueError)


class FirestoreStore:
    """Reads users, models/current (and arms' models/{version}), stats/trending, recent items, experiments."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self._settings = settings
        self._client = client
        self._pid = os.getpid() if client is not None else None
        self._lock = threading.Lock()

    @property
    def client(self) -> firestore.Client:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = firestore.Client(project=self._settings.project,
                                                    database=self._settings.database)
                    self._pid = os.getpid()
        return self._client

    def _retry(self) -> gretry.Retry:
        t = self._settings.firestore_timeout_seconds
        return gretry.Retry(initial=0.02, maximum=t / 4, multiplier=2.0, timeout=t,
                            predicate=gretry.if_transient_error)

    def _get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """One document by the unary read (``compat/firestore_unary_read.py``), or None."""
        try:
            return read_document(self.client, collection, doc_id,
                                 self._settings.firestore_timeout_seconds, self._retry())
        except _ERRORS as e:
            raise StoreUnavailable(f"reading {collection}/{doc_id}: {e}") from e

    def get_user(self, user_id: str) -> UserDoc | None:
        """``users/{user_id}``, or None when the user is unknown."""
        doc = self._get(self._settings.users_collection, user_id)
        if doc is None:
            return None
        doc.setdefault("user_id", user_id)
        try:
            return UserDoc.from_document(doc)
        except _DOC_ERRORS as e:
            raise StoreUnavailable(f"users/{user_id} is malformed: {e}") from e

    def get_current_model(self) -> CurrentModelDoc | None:
        """``models/current``, or None before the first model is published."""
        doc = self._get(self._settings.models_collection, self._settings.current_model_doc)
        if doc is None:
            return None
        try:
            return CurrentModelDoc.from_document(doc)
        except _DOC_ERRORS as e:
            raise StoreUnavailable(f"models/current is malformed: {e}") from e

    def get_model(self, version: str) -> ModelDoc | None:
        """``models/{version}`` (an experiment arm's version), or None when there is none."""
        doc = self._get(self._settings.models_collection, version)
        if doc is None:
            return None
        try:
            return ModelDoc.from_document(doc)
        except _DOC_ERRORS as e:
            raise StoreUnavailable(f"models/{version} is malformed: {e}") from e

    def list_experiments(self, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """``experiments/*`` as ``(id, document)`` pairs, unparsed (recommender.experiments validates)."""
        t = self._settings.firestore_timeout_seconds * 5
        retry = gretry.Retry(initial=0.05, maximum=0.5, timeout=t, predicate=gretry.if_transient_error)
        try:
            snaps = (self.client.collection(self._settings.experiments_collection).limit(limit)
                     .get(retry=retry, timeout=t))
        except _ERRORS as e:
            raise StoreUnavailable(f"listing {self._settings.experiments_collection}: {e}") from e
        return [(s.id, s.to_dict() or {}) for s in snaps]

    def get_trending(self) -> TrendingDoc | None:
        """``stats/trending``, or None when the pipeline has not written it yet."""
        doc = self._get(self._settings.stats_collection, self._settings.trending_doc)
        if doc is None:
            return None
        try:
            return TrendingDoc.from_document(doc)
        except _DOC_ERRORS as e:
            raise StoreUnavailable(f"stats/trending is malformed: {e}") from e

    def items_since(self, indexed_from: int, limit: int, max_pages: int = 20
                    ) -> list[tuple[str, int, ItemDoc | None]]:
        """Items with ``indexed_at >= indexed_from``, oldest first, paging ``limit`` at a time.

        Returns ``(item_id, indexed_at, doc)`` with ``doc`` None for a malformed document,
        so the caller can move past it instead of re-reading it forever.
        """
        t = self._settings.firestore_timeout_seconds * 5
        retry = gretry.Retry(initial=0.05, maximum=0.5, timeout=t, predicate=gretry.if_transient_error)
        base = (self.client.collection(self._settings.items_collection)
                .where(filter=FieldFilter("indexed_at", ">=", int(indexed_from)))
                .order_by("indexed_at").limit(limit))
        out: list[tuple[str, int, ItemDoc | None]] = []
        query, last = base, None
        for _ in range(max_pages):
            try:
                snaps = query.get(retry=retry, timeout=t)
            except _ERRORS as e:
                raise StoreUnavailable(f"polling {self._settings.items_collection}: {e}") from e
            for snap in snaps:
                out.append(_parse_item(snap.id, snap.to_dict() or {}))
            if len(snaps) < limit:
                break
            last = snaps[-1]
            query = base.start_after(last)
        return out


def _parse_item(doc_id: str, doc: dict[str, Any]) -> tuple[str, int, ItemDoc | None]:
    try:
        indexed_at = int(doc.get("indexed_at") or 0)
    except (TypeError, ValueError):
        indexed_at = 0
    doc.setdefault("item_id", doc_id)
    try:
        return doc_id, indexed_at, ItemDoc.from_document(doc)
    except _DOC_ERRORS:
        return doc_id, indexed_at, None
