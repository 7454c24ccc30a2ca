"""The recommendation service: the index lifecycle plus the request strategy, per process.

:class:`Recommender` is what ``main.py`` (and the serving benchmarks) use. It owns an
:class:`~recommender.lifecycle.IndexManager` (cold start, hot reload, IVF build, trending,
health) and answers requests with :mod:`recommender.strategy` (personalised, session, cold
start, similar items), reading the user document from Firestore in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from schemas.firestore import UserDoc

from . import strategy
from .config import Settings
from .index import ItemIndex
from .lifecycle import IndexManager
from .params import RecommendParams, SimilarParams
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

PERSONALIZED, SESSION, COLD_START = strategy.PERSONALIZED, strategy.SESSION, strategy.COLD_START


class Recommender:
    """Answers ``/recommendations``, ``/similar-items`` and ``/healthz`` from memory + Firestore."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.indexes = IndexManager(settings, store, clock)

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
        """Recommendations for one request; degrades to in-memory trending if Firestore fails."""
        self.indexes.maybe_refresh()
        if self.indexes.ivf_thread is None:
            self.indexes.maybe_build_ivf()
        user: UserDoc | None = None
        if p.user_id is not None:
            try:
                user = self.store.get_user(p.user_id)
            except StoreUnavailable as e:
                log.warning("degraded: %s", e)
                return strategy.cold_start(self.indexes.index, p, None, self.indexes.trending,
                                           degraded=True, default_alpha=self.settings.default_alpha)
        self.indexes.ensure_trending()
        return self.rank_for(self.indexes.index, p, user)

    def rank_for(self, index: ItemIndex | None, p: RecommendParams, user: UserDoc | None
                 ) -> dict[str, Any]:
        """Pick the strategy for this user/session and rank; no Firestore access."""
        return strategy.rank_for(index, p, user, self.indexes.trending, self.settings)

    def similar(self, p: SimilarParams) -> dict[str, Any]:
        """Items most similar to ``p.item_id`` by cosine: embeddings if it has one, else content."""
        self.indexes.maybe_refresh()
        return strategy.similar_items(self.indexes.index, p)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status, body)``: 200 when an index (or at least trending) is available, else 503."""
        self.indexes.maybe_refresh()
        return self.indexes.health()
