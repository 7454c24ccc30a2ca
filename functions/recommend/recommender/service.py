"""The recommendation service: index lifecycle, strategies and fallbacks.

One :class:`Recommender` per process. It loads the current model's item-index snapshot
at cold start, then (at most every ``refresh_seconds``, in a background thread started
by a request, so no request waits) follows ``models/current`` to a new version and
polls ``items`` for documents indexed since, swapping in a new :class:`ItemIndex`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from schemas.firestore import CurrentModelDoc, ItemDoc, TrendingDoc, UserDoc
from scoring.ranking import Filter, blocked_mask, content_mean, pool_size, rank_cosine, rank_hybrid

from .config import Settings
from .errors import NotFound, Unavailable
from .index import ItemIndex, SnapshotLoadError, read_snapshot
from .params import RecommendParams, SimilarParams
from .store import StoreUnavailable

log = logging.getLogger(__name__)

PERSONALIZED, SESSION, COLD_START = "personalized", "session", "cold_start"


class Store(Protocol):
    """What the service reads from Firestore (see :class:`store.FirestoreStore`)."""

    def get_user(self, user_id: str) -> UserDoc | None: ...
    def get_current_model(self) -> CurrentModelDoc | None: ...
    def get_trending(self) -> TrendingDoc | None: ...
    def items_since(self, indexed_from: int, limit: int
                    ) -> list[tuple[str, int, ItemDoc | None]]: ...


@dataclass(frozen=True)
class Query:
    """The vector a request retrieves with, and where it came from."""

    vector: np.ndarray
    source: str  # user_embedding | history_mean | session_mean
    profile_rows: np.ndarray  # rows whose content vectors form the CB profile


def _round(x: float) -> float:
    return round(float(x), 6)


def _rounded(*columns: np.ndarray) -> list[list[float]]:
    """``[[_round(v) for v in x] for x in columns]`` for equal-length float arrays, in one numpy call."""
    return np.round(np.array(columns, dtype=np.float64), 6).tolist()


def _unit_or_none(v: np.ndarray) -> np.ndarray | None:
    """``v`` scaled to unit L2 norm, or None when it is all zeros (no content profile)."""
    norm = float(np.sqrt(np.dot(v, v)))
    return v / np.float32(norm) if norm > 0 else None


class Recommender:
    """Answers ``/recommendations``, ``/similar-items`` and ``/healthz`` from memory + Firestore."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._index: ItemIndex | None = None
        self._seen_at_through: frozenset[str] = frozenset()
        self._trending: TrendingDoc | None = None
        self._trending_at = 0.0
        self._last_check = 0.0
        self._refresh_lock = threading.Lock()
        self._defer_ivf = False
        self._ivf_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ index lifecycle
    @property
    def index(self) -> ItemIndex | None:
        return self._index

    def start(self) -> None:
        """Cold start: load the current model's snapshot (or ``INDEX_URI``) and trending.

        With ``IVF_BUILD=background`` the IVF partitions are not built here: the first request of
        each serving process starts that in the background (gunicorn forks its workers after this
        import, and a thread does not cross a fork) and requests use the exact scan until it is
        swapped in. With ``startup`` (default) they are built now, once, shared by the workers.
        """
        self._defer_ivf = self.settings.ivf_build == "background"
        try:
            self.refresh()
            if self._index is None and self.settings.index_uri:
                try:
                    self._install(ItemIndex.from_snapshot(read_snapshot(self.settings.index_uri)))
                except SnapshotLoadError as e:
                    log.error("cold start: %s", e)
        finally:
            self._defer_ivf = False

    def _install(self, index: ItemIndex, seen: frozenset[str] = frozenset()) -> None:
        if not self._defer_ivf:
            index = self.with_retrieval(index)
        self._index, self._seen_at_through = index, seen  # one reference swap each: atomic

    def _ivf_due(self, index: ItemIndex | None) -> bool:
        s = self.settings
        return (s.retrieval == "ivf" and index is not None and index.ivf is None
                and index.size >= s.ivf_min_items)

    def maybe_build_ivf(self) -> bool:
        """Start building the IVF partitions of the current index in the background if due."""
        if not self._ivf_due(self._index) or (self._ivf_thread is not None and self._ivf_thread.is_alive()):
            return False
        self._ivf_thread = threading.Thread(target=self._build_ivf, name="ivf-build", daemon=True)
        self._ivf_thread.start()
        return True

    def _build_ivf(self) -> None:
        index = self._index
        if not self._ivf_due(index):
            return
        built = self.with_retrieval(index)
        with self._refresh_lock:
            if self._index is index:  # a refresh in between installed its own (already with IVF)
                self._index = built

    def with_retrieval(self, index: ItemIndex) -> ItemIndex:
        """``index`` with the configured retrieval: IVF partitions built here (at load, not per request)."""
        s = self.settings
        if s.retrieval == "ivf" and index.ivf is None and index.size >= s.ivf_min_items:
            t = time.perf_counter()
            index = index.with_ivf(s.ivf_nlist, s.ivf_nprobe)
            log.info("IVF index: %d partitions, nprobe %d, built in %.2f s", index.ivf.nlist,
                     index.ivf.nprobe, time.perf_counter() - t)
        elif s.retrieval == "exact" and index.ivf is not None:
            index = dataclasses.replace(index, ivf=None)
        return index

    def refresh(self) -> dict[str, Any]:
        """Follow ``models/current``, apply new items, renew trending; return what changed."""
        changed: dict[str, Any] = {"version": None, "items": 0, "trending": False}
        with self._refresh_lock:
            self._last_check = self._clock()
            try:
                changed["version"] = self._follow_current_model()
                changed["items"] = self._apply_new_items()
                changed["trending"] = self._renew_trending(force=False)
            except StoreUnavailable as e:
                log.warning("refresh skipped: %s", e)
            except SnapshotLoadError as e:
                log.error("refresh: %s", e)
        return changed

    def maybe_refresh(self) -> bool:
        """Start a background refresh if one is due and none is running; never waits."""
        if self._clock() - self._last_check < self.settings.refresh_seconds:
            return False
        if self._refresh_lock.locked():
            return False
        self._last_check = self._clock()
        threading.Thread(target=self.refresh, name="index-refresh", daemon=True).start()
        return True

    def _follow_current_model(self) -> str | None:
        current = self.store.get_current_model()
        if current is None or (self._index is not None and current.version == self._index.version):
            return None
        snap = read_snapshot(current.index_uri)
        if snap.version != current.version:
            log.warning("snapshot %s says version %s; serving it as %s", current.index_uri,
                        snap.version, current.version)
            snap.version = current.version
        # The publish step rewrites every item of the version (indexed_at = publish time) before it
        # switches models/current; those are in the snapshot already, so polling starts at the switch.
        self._install(ItemIndex.from_snapshot(snap, items_from=current.switched_at))
        log.info("loaded model %s: %d items", current.version, snap.item_ids.shape[0])
        return current.version

    def _apply_new_items(self) -> int:
        index = self._index
        if index is None:
            return 0
        rows = self.store.items_since(index.updated_through, self.settings.items_poll_limit)
        fresh = [(i, t, d) for i, t, d in rows
                 if not (t == index.updated_through and i in self._seen_at_through)]
        if not fresh:
            return 0
        docs = [d for _, _, d in fresh if d is not None]
        through = max(index.updated_through, max(t for _, t, _ in fresh))
        seen = frozenset(i for i, t, _ in rows if t == through)
        new_index = dataclasses.replace(index.with_items(docs), updated_through=through)
        if self._index is index:  # a version switch in between wins
            self._install(new_index, seen)
        return len(docs)

    def _renew_trending(self, force: bool) -> bool:
        if not force and self._clock() - self._trending_at < self.settings.trending_ttl_seconds:
            return False
        doc = self.store.get_trending()
        self._trending, self._trending_at = doc, self._clock()
        return True

    # ------------------------------------------------------------------ requests
    def recommend(self, p: RecommendParams) -> dict[str, Any]:
        """Recommendations for one request; degrades to in-memory trending if Firestore fails."""
        self.maybe_refresh()
        if self._ivf_thread is None:
            self.maybe_build_ivf()
        user: UserDoc | None = None
        if p.user_id is not None:
            try:
                user = self.store.get_user(p.user_id)
            except StoreUnavailable as e:
                log.warning("degraded: %s", e)
                return self._cold_start(self._index, p, None, degraded=True)
        if self._trending_at == 0.0:
            self._fetch_trending_once()
        return self.rank_for(self._index, p, user)

    def _fetch_trending_once(self) -> None:
        try:
            self._renew_trending(force=True)
        except StoreUnavailable as e:
            log.warning("trending unavailable: %s", e)
            self._trending_at = self._clock()

    def rank_for(self, index: ItemIndex | None, p: RecommendParams, user: UserDoc | None
                 ) -> dict[str, Any]:
        """Pick the strategy for this user/session and rank; no Firestore access."""
        if index is None:
            return self._cold_start(None, p, user, degraded=True)
        history = index.rows(self._history_ids(user))
        query = self._query(index, p, user, history)
        if query is None:
            return self._cold_start(index, p, user, degraded=False)
        blocked = Filter(index.size, index.out_of_stock if p.in_stock_only else None,
                         index.category_codes,
                         index.category_codes_for(p.categories) if p.categories else None,
                         self._excluded_rows(index, p, history))
        profile = None
        if query.profile_rows.size:
            profile = _unit_or_none(content_mean(index.content, query.profile_rows))
        ranked = rank_hybrid(query.vector, index.embeddings, index.content, profile, p.k, p.alpha,
                             blocked, pool_size(p.k, self.settings.min_pool, self.settings.pool_factor),
                             index.ivf)
        items = [{"item_id": i, "score": s, "cf_score": cf, "cb_score": cb}
                 for i, s, cf, cb in zip(index.item_ids[ranked.rows].tolist(),
                                         *_rounded(ranked.score, ranked.cf, ranked.cb))]
        strategy = SESSION if query.source == "session_mean" else PERSONALIZED
        return self._response(index, p, user, strategy, items, query=query.source)

    def _history_ids(self, user: UserDoc | None) -> list[str]:
        return [h.item_id for h in user.history] if user is not None else []

    @staticmethod
    def _excluded_rows(index: ItemIndex, p: RecommendParams, history: np.ndarray) -> np.ndarray | None:
        if not p.exclude_seen:
            return None
        return np.concatenate([history, index.rows(p.session_items)]) if p.session_items else history

    def _query(self, index: ItemIndex, p: RecommendParams, user: UserDoc | None,
               history: np.ndarray) -> Query | None:
        """The query vector: the user's embedding, else their history's mean, else the session's."""
        if user is not None:
            emb = user.embedding
            if emb is not None and user.model_version == index.version and len(emb) == index.dim:
                return Query(np.asarray(emb, dtype=np.float32), "user_embedding", history)
            vec = self._mean_embedding(index, history)
            if vec is not None:
                return Query(vec, "history_mean", history)
        session = index.rows(p.session_items)
        vec = self._mean_embedding(index, session)
        if vec is not None:
            return Query(vec, "session_mean", session)
        return None

    @staticmethod
    def _mean_embedding(index: ItemIndex, rows: np.ndarray) -> np.ndarray | None:
        rows = rows[index.norms[rows] > 0] if rows.size else rows
        if not rows.size:
            return None
        return index.embeddings[rows].mean(axis=0)

    def _cold_start(self, index: ItemIndex | None, p: RecommendParams, user: UserDoc | None,
                    degraded: bool) -> dict[str, Any]:
        """Trending (then snapshot popularity) filtered like any other request.

        Scores: trending score / the largest one; past the trending list, popularity / the
        largest, scaled below the last trending score, so scores never increase down the list.
        """
        trending = self._trending
        if index is None and (trending is None or not trending.items):
            raise Unavailable("no item index and no trending list are available yet")
        excluded = set(self._history_ids(user)) | set(p.session_items) if p.exclude_seen else set()
        items: list[dict[str, Any]] = []
        taken: set[str] = set()
        if trending is not None and trending.items:
            top = max((e.score for e in trending.items), default=0.0) or 1.0
            for e in trending.items:
                if len(items) == p.k:
                    break
                if e.item_id in excluded or e.item_id in taken or not self._allowed(index, e.item_id, p):
                    continue
                taken.add(e.item_id)
                items.append({"item_id": e.item_id, "score": _round(e.score / top),
                              "cf_score": None, "cb_score": None})
        if index is not None and len(items) < p.k:
            ceiling = items[-1]["score"] if items else 1.0
            items.extend(self._popular(index, p, excluded | taken, p.k - len(items), ceiling))
        return self._response(index, p, user, COLD_START, items, degraded=degraded)

    @staticmethod
    def _allowed(index: ItemIndex | None, item_id: str, p: RecommendParams) -> bool:
        if index is None:
            return not p.categories  # unfiltered trending only when nothing else is known
        row = index.row_of.get(item_id)
        if row is None:
            return False
        if p.in_stock_only and not index.in_stock[row]:
            return False
        return not p.categories or str(index.categories[row]) in p.categories

    @staticmethod
    def _popular(index: ItemIndex, p: RecommendParams, excluded: set[str], n: int, ceiling: float
                 ) -> list[dict[str, Any]]:
        """The ``n`` most popular allowed items; scores are popularity / max, scaled to ``ceiling``."""
        blocked = blocked_mask(index.size, index.out_of_stock if p.in_stock_only else None,
                               index.category_codes,
                               index.category_codes_for(p.categories) if p.categories else None,
                               index.rows(excluded))
        order = index.popular_order
        if blocked is not None:
            order = order[~blocked[order]]
        top = float(index.popularity[index.popular_order[0]]) if index.size else 0.0
        return [{"item_id": str(index.item_ids[r]),
                 "score": _round(ceiling * index.popularity[r] / top) if top > 0 else 0.0,
                 "cf_score": None, "cb_score": None} for r in order[:n].tolist()]

    def _response(self, index: ItemIndex | None, p: RecommendParams, user: UserDoc | None,
                  strategy: str, items: list[dict[str, Any]], query: str | None = None,
                  degraded: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "user_id": p.user_id, "model_version": index.version if index is not None else None,
            "strategy": strategy, "query": query,
            "last_event_id": (user.last_event_id or None) if user is not None else None,
            "alpha": p.alpha, "items": items}
        if degraded:
            body["degraded"] = True
        return body

    def similar(self, p: SimilarParams) -> dict[str, Any]:
        """Items most similar to ``p.item_id`` by cosine: embeddings if it has one, else content."""
        self.maybe_refresh()
        index = self._index
        if index is None:
            raise Unavailable("no item index is loaded yet")
        row = index.row_of.get(p.item_id)
        if row is None:
            raise NotFound(f"unknown item_id {p.item_id!r}", "item_id")
        blocked = blocked_mask(index.size, index.out_of_stock if p.in_stock_only else None,
                               None, None, np.array([row]))
        if index.norms[row] > 0:
            basis, vector, matrix, norms = "embedding", index.embeddings[row], index.embeddings, index.norms
        else:
            basis, vector, matrix, norms = ("content", index.content.rows([row])[0], index.content,
                                            index.content_norms)
        rows, cos = rank_cosine(vector, matrix, norms, p.k, blocked)
        return {"item_id": p.item_id, "model_version": index.version, "basis": basis,
                "items": [{"item_id": str(index.item_ids[r]), "score": _round(c)}
                          for r, c in zip(rows.tolist(), cos.tolist())]}

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status, body)``: 200 when an index (or at least trending) is available, else 503."""
        self.maybe_refresh()
        index, now = self._index, self._clock()
        has_trending = self._trending is not None and bool(self._trending.items)
        body: dict[str, Any] = {
            "status": "ok" if index is not None else ("degraded" if has_trending else "unavailable"),
            "model_version": index.version if index is not None else None,
            "item_count": index.size if index is not None else 0,
            "items_added_since_snapshot": index.added if index is not None else 0,
            "index_created_at": index.created_at if index is not None else None,
            "index_age_s": round(now - index.created_at / 1000.0, 3) if index is not None else None,
            "index_loaded_at": round(index.loaded_at, 3) if index is not None else None,
            "items_indexed_through": index.updated_through if index is not None else None,
            "trending_items": len(self._trending.items) if self._trending is not None else 0,
            "retrieval": ("ivf" if index.ivf is not None else "exact") if index is not None else None,
        }
        return (200 if index is not None or has_trending else 503), body
