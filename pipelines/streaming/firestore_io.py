"""Firestore at the pipeline's edges: seed reads, batched idempotent writes.

* ``users/{id}``: written in ``WriteBatch``\\es of at most 500 documents per bundle, their
  ``Write`` messages built directly on the raw protobuf (:mod:`pipelines.compat.firestore_writes`). Per-user
  state is authoritative and ``event_count`` grows with every accepted event, so a write is
  skipped when a document with the same or a higher count was already written by this process,
  and two commits for the same user are never in flight at once (no reordering on the wire).
  Replayed events never reach the writer: the state step drops them. A write that carries a
  forget request (``UserWrite.forgets``) first commits ``forgotten_users/{id}`` (the forget time,
  which seeds the state's floor after a restart) and, if nothing was accepted since, the deletion
  of ``users/{id}``; a later forget outranks any count (``UserWrite.rank``).
* ``items/{id}``: catalogue updates, batched the same way.
* ``stats/trending``: a transaction keeps the newest window (and, for one window, its latest
  pane) so an old window's final firing cannot overwrite a newer list.

Every commit finishes before its bundle does, so what a bundle wrote is durable when the bundle
ends (the local read acks on that). A commit that fails (``WRITE_ERRORS``) does not end the
pipeline: the events of its users (``UserWrite.events``) or its catalogue items go to the
dead-letter output with the reason, counted as ``user_write_failed`` / ``item_write_failed``; a
failed trending write is counted and dropped (the next pane rewrites the list).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.compat import firestore_writes
from pipelines.streaming.parse import DEAD_LETTER, METRICS_NAMESPACE, failed_record, stage_failures
from pipelines.streaming.user_state import DEDUP_FIELD, StoredUser
from schemas import names
from schemas.events import ForgetRequest, ProductEvent
from schemas.firestore import CurrentModelDoc, ItemDoc, TrendingDoc, UserDoc

LOG = logging.getLogger(__name__)
MAX_BATCH_WRITES = 500
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def write_errors() -> tuple[type[BaseException], ...]:
    """What a commit can raise: the API's call and retry errors."""
    from google.api_core import exceptions

    return (exceptions.GoogleAPICallError, exceptions.RetryError)


@dataclass(frozen=True)
class UserWrite:
    """A ``users/{id}`` document to write and the events it newly holds (dead-lettered if the
    write fails)."""

    doc: UserDoc
    events: tuple[ProductEvent, ...] = ()
    dedup: str | None = None  # the state's dedup memory, stored as users/{id}.dedup
    forgotten_at: int = 0  # the state's latest forget (epoch ms)

    @property
    def user_id(self) -> str:
        return self.doc.user_id

    @property
    def event_count(self) -> int:
        return self.doc.event_count

    @property
    def rank(self) -> tuple[int, int]:
        """Newer writes of a user rank higher: a later forget, then a higher count."""
        return self.forgotten_at, self.doc.event_count

    @property
    def forgets(self) -> tuple[ForgetRequest, ...]:
        return tuple(e for e in self.events if isinstance(e, ForgetRequest))

    def to_document(self) -> dict[str, Any]:
        data = self.doc.to_document()
        if self.dedup is not None:
            data[DEDUP_FIELD] = self.dedup
        return data


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


def stored_user(data: dict[str, Any] | None, forgotten: dict[str, Any] | None = None) -> StoredUser | None:
    """A ``users/{id}`` document as read (the ``UserDoc`` and the pipeline's ``dedup`` field) with
    the user's ``forgotten_users/{id}``; None if neither exists."""
    forgotten_at = int(forgotten["forgotten_at"]) if forgotten else None
    if data is None:
        return StoredUser(None, None, forgotten_at) if forgotten_at else None
    return StoredUser(UserDoc.from_document(data), data.get(DEDUP_FIELD), forgotten_at)


def tombstone_document(write: UserWrite) -> dict[str, Any]:
    """``forgotten_users/{id}``: who and when, nothing else about the user."""
    return {"user_id": write.user_id, "forgotten_at": write.forgotten_at}


class FirestoreUserStore:
    """Seeds per-user state from ``users/{id}``."""

    def __init__(self, settings: FirestoreSettings, collection: str = names.USERS) -> None:
        self.settings = settings
        self.collection = collection

    def get(self, user_id: str) -> StoredUser | None:
        return self.get_many([user_id])[user_id]

    def get_many(self, user_ids: Sequence[str]) -> dict[str, StoredUser | None]:
        """One batched read (``get_all``) for many users and their forget tombstones."""
        client = self.settings.client()
        coll, forgotten = client.collection(self.collection), client.collection(names.FORGOTTEN_USERS)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        refs = [coll.document(u) for u in user_ids] + [forgotten.document(u) for u in user_ids]
        for snap in client.get_all(refs):
            if snap.exists:
                found[(snap.reference.parent.id, snap.id)] = snap.to_dict()
        return {u: stored_user(found.get((self.collection, u)), found.get((names.FORGOTTEN_USERS, u)))
                for u in user_ids}


