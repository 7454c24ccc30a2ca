"""The recommendation service: the index lifecycle plus the request strategy, per process.

:class:`Recommender` is what ``main.py`` (and the serving benchmarks) use. It owns an
:class:`~recommender.lifecycle.IndexManager` (cold start, hot reload, IVF build, trending,
health) and answers requests with :mod:`recommender.strategy` (personalised, session, cold
start, similar items), reading the user document from Firestore in between.

Every ``/recommendations`` answer is attributable: a fresh ``recommendation_id``, the
``experiment`` and ``arm`` it was served under (:mod:`recommender.experiments`; null when none),
and a served record queued for Pub/Sub (:mod:`recommender.served`, ``SERVED_TOPIC``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from schemas.experiments import ArmOverrides, ServedRecord
from schemas.firestore import UserDoc

from . import strategy
from .config import Settings
from .experiments import Assignment, unit_of, with_overrides
from .index import ItemIndex
from .lifecycle import IndexManager
from .params import RecommendParams, SimilarParams
from .served import ServedPublisher
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

PERSONALIZED, SESSION, COLD_START = strategy.PERSONALIZED, strategy.SESSION, strategy.COLD_START


class Recommender:
    """Answers ``/recommendations``, ``/similar-items`` and ``/healthz`` from memory + Firestore."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time,
                 served: ServedPublisher | None = None) -> None:
        self.settings = settings
        self.indexes = IndexManager(settings, store, clock)
        self.served = served if served is not None else ServedPublisher.from_settings(settings)
        self._clock = clock

    @property
    def store(self) -> Store:
        return self.indexes.store

    @store.setter
    def store(self, store: Store) -> None:
        self.indexes.store = store

    @property
    def index(self) -> ItemIndex | None:
        return self.indexes.index

    def start(self) -> None:
        """Cold start (see :meth:`IndexManager.start`)."""
        self.indexes.start()

    def refresh(self) -> dict[str, Any]:
        """Follow ``models/current``, apply new items, renew trending now; return what changed."""
        return self.indexes.refresh()

    def maybe_build_ivf(self) -> bool:
        """Start the background IVF build of the current index if due (``IVF_BUILD=background``)."""
        return self.indexes.maybe_build_ivf()

    def with_ivf_built(self, index: ItemIndex) -> ItemIndex:
        """``index`` with the configured retrieval (IVF partitions built now, if configured)."""
        return self.indexes.with_ivf_built(index)


    # ------------------------------------------------------------------ requests
    def recommend(self, p: RecommendParams) -> dict[str, Any]:
        """Recommendations for one request; degrades to in-memory trending if Firestore fails.

        An experiment's arm (if the request's user or session is in one) overrides alpha,
        diversity, pool, retrieval and model version; ``model_version`` in the answer is the
        version that ranked (the current one until an arm's version is loaded).
        """
        self.indexes.maybe_refresh()
        if self.indexes.ivf_thread is None:
            self.indexes.maybe_build_ivf()
        now = self._clock()
        assignment = self.indexes.experiments.assign(unit_of(p), int(now * 1000))
        arm = assignment.overrides if assignment is not None else None
        p = with_overrides(p, arm)
        index = self.indexes.index_for(arm.model_version if arm is not None else None)
        user: UserDoc | None = None
        if p.user_id is not None:
            try:
                user = self.store.get_user(p.user_id)
            except StoreUnavailable as e:
                log.warning("degraded: %s", e)
                return self._answered(strategy.cold_start(
                    index, p, None, self.indexes.trending, degraded=True,
                    default_alpha=self.settings.default_alpha), p, assignment, now)
        self.indexes.ensure_trending()
        return self._answered(self.rank_for(index, p, user, arm), p, assignment, now)

    def _answered(self, body: dict[str, Any], p: RecommendParams, assignment: Assignment | None,
                  now: float) -> dict[str, Any]:
        """``body`` with its ``recommendation_id``, experiment and arm; its served record queued."""
        rid = uuid.uuid4().hex
        experiment = assignment.experiment if assignment is not None else None
        arm = assignment.arm if assignment is not None else None
        body.update(recommendation_id=rid, experiment=experiment, arm=arm)
        if self.served.enabled:
            self.served.submit(ServedRecord(
                recommendation_id=rid, timestamp=int(now * 1000),
                items=tuple(i["item_id"] for i in body["items"]), model_version=body["model_version"],
                strategy=body["strategy"], user_id=p.user_id, session_id=p.session_id,
                experiment=experiment, arm=arm))
        return body

    def rank_for(self, index: ItemIndex | None, p: RecommendParams, user: UserDoc | None,
                 arm: ArmOverrides | None = None) -> dict[str, Any]:
        """Pick the strategy for this user/session and rank; no Firestore access."""
        return strategy.rank_for(index, p, user, self.indexes.trending, self.settings, arm)

    def similar(self, p: SimilarParams) -> dict[str, Any]:
        """Items most similar to ``p.item_id`` by cosine: embeddings if it has one, else content."""
        self.indexes.maybe_refresh()
        return strategy.similar_items(self.indexes.index, p)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status, body)``: 200 when an index (or at least trending) is available, else 503."""
        self.indexes.maybe_refresh()
        status, body = self.indexes.health()
        body["served_records"] = self.served.health()
        return status, body
