"""Firestore at attribution's edges: seed reads, the per-arm figures, the waiting events.

* ``stats/experiments/{experiment_id}/{arm}``: ``{**arm_figures(counts), "updated_at": ms}``;
  ``.../_summary``: ``compare_arms`` of the arms (control first), ``arms`` (their order) and
  ``updated_at``; ``.../_dedup``: the aggregator's memory of recently counted contributions
  (:func:`pipelines.streaming.attribution.pack_counted`, bounded by ``DEDUP_RETENTION_S`` and
  ``MAX_COUNTED``). One experiment's documents are one batch: counts, summary and memory agree.
* ``attribution_pending/{recommendation_id}``: ``events`` (``{"item_id", "event_type"}`` maps)
  waiting for their served record, ``updated_at`` and ``expire_at`` (for a Firestore TTL
  policy); deleted when the join state expires.
* ``attribution_served/{recommendation_id}``: a served record of an experiment (its JSON fields)
  and ``expire_at`` (served time + TTL, for a Firestore TTL policy; readers ignore it after).

Every commit finishes in ``finish_bundle``, so what a bundle wrote is durable before the local
read acks its messages. A failed commit is retried, then counted and logged
(``experiment_stats_write_failed`` / ``attribution_pending_write_failed``), never raised: the
aggregator's state still holds the counts and its next write carries them.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.streaming.attribution import (
    TTL_S,
    ExperimentWrite,
    Item,
    PendingWrite,
    StoredExperiment,
    pack_counted,
    unpack_counted,
)
from pipelines.streaming.firestore_io import MAX_BATCH_WRITES, FirestoreSettings, write_errors
from pipelines.streaming.parse import METRICS_NAMESPACE
from schemas import names
from schemas.errors import InvalidRecord
from schemas.experiments import (
    SUMMARY_DOC,
    ArmCounts,
    Experiment,
    ServedRecord,
    arm_figures,
    compare_arms,
    is_arm_doc,
    stats_path,
    validate_served,
)

LOG = logging.getLogger(__name__)
PENDING_COLLECTION = "attribution_pending"  # events waiting for their served record
SERVED_COLLECTION = "attribution_served"  # served records of experiments, for a restarted join
DEDUP_DOC = "_dedup"  # stats/experiments/{id}/_dedup: the aggregator's dedup memory
WRITE_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.2


def experiment_stats(client: Any, experiment_id: str) -> Any:
    """The ``stats/experiments/{experiment_id}`` collection."""
    return client.collection(stats_path(experiment_id))


def stats_documents(write: ExperimentWrite) -> dict[str, dict[str, Any]]:
    """Document id -> data of one experiment's write: every arm, ``_summary``, ``_dedup``."""
    docs = {arm: {**arm_figures(counts), "updated_at": write.updated_at} for arm, counts in write.arms}
    docs[SUMMARY_DOC] = {**compare_arms(list(write.arms)), "arms": [a for a, _ in write.arms],
                         "updated_at": write.updated_at}
    docs[DEDUP_DOC] = {"counted": pack_counted(write.counted), "updated_at": write.updated_at}
    return docs


class FirestoreAttributionStore:
    """Seeds attribution from Firestore (see :class:`pipelines.streaming.attribution.AttributionStore`)."""

    def __init__(self, settings: FirestoreSettings) -> None:
        self.settings = settings

    def pending(self, recommendation_id: str) -> tuple[Item, ...]:
        snap = self.settings.client().collection(PENDING_COLLECTION).document(recommendation_id).get()
        if not snap.exists:
            return ()
        return tuple((str(e["item_id"]), str(e["event_type"])) for e in snap.to_dict().get("events") or ())

    def served(self, recommendation_id: str) -> ServedRecord | None:
        snap = self.settings.client().collection(SERVED_COLLECTION).document(recommendation_id).get()
        if not snap.exists:
            return None
        data = snap.to_dict()
        data.pop("expire_at", None)
        try:
            return validate_served({k: v for k, v in data.items() if v is not None})
        except InvalidRecord as e:
            LOG.warning("%s/%s is invalid: %s", SERVED_COLLECTION, recommendation_id, e)
            return None

    def experiment(self, experiment_id: str) -> StoredExperiment:
        client = self.settings.client()
        arms: dict[str, ArmCounts] = {}
        counted: tuple = ()
        for snap in experiment_stats(client, experiment_id).stream():
            if snap.id == DEDUP_DOC:
                counted = unpack_counted(snap.to_dict().get("counted"))
            elif is_arm_doc(snap.id):
                arms[snap.id] = ArmCounts.from_dict(snap.to_dict())
        return StoredExperiment(arms, counted, self._order(client, experiment_id))

    @staticmethod
    def _order(client: Any, experiment_id: str) -> tuple[str, ...] | None:
        snap = client.collection(names.EXPERIMENTS).document(experiment_id).get()
        if not snap.exists:
            return None
        try:
            return tuple(a.name for a in Experiment.from_document(experiment_id, snap.to_dict()).arms)
        except InvalidRecord as e:
            LOG.warning("experiments/%s is invalid (%s): arms in name order", experiment_id, e)
            return None