class FirestoreCurrentModel:
    """Reads ``models/current`` for the model watcher."""

    def __init__(self, settings: FirestoreSettings) -> None:
        self.settings = settings

    def __call__(self) -> CurrentModelDoc | None:
        snap = (self.settings.client().collection(names.MODELS)
                .document(names.CURRENT_MODEL_DOC).get())
        return CurrentModelDoc.from_document(snap.to_dict()) if snap.exists else None


class MonotonicGuard:
    """Per-user "highest rank written" (``UserWrite.rank``: forget time, then ``event_count``;
    a bare ``UserDoc`` ranks by its count) with at most one commit in flight per user."""

    def __init__(self, max_users: int = 200_000) -> None:
        self._written: OrderedDict[str, int] = OrderedDict()
        self._in_flight: set[str] = set()
        self._cond = threading.Condition()
        self._max_users = max_users

    def claim(self, docs: Sequence[Any]) -> list[Any]:
        """Docs newer than anything written for their user; marks them in flight."""
        latest: dict[str, Any] = {}
        for doc in docs:
            if doc.user_id not in latest or _rank(doc) > _rank(latest[doc.user_id]):
                latest[doc.user_id] = doc
        with self._cond:
            self._cond.wait_for(lambda: not (self._in_flight & latest.keys()))
            fresh = [d for d in latest.values() if _rank(d) > self._written.get(d.user_id, (-1, -1))]
            self._in_flight.update(d.user_id for d in fresh)
            return fresh

    def release(self, docs: Iterable[Any], committed: bool) -> None:
        """End the flight of ``docs``; remember their counts if the commit succeeded."""
        with self._cond:
            for doc in docs:
                self._in_flight.discard(doc.user_id)
                if committed:
                    self._written[doc.user_id] = _rank(doc)
                    self._written.move_to_end(doc.user_id)
            while len(self._written) > self._max_users:
                self._written.popitem(last=False)
            self._cond.notify_all()


def _rank(doc: Any) -> tuple[int, int]:
    rank = getattr(doc, "rank", None)
    return rank if rank is not None else (0, doc.event_count)


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
    for failure in commit_chunks(client, writes, merge, parallelism):
        if failure is not None:
            raise failure[1]


