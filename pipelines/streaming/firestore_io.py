"""Firestore at the pipeline's edges: seed reads, batched idempotent writes.

* ``users/{id}``: written in ``WriteBatch``\\es of at most 500 documents per bundle, their
  ``Write`` messages built directly on the raw protobuf (:mod:`pipelines.compat.firestore_writes`). Per-user
  state is authoritative and ``event_count`` grows with every accepted event, so a write is
  skipped when a document with the same or a higher count was already written by this process,
  and two commits for the same user are never in flight at once (no reordering on the wire).
  Replayed events never reach the writer: the state step drops them.
* ``items/{id}``: catalogue updates, batched the same way.
* ``stats/trending``: a transaction keeps the newest window (and, for one window, its latest
  pane) so an old window's final firing cannot overwrite a newer list.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.compat import firestore_writes
from pipelines.streaming.parse import METRICS_NAMESPACE
from schemas import names
from schemas.firestore import CurrentModelDoc, ItemDoc, TrendingDoc, UserDoc

MAX_BATCH_WRITES = 500
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()




@dataclass(frozen=True)
class FirestoreSettings:
    """Which Firestore database the pipeline talks to (emulator via FIRESTORE_EMULATOR_HOST)."""

    project: str
    database: str = "(default)"

    def client(self) -> Any:
        """A process-wide client for these settings (created once)."""
        from google.cloud import firestore

        key = (self.project, self.database)
        with _clients_lock:
            if key not in _clients:
                _clients[key] = firestore.Client(project=self.project, database=self.database)
            return _clients[key]


class FirestoreUserStore:
    """Seeds per-user state from ``users/{id}``."""

    def __init__(self, settings: FirestoreSettings, collection: str = names.USERS) -> None:
        self.settings = settings
        self.collection = collection

    def get(self, user_id: str) -> UserDoc | None:
        snap = self.settings.client().collection(self.collection).document(user_id).get()
        return UserDoc.from_document(snap.to_dict()) if snap.exists else None

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserDoc | None]:
        """One batched read (``get_all``) for many users."""
        client = self.settings.client()
        coll = client.collection(self.collection)
        out: dict[str, UserDoc | None] = dict.fromkeys(user_ids)
        for snap in client.get_all([coll.document(u) for u in user_ids]):
            if snap.exists:
                out[snap.id] = UserDoc.from_document(snap.to_dict())
        return out


class FirestoreCurrentModel:
    """Reads ``models/current`` for the model watcher."""

    def __init__(self, settings: FirestoreSettings) -> None:
        self.settings = settings

    def __call__(self) -> CurrentModelDoc | None:
        snap = (self.settings.client().collection(names.MODELS)
                .document(names.CURRENT_MODEL_DOC).get())
        return CurrentModelDoc.from_document(snap.to_dict()) if snap.exists else None


class MonotonicGuard:
    """Per-user "highest ``event_count`` written" with at most one commit in flight per user."""

    def __init__(self, max_users: int = 200_000) -> None:
        self._written: OrderedDict[str, int] = OrderedDict()
        self._in_flight: set[str] = set()
        self._cond = threading.Condition()
        self._max_users = max_users

    def claim(self, docs: Sequence[UserDoc]) -> list[UserDoc]:
        """Docs newer than anything written for their user; marks them in flight."""
        latest: dict[str, UserDoc] = {}
        for doc in docs:
            if doc.user_id not in latest or doc.event_count > latest[doc.user_id].event_count:
                latest[doc.user_id] = doc
        with self._cond:
            self._cond.wait_for(lambda: not (self._in_flight & latest.keys()))
            fresh = [d for d in latest.values() if d.event_count > self._written.get(d.user_id, -1)]
            self._in_flight.update(d.user_id for d in fresh)
            return fresh

    def release(self, docs: Iterable[UserDoc], committed: bool) -> None:
        """End the flight of ``docs``; remember their counts if the commit succeeded."""
        with self._cond:
            for doc in docs:
                self._in_flight.discard(doc.user_id)
                if committed:
                    self._written[doc.user_id] = doc.event_count
                    self._written.move_to_end(doc.user_id)
            while len(self._written) > self._max_users:
                self._written.popitem(last=False)
            self._cond.notify_all()


_guards: dict[FirestoreSettings, MonotonicGuard] = {}
_guards_lock = threading.Lock()


def shared_guard(settings: FirestoreSettings) -> MonotonicGuard:
    with _guards_lock:
        return _guards.setdefault(settings, MonotonicGuard())


_commit_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="firestore-commit")
MIN_CONCURRENT_CHUNK = 25


def commit_in_batches(client: Any, writes: Sequence[tuple[Any, dict[str, Any]]],
                      merge: bool = False, parallelism: int = 4) -> None:
    """``set`` every (reference, data) pair: batches of at most ``MAX_BATCH_WRITES``, up to
    ``parallelism`` commits in flight, which overlaps the round trips of independent batches.
    Returns when every batch is committed; raises the first commit error."""
    if not writes:
        return
    size = min(MAX_BATCH_WRITES, max(MIN_CONCURRENT_CHUNK, -(-len(writes) // parallelism)))
    chunks = [writes[i:i + size] for i in range(0, len(writes), size)]

    def commit(chunk: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        batch = client.batch()
        if merge:
            for ref, data in chunk:
                batch.set(ref, data, merge=True)
        else:
            firestore_writes.add_sets(batch, chunk)
        batch.commit()

    if len(chunks) == 1:
        commit(chunks[0])
        return
    for future in [_commit_pool.submit(commit, c) for c in chunks]:
        future.result()


class WriteUserDocsFn(beam.DoFn):
    """Buffers ``UserDoc``\\s for a bundle and commits the newest per user in batches."""

    def __init__(self, settings: FirestoreSettings, collection: str = names.USERS) -> None:
        self.settings = settings
        self.collection = collection
        self.written = Metrics.counter(METRICS_NAMESPACE, "user_docs_written")
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "user_docs_stale_skipped")
        self.batch_size = Metrics.distribution(METRICS_NAMESPACE, "user_write_batch_size")

    def setup(self) -> None:
        self._client = self.settings.client()
        self._guard = shared_guard(self.settings)

    def start_bundle(self) -> None:
        self._buffer: list[UserDoc] = []

    def process(self, doc: UserDoc) -> None:
        self._buffer.append(doc)

    def finish_bundle(self) -> None:
        if not self._buffer:
            return
        fresh = self._guard.claim(self._buffer)
        self.skipped.inc(len(self._buffer) - len(fresh))
        committed = False
        try:
            coll = self._client.collection(self.collection)
            commit_in_batches(self._client, [(coll.document(d.user_id), d.to_document()) for d in fresh])
            committed = True
        finally:
            self._guard.release(fresh, committed)
        self.written.inc(len(fresh))
        self.batch_size.update(len(fresh))
        self._buffer = []


class WriteItemDocsFn(beam.DoFn):
    """Buffers ``ItemDoc``\\s for a bundle and commits them in batches.

    Merged into an existing document without ``popularity``, which belongs to training.
    """

    def __init__(self, settings: FirestoreSettings, collection: str = names.ITEMS) -> None:
        self.settings = settings
        self.collection = collection
        self.written = Metrics.counter(METRICS_NAMESPACE, "item_docs_written")

    def setup(self) -> None:
        self._client = self.settings.client()

    def start_bundle(self) -> None:
        self._buffer: dict[str, ItemDoc] = {}

    def process(self, doc: ItemDoc) -> None:
        self._buffer[doc.item_id] = doc  # the latest update of an item in a bundle wins

    def finish_bundle(self) -> None:
        if not self._buffer:
            return
        coll = self._client.collection(self.collection)
        writes = [(coll.document(i), _without_popularity(d.to_document())) for i, d in self._buffer.items()]
        commit_in_batches(self._client, writes, merge=True)
        self.written.inc(len(self._buffer))
        self._buffer = {}


def _without_popularity(doc: dict[str, Any]) -> dict[str, Any]:
    doc.pop("popularity", None)
    return doc


def _trending_rank(doc: dict[str, Any] | TrendingDoc) -> tuple[int, int]:
    if isinstance(doc, TrendingDoc):
        doc = doc.to_document()
    total = sum(int(e.get("views", 0)) + int(e.get("add_to_cart", 0)) + int(e.get("purchases", 0))
                for e in doc.get("items") or ())
    return int(doc.get("window_end") or 0), total


class WriteTrendingFn(beam.DoFn):
    """Writes ``stats/trending`` unless a newer window (or a later pane of it) is stored.

    Only the newest list of a bundle is written, panes not newer than the last one this process
    wrote are skipped without a round trip, and a transaction re-checks against the stored doc.
    """

    _last_written: dict[FirestoreSettings, tuple[int, int]] = {}

    def __init__(self, settings: FirestoreSettings) -> None:
        self.settings = settings
        self.written = Metrics.counter(METRICS_NAMESPACE, "trending_written")
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "trending_stale_skipped")

    def setup(self) -> None:
        self._client = self.settings.client()

    def start_bundle(self) -> None:
        self._best: TrendingDoc | None = None

    def process(self, doc: TrendingDoc) -> None:
        if self._best is not None:
            self.skipped.inc()
        if self._best is None or _trending_rank(doc) > _trending_rank(self._best):
            self._best = doc

    def finish_bundle(self) -> None:
        doc, self._best = self._best, None
        if doc is None:
            return
        rank = _trending_rank(doc)
        if rank <= WriteTrendingFn._last_written.get(self.settings, (-1, -1)):
            self.skipped.inc()
            return
        if self._write_if_newer(doc):
            WriteTrendingFn._last_written[self.settings] = rank
            self.written.inc()
        else:
            self.skipped.inc()

    def _write_if_newer(self, doc: TrendingDoc) -> bool:
        from google.cloud import firestore

        ref = self._client.collection(names.STATS).document(names.TRENDING_DOC)

        @firestore.transactional
        def write(transaction: Any) -> bool:
            snap = ref.get(transaction=transaction)
            if snap.exists and _trending_rank(snap.to_dict()) > _trending_rank(doc):
                return False
            transaction.set(ref, doc.to_document())
            return True

        return write(self._client.transaction())
