"""Embeddings with the current towers: users from their updated history, new catalogue items.

Two interchangeable ways to batch user embeddings (``--inference``):

* ``bundle`` (:class:`EmbedUsersFn`): buffer the bundle's updated users (latest state per user)
  and embed them in one call in ``finish_bundle``. Adds no waiting: a bundle is what the
  runner already delivered together.
* ``runinference`` (:class:`EmbedUsersRunInference`): Beam's ``RunInference`` with a
  ``KeyedModelHandler`` around :class:`TowersModelHandler`; ``BatchElements`` batches inside
  the bundle too.

Both read the towers from a :class:`~pipelines.streaming.model_watcher.ModelWatcher`, so a new
``models/current`` is used from the next batch on, without a restart. A batch the towers fail on
(``EMBED_ERRORS``) goes to the dead-letter output, its users' events with the reason; those users'
documents are not written then (their state keeps the events, so the next write has them).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.streaming.firestore_io import FirestoreCurrentModel, FirestoreSettings, UserWrite
from pipelines.streaming.model_watcher import LoadedModel, ModelWatcher, shared_watcher
from pipelines.streaming.parse import DEAD_LETTER, METRICS_NAMESPACE, failed_record, stage_failures
from pipelines.streaming.user_state import UserState, UserUpdate, pack_dedup
from schemas.catalog import CatalogItem
from schemas.clock import now_ms
from schemas.firestore import ItemDoc, UserDoc


class CurrentModel(Protocol):
    def current(self) -> LoadedModel | None: ...


class ModelSource(Protocol):
    """Picklable settings that give a worker its (shared) current-model holder."""

    def watcher(self) -> CurrentModel: ...


class WatchedModel:
    """Production model source: ``models/current`` in Firestore, ``model_dir`` as fallback."""

    def __init__(self, settings: FirestoreSettings, model_dir: str | None,
                 refresh_seconds: float) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.refresh_seconds = refresh_seconds

    def watcher(self) -> ModelWatcher:
        key = (self.settings, self.model_dir, self.refresh_seconds)
        return shared_watcher(key, lambda: ModelWatcher(
            FirestoreCurrentModel(self.settings), refresh_seconds=self.refresh_seconds,
            fallback_uri=self.model_dir))




def embed_errors() -> tuple[type[BaseException], ...]:
    """What a tower call can raise on bad input or state: Python's value/shape errors and, once
    TensorFlow is loaded, its ``OpError``."""
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, IndexError)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        errors += (tf.errors.OpError,)
    return errors


def as_update(element: UserState | UserUpdate) -> UserUpdate:
    """A bare ``UserState`` (no events known) as a :class:`UserUpdate`."""
    return element if isinstance(element, UserUpdate) else UserUpdate(element)


def _rank(state: UserState) -> tuple[int, int]:
    """Which of two states of a user is newer: a later forget, then more events."""
    return state.forgotten_at, state.event_count


def user_docs(states: Sequence[UserState], model: LoadedModel | None) -> list[UserDoc]:
    """``UserDoc``\\s for ``states``, embedded in one call when a model is loaded."""
    embeddings: Any = [None] * len(states)
    version = None
    if model is not None and states:
        embeddings = model.towers.embed_users([s.user_id for s in states], [s.item_ids for s in states])
        version = model.version
    updated_at = now_ms()
    return [UserDoc(user_id=s.user_id, history=s.history, last_event_id=s.last_event_id,
                    last_event_ts=s.last_event_ts, updated_at=updated_at, model_version=version,
                    embedding=tuple(float(x) for x in e) if e is not None else None,
                    event_count=s.event_count, seen=s.seen)
            for s, e in zip(states, embeddings)]


def item_docs(items: Sequence[CatalogItem], model: LoadedModel | None) -> list[ItemDoc]:
    """``ItemDoc``\\s for new/updated catalogue items: candidate embedding and content vector."""
    embeddings: Any = [None] * len(items)
    content: Any = [None] * len(items)
    version = None
    if model is not None and items:
        embeddings = model.towers.embed_items(list(items))
        if model.content_encoder is not None:
            content = model.content_encoder.encode_many(list(items))
        version = model.version
    indexed_at = now_ms()
    return [ItemDoc(item=item, embedding=tuple(float(x) for x in e) if e is not None else None,
                    content_vector=tuple(float(x) for x in c) if c is not None else None,
                    model_version=version, indexed_at=indexed_at)
            for item, e, c in zip(items, embeddings, content)]


def _global(value: Any, timestamp: float) -> WindowedValue:
    return WindowedValue(value, timestamp, (GlobalWindow(),))


class EmbedUsersFn(beam.DoFn):
    """``UserUpdate`` (or ``UserState``) -> ``UserWrite`` with the current query tower, one batch
    per bundle; a failed batch's events -> ``dead_letter``."""

    def __init__(self, models: ModelSource) -> None:
        self.models = models
        self.batch_size = Metrics.distribution(METRICS_NAMESPACE, "embed_users_batch_size")
        self.no_model = Metrics.counter(METRICS_NAMESPACE, "users_without_model")
        self.failed = stage_failures("embed_users")

    def setup(self) -> None:
        self._watcher = self.models.watcher()

    def start_bundle(self) -> None:
        self._buffer: dict[str, tuple[UserUpdate, float]] = {}

    def process(self, element: UserState | UserUpdate, timestamp: Any = beam.DoFn.TimestampParam) -> None:
        update = as_update(element)
        previous = self._buffer.get(update.state.user_id)
        if previous is not None:  # the newest state, and every event either carried
            newest = update.state if _rank(update.state) > _rank(previous[0].state) else previous[0].state
            update = UserUpdate(newest, previous[0].events + update.events)
        self._buffer[update.state.user_id] = (update, timestamp)

    def finish_bundle(self) -> Iterator[Any]:
        if not self._buffer:
            return
        model = self._watcher.current()
        pending = list(self._buffer.values())
        self._buffer = {}
        try:
            docs = user_docs([u.state for u, _ in pending], model)
        except embed_errors() as e:
            for update, ts in pending:
                self.failed.inc(len(update.events))
                for event in update.events:
                    dead = failed_record(event, "embed_users", e)
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, _global(dead, ts))
            return
        self.batch_size.update(len(docs))
        if model is None:
            self.no_model.inc(len(docs))
        for doc, (update, ts) in zip(docs, pending):
            state = update.state
            yield _global(UserWrite(doc, update.events, pack_dedup(state), state.forgotten_at), ts)