def _commit_with_retries(build: Any, failed: Any, what: str) -> bool:
    """Commit ``build()`` (a fresh batch each attempt); count and log a final failure."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            build().commit()
            return True
        except write_errors() as e:
            if attempt == WRITE_ATTEMPTS - 1:
                failed.inc()
                LOG.warning("%s write failed after %d attempts: %s", what, WRITE_ATTEMPTS, e)
                return False
            time.sleep(RETRY_BACKOFF_S * (attempt + 1))
    return False


class WriteExperimentStatsFn(beam.DoFn):
    """Per bundle: the newest :class:`ExperimentWrite` per experiment, one batch each."""

    def __init__(self, settings: FirestoreSettings) -> None:
        self.settings = settings
        self.written = Metrics.counter(METRICS_NAMESPACE, "experiment_stats_written")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "experiment_stats_write_failed")

    def setup(self) -> None:
        self._client = self.settings.client()

    def start_bundle(self) -> None:
        self._newest: dict[str, ExperimentWrite] = {}

    def process(self, write: ExperimentWrite) -> None:
        held = self._newest.get(write.experiment_id)
        if held is None or write.seq > held.seq:
            self._newest[write.experiment_id] = write

    def finish_bundle(self) -> None:
        writes, self._newest = list(self._newest.values()), {}
        for write in writes:
            coll = experiment_stats(self._client, write.experiment_id)
            docs = stats_documents(write)

            def build(coll: Any = coll, docs: dict[str, dict[str, Any]] = docs) -> Any:
                batch = self._client.batch()
                for doc_id, data in docs.items():
                    batch.set(coll.document(doc_id), data)
                return batch

            if _commit_with_retries(build, self.failed, f"stats/experiments/{write.experiment_id}"):
                self.written.inc()


class WriteAttributionDocsFn(beam.DoFn):
    """Per bundle, in batches: stores served records of experiments, adds waiting events to
    ``attribution_pending/{id}`` and deletes matched or expired ones."""

    def __init__(self, settings: FirestoreSettings, ttl_s: float = TTL_S) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self.written = Metrics.counter(METRICS_NAMESPACE, "attribution_docs_written")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "attribution_docs_write_failed")

    def setup(self) -> None:
        self._client = self.settings.client()

    def start_bundle(self) -> None:
        self._served: dict[str, ServedRecord] = {}
        self._pending: dict[str, list[Item] | None] = {}  # None: delete

    def process(self, write: PendingWrite | ServedRecord) -> None:
        if isinstance(write, ServedRecord):
            self._served[write.recommendation_id] = write
        elif write.delete:
            self._pending[write.recommendation_id] = None
        else:
            held = self._pending.get(write.recommendation_id)
            self._pending[write.recommendation_id] = [*(held or ()), *write.events]

    def finish_bundle(self) -> None:
        from google.cloud import firestore

        now = int(time.time() * 1000)
        expire = _utc(now / 1000 + self.ttl_s)
        pending = self._client.collection(PENDING_COLLECTION)
        served = self._client.collection(SERVED_COLLECTION)
        ops: list[tuple[str, Any, Any]] = [("set", served.document(rid), self._served_doc(r))
                                           for rid, r in self._served.items()]
        for rid, events in self._pending.items():
            if events is None:
                ops.append(("delete", pending.document(rid), None))
            else:
                values = [{"item_id": i, "event_type": k} for i, k in events]
                ops.append(("merge", pending.document(rid), {"events": firestore.ArrayUnion(values),
                                                             "updated_at": now, "expire_at": expire}))
        self._served, self._pending = {}, {}

        def build(chunk: list[tuple[str, Any, Any]]) -> Any:
            batch = self._client.batch()
            for op, ref, data in chunk:
                if op == "delete":
                    batch.delete(ref)
                else:
                    batch.set(ref, data, merge=op == "merge")
            return batch

        for i in range(0, len(ops), MAX_BATCH_WRITES):
            chunk = ops[i:i + MAX_BATCH_WRITES]
            if _commit_with_retries(lambda chunk=chunk: build(chunk), self.failed, "attribution docs"):
                self.written.inc(len(chunk))

    def _served_doc(self, record: ServedRecord) -> dict[str, Any]:
        return {**record.to_dict(), "expire_at": _utc(record.timestamp / 1000 + self.ttl_s)}


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)