def commit_chunks(client: Any, writes: Sequence[tuple[Any, dict[str, Any]]], merge: bool = False,
                  parallelism: int = 4) -> list[tuple[range, BaseException] | None]:
    """Like :func:`commit_in_batches`, but waits for every batch and returns, per batch, ``None``
    or (the indexes of ``writes`` it held, the ``write_errors()`` it failed with)."""
    if not writes:
        return []
    size = min(MAX_BATCH_WRITES, max(MIN_CONCURRENT_CHUNK, -(-len(writes) // parallelism)))
    spans = [range(i, min(i + size, len(writes))) for i in range(0, len(writes), size)]
    errors = write_errors()

    def commit(chunk: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        batch = client.batch()
        if merge:
            for ref, data in chunk:
                batch.set(ref, data, merge=True)
        else:
            firestore_writes.add_sets(batch, chunk)
        batch.commit()

    def attempt(span: range) -> tuple[range, BaseException] | None:
        try:
            commit(writes[span.start:span.stop])
        except errors as e:
            return span, e
        return None

    if len(spans) == 1:
        return [attempt(spans[0])]
    return [future.result() for future in [_commit_pool.submit(attempt, s) for s in spans]]


def _dead_letters(records: Iterable[Any], stage: str, error: BaseException) -> list[WindowedValue]:
    return [WindowedValue(failed_record(r, stage, error), 0, (GlobalWindow(),)) for r in records]


class WriteUserDocsFn(beam.DoFn):
    """Buffers ``UserWrite``\\s (or ``UserDoc``\\s) for a bundle and commits the newest per user
    in batches; the events of a failed commit -> ``dead_letter``."""

    def __init__(self, settings: FirestoreSettings, collection: str = names.USERS) -> None:
        self.settings = settings
        self.collection = collection
        self.written = Metrics.counter(METRICS_NAMESPACE, "user_docs_written")
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "user_docs_stale_skipped")
        self.batch_size = Metrics.distribution(METRICS_NAMESPACE, "user_write_batch_size")
        self.deleted = Metrics.counter(METRICS_NAMESPACE, "users_forgotten_written")
        self.failed = stage_failures("user_write")

    def setup(self) -> None:
        self._client = self.settings.client()
        self._guard = shared_guard(self.settings)

    def start_bundle(self) -> None:
        self._buffer: list[UserWrite] = []
        self._events: dict[str, list[Any]] = {}

    def process(self, element: UserWrite | UserDoc) -> None:
        write = element if isinstance(element, UserWrite) else UserWrite(element)
        self._buffer.append(write)
        if write.events:
            self._events.setdefault(write.user_id, []).extend(write.events)

    def finish_bundle(self) -> Iterator[Any]:
        if not self._buffer:
            return
        buffer, events = self._buffer, self._events
        self._buffer, self._events = [], {}
        fresh = self._guard.claim(buffer)
        self.skipped.inc(len(buffer) - len(fresh))
        failed: set[int] = set()
        try:
            forgets = [i for i, w in enumerate(fresh) if w.forgotten_at and any(
                isinstance(e, ForgetRequest) for e in events.get(w.user_id, ()))]
            if forgets:
                yield from self._forget([fresh[i] for i in forgets], events, failed, forgets)
            coll = self._client.collection(self.collection)
            sets = [i for i, w in enumerate(fresh) if i not in failed and w.event_count > 0]
            data = [(coll.document(fresh[i].user_id), fresh[i].to_document()) for i in sets]
            for failure in commit_chunks(self._client, data):
                if failure is None:
                    continue
                span, error = failure
                lost_users = [sets[i] for i in span]
                failed.update(lost_users)
                lost = [e for i in lost_users for e in events.get(fresh[i].user_id, ())]
                self.failed.inc(len(lost))
                yield from (beam.pvalue.TaggedOutput(DEAD_LETTER, d)
                            for d in _dead_letters(lost, "user_write", error))
        finally:
            self._guard.release([d for i, d in enumerate(fresh) if i not in failed], True)
            self._guard.release([fresh[i] for i in failed], False)
        self.written.inc(len(fresh) - len(failed))
        self.batch_size.update(len(fresh))

    def _forget(self, writes: Sequence[UserWrite], events: dict[str, list[Any]], failed: set[int],
                indexes: Sequence[int]) -> Iterator[Any]:
        """One commit: ``forgotten_users/{id}`` of every forgotten user, and the deletion of the
        ``users/{id}`` that hold nothing since; on failure the users' records -> dead letters."""
        batch = self._client.batch()
        tombstones = self._client.collection(names.FORGOTTEN_USERS)
        users = self._client.collection(self.collection)
        for write in writes:
            batch.set(tombstones.document(write.user_id), tombstone_document(write))
            if write.event_count == 0:
                batch.delete(users.document(write.user_id))
        try:
            batch.commit()
        except write_errors() as e:
            failed.update(indexes)
            lost = [r for w in writes for r in events.get(w.user_id, ())]
            self.failed.inc(len(lost))
            yield from (beam.pvalue.TaggedOutput(DEAD_LETTER, d)
                        for d in _dead_letters(lost, "user_forget", e))
            return
        self.deleted.inc(len(writes))


class WriteItemDocsFn(beam.DoFn):
    """Buffers ``ItemDoc``\\s for a bundle and commits them in batches.

    Merged into an existing document without ``popularity``, which belongs to training.
    """

    def __init__(self, settings: FirestoreSettings, collection: str = names.ITEMS) -> None:
        self.settings = settings
        self.collection = collection
        self.written = Metrics.counter(METRICS_NAMESPACE, "item_docs_written")
        self.failed = stage_failures("item_write")

    def setup(self) -> None:
        self._client = self.settings.client()

    def start_bundle(self) -> None:
        self._buffer: dict[str, ItemDoc] = {}

    def process(self, doc: ItemDoc) -> None:
        self._buffer[doc.item_id] = doc  # the latest update of an item in a bundle wins

    def finish_bundle(self) -> Iterator[Any]:
        if not self._buffer:
            return
        docs, self._buffer = list(self._buffer.values()), {}
        coll = self._client.collection(self.collection)
        writes = [(coll.document(d.item.item_id), _without_popularity(d.to_document())) for d in docs]
        failed = 0
        for failure in commit_chunks(self._client, writes, merge=True):
            if failure is not None:
                span, error = failure
                failed += len(span)
                self.failed.inc(len(span))
                yield from (beam.pvalue.TaggedOutput(DEAD_LETTER, d)
                            for d in _dead_letters([docs[i].item for i in span], "item_write", error))
        self.written.inc(len(docs) - failed)


def _without_popularity(doc: dict[str, Any]) -> dict[str, Any]:
    doc.pop("popularity", None)
    return doc


def _trending_rank(doc: dict[str, Any] | TrendingDoc) -> tuple[int, int]:
    if isinstance(doc, TrendingDoc):
        doc = doc.to_document()
    total = sum(int(e.get("views", 0)) + int(e.get("add_to_cart", 0)) + int(e.get("purchases", 0))
                for e in doc.get("items") or ())
    return int(doc.get("window_end") or 0), total


# Parallel bundles contend for stats/trending; after this many aborted attempts the list is left
# to the next pane (derived data) instead of failing the bundle.
TRENDING_TRANSACTION_ATTEMPTS = 10


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
        self.failed = Metrics.counter(METRICS_NAMESPACE, "trending_write_failed")

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
        try:
            newer = self._write_if_newer(doc)
        except write_errors() as e:  # derived data: the next pane writes the list again
            self.failed.inc()
            LOG.warning("stats/trending write failed: %s", e)
            return
        if newer:
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

        try:
            return write(self._client.transaction(max_attempts=TRENDING_TRANSACTION_ATTEMPTS))
        except ValueError as e:  # the client's "Failed to commit transaction in N attempts"
            if isinstance(e.__cause__, write_errors()):
                raise e.__cause__ from e
            raise