class EmbedItemsFn(beam.DoFn):
    """``CatalogItem`` -> ``ItemDoc`` with the current candidate tower, one batch per bundle."""

    def __init__(self, models: ModelSource) -> None:
        self.models = models
        self.no_model = Metrics.counter(METRICS_NAMESPACE, "items_without_model")

    def setup(self) -> None:
        self._watcher = self.models.watcher()

    def start_bundle(self) -> None:
        self._buffer: list[tuple[CatalogItem, Any]] = []

    def process(self, item: CatalogItem, timestamp: Any = beam.DoFn.TimestampParam) -> None:
        self._buffer.append((item, timestamp))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if not self._buffer:
            return
        model = self._watcher.current()
        pending, self._buffer = self._buffer, []
        docs = item_docs([i for i, _ in pending], model)
        if model is None:
            self.no_model.inc(len(docs))
        for doc, (_, ts) in zip(docs, pending):
            yield _global(doc, ts)


class TowersModelHandler(ModelHandler[UserState, PredictionResult, CurrentModel]):
    """``RunInference`` handler: the "model" is the hot-reloading holder, read per batch."""

    def __init__(self, models: ModelSource, max_batch_size: int = 500) -> None:
        super().__init__()
        self.models = models
        self._max_batch_size = max_batch_size

    def load_model(self) -> CurrentModel:
        return self.models.watcher()

    def run_inference(self, batch: Sequence[UserUpdate], model: CurrentModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        loaded = model.current()
        if loaded is None:
            return [PredictionResult(u, None, None) for u in batch]
        states = [u.state for u in batch]
        emb = loaded.towers.embed_users([s.user_id for s in states], [s.item_ids for s in states])
        return [PredictionResult(u, e, loaded.version) for u, e in zip(batch, emb)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def share_model_across_processes(self) -> bool:
        return False


def _doc_from_prediction(keyed: tuple[str, PredictionResult]) -> UserWrite:
    _, result = keyed
    update: UserUpdate = result.example
    state = update.state
    emb = result.inference
    return UserWrite(UserDoc(user_id=state.user_id, history=state.history, last_event_id=state.last_event_id,
                             last_event_ts=state.last_event_ts, updated_at=now_ms(),
                             model_version=result.model_id,
                             embedding=tuple(float(x) for x in emb) if emb is not None else None,
                             event_count=state.event_count, seen=state.seen), update.events,
                     pack_dedup(state), state.forgotten_at)


def _failed_batch(failed: tuple[Any, BaseException]) -> Iterator[Any]:
    """RunInference's failed batch (keyed updates, error) -> its events' dead letters."""
    batch, error = failed
    for _, update in batch:
        for event in update.events:
            yield failed_record(event, "embed_users", error)


class EmbedUsers(beam.PTransform):
    """``UserUpdate`` -> ``docs`` (``UserWrite``) with the current query tower (``bundle`` or
    ``runinference``) and ``dead_letter`` (the events of batches the towers failed on)."""

    def __init__(self, models: ModelSource, inference: str = "bundle") -> None:
        super().__init__()
        if inference not in ("bundle", "runinference"):
            raise ValueError(f"inference must be 'bundle' or 'runinference', got {inference!r}")
        self.models = models
        self.inference = inference

    def expand(self, states: beam.PCollection) -> dict[str, beam.PCollection]:
        if self.inference == "bundle":
            out = states | "EmbedBundle" >> beam.ParDo(EmbedUsersFn(self.models)).with_outputs(
                DEAD_LETTER, main="docs")
            return {"docs": out.docs, DEAD_LETTER: out[DEAD_LETTER]}
        main, other = (states
                       | "KeyByUser" >> beam.Map(lambda s: (as_update(s).state.user_id, as_update(s)))
                       | "RunInference" >> RunInference(KeyedModelHandler(TowersModelHandler(self.models)))
                       .with_exception_handling(exc_class=embed_errors()))
        return {"docs": main | "ToUserDoc" >> beam.Map(_doc_from_prediction),
                DEAD_LETTER: other.failed_inferences | "FailedToDeadLetters" >> beam.FlatMap(_failed_batch)}


class EmbedItems(beam.PTransform):
    """``CatalogItem`` -> ``ItemDoc`` with the current candidate tower and content encoder."""

    def __init__(self, models: ModelSource) -> None:
        super().__init__()
        self.models = models

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        return items | "EmbedBundle" >> beam.ParDo(EmbedItemsFn(self.models))
