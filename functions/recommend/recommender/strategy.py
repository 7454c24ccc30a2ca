"""The request strategy: which ranking a request gets, and the response it answers.

Pure functions of the in-memory index, the trending list and the request; no Firestore
access and no state. :func:`rank_for` picks personalised (the user's embedding or history),
session (the session's items) or cold start (trending, then popularity); :func:`similar_items`
answers ``/similar-items``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from httpfn.errors import NotFound, Unavailable
from schemas.experiments import ArmOverrides
from schemas.firestore import TrendingDoc, UserDoc
from scoring.rank import (
    DEFAULT_ALPHA,
    Query,
    RankRequest,
    rank_user,
    resolve_alpha,
    resolve_pool,
    retriever_for,
    user_query,
)
from scoring.ranking import blocked_mask, rank_cosine

from .config import Settings
from .index import ItemIndex
from .params import RecommendParams, SimilarParams

PERSONALIZED, SESSION, COLD_START = "personalized", "session", "cold_start"


def _round(x: float) -> float:
    return round(float(x), 6)


def _rounded(*columns: np.ndarray) -> list[list[float]]:
    """``[[_round(v) for v in x] for x in columns]`` for equal-length float arrays, in one numpy call."""
    return np.round(np.array(columns, dtype=np.float64), 6).tolist()


def rank_for(index: ItemIndex | None, p: RecommendParams, user: UserDoc | None,
             trending: TrendingDoc | None, settings: Settings, arm: ArmOverrides | None = None
             ) -> dict[str, Any]:
    """Pick the strategy for this user/session and rank with :func:`scoring.rank.rank_user`.

    ``alpha``: the request's, else the model version's measured default for this history length
    (``index.defaults``), else ``DEFAULT_ALPHA``; the pool likewise. ``p.diversity`` > 0: the items
    are MMR picks from the pool (:mod:`scoring.diversity`), each with its own hybrid score.
    ``arm``: an experiment arm's ``pool`` (at least ``k``) and ``retrieval`` (``exact`` scans every
    row; ``faiss``/``ivf`` use the index's approximate index when it has one, else scan); its
    ``alpha``/``diversity`` are already in ``p`` (:func:`recommender.experiments.with_overrides`).
    """
    if index is None:
        return cold_start(None, p, user, trending, degraded=True, default_alpha=settings.default_alpha)
    history = index.rows(_history_ids(user))
    query = query_for(index, p, user, history)
    if query is None:
        return cold_start(index, p, user, trending, degraded=False, default_alpha=settings.default_alpha)
    alpha = resolve_alpha(p.alpha, index.defaults, history.size, settings.default_alpha)
    pool = (max(p.k, arm.pool) if arm is not None and arm.pool is not None
            else resolve_pool(p.k, index.defaults, settings.min_pool, settings.pool_factor))
    request = RankRequest(
        k=p.k, alpha=alpha, pool=pool,
        exclude_rows=_excluded_rows(index, p, history, user), in_stock_only=p.in_stock_only,
        categories=index.category_codes_for(p.categories) if p.categories else None,
        diversity=p.diversity)
    exact = arm is not None and arm.retrieval == "exact"
    ranked = rank_user(index, retriever_for(index.embeddings, None if exact else index.ivf), query, request)
    items = [{"item_id": i, "score": s, "cf_score": cf, "cb_score": cb}
             for i, s, cf, cb in zip(index.item_ids[ranked.rows].tolist(),
                                     *_rounded(ranked.score, ranked.cf, ranked.cb))]
    strategy = SESSION if query.source == "session_mean" else PERSONALIZED
    return response(index, p, user, strategy, items, query=query.source, alpha=alpha)


def _history_ids(user: UserDoc | None) -> list[str]:
    return [h.item_id for h in user.history] if user is not None else []


def _excluded_rows(index: ItemIndex, p: RecommendParams, history: np.ndarray, user: UserDoc | None
                   ) -> np.ndarray | None:
    """History, then the user's older ``seen`` items, then the session (``exclude_seen``)."""
    if not p.exclude_seen:
        return None
    if user is not None and user.seen:
        history = np.concatenate([history, index.rows(user.seen)])
    return np.concatenate([history, index.rows(p.session_items)]) if p.session_items else history


def query_for(index: ItemIndex, p: RecommendParams, user: UserDoc | None,
              history: np.ndarray) -> Query | None:
    """The query (:func:`scoring.rank.user_query`); the user's embedding counts if it is of this version."""
    emb = user.embedding if user is not None else None
    valid = emb is not None and user.model_version == index.version and len(emb) == index.dim
    return user_query(index, np.asarray(emb, dtype=np.float32) if valid else None, history,
                      index.rows(p.session_items))


def cold_start(index: ItemIndex | None, p: RecommendParams, user: UserDoc | None,
               trending: TrendingDoc | None, degraded: bool, default_alpha: float = DEFAULT_ALPHA
               ) -> dict[str, Any]:
    """Trending (then snapshot popularity) filtered like any other request.

    Scores: trending score / the largest one; past the trending list, popularity / the
    largest, scaled below the last trending score, so scores never increase down the list.
    """
    if index is None and (trending is None or not trending.items):
        raise Unavailable("no item index and no trending list are available yet")
    excluded = (set(_history_ids(user)) | set(user.seen if user is not None else ()) | set(p.session_items)
                if p.exclude_seen else set())
    items: list[dict[str, Any]] = []
    taken: set[str] = set()
    if trending is not None and trending.items:
        top = max((e.score for e in trending.items), default=0.0) or 1.0
        for e in trending.items:
            if len(items) == p.k:
                break
            if e.item_id in excluded or e.item_id in taken or not _allowed(index, e.item_id, p):
                continue
            taken.add(e.item_id)
            items.append({"item_id": e.item_id, "score": _round(e.score / top),
                          "cf_score": None, "cb_score": None})
    if index is not None and len(items) < p.k:
        ceiling = items[-1]["score"] if items else 1.0
        items.extend(_popular(index, p, excluded | taken, p.k - len(items), ceiling))
    alpha = resolve_alpha(p.alpha, index.defaults if index is not None else None, 0, default_alpha)
    return response(index, p, user, COLD_START, items, degraded=degraded, alpha=alpha)


def _allowed(index: ItemIndex | None, item_id: str, p: RecommendParams) -> bool:
    if index is None:
        return not p.categories  # unfiltered trending only when nothing else is known
    row = index.row_of.get(item_id)
    if row is None:
        return False
    if p.in_stock_only and not index.in_stock[row]:
        return False
    return not p.categories or str(index.categories[row]) in p.categories


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


def response(index: ItemIndex | None, p: RecommendParams, user: UserDoc | None, strategy: str,
             items: list[dict[str, Any]], query: str | None = None, degraded: bool = False,
             alpha: float | None = None) -> dict[str, Any]:
    """The ``/recommendations`` body (``alpha``, ``diversity``: the ones used, or a ranked request
    would use; cold-start lists are never re-ranked)."""
    body: dict[str, Any] = {
        "user_id": p.user_id, "model_version": index.version if index is not None else None,
        "strategy": strategy, "query": query,
        "last_event_id": (user.last_event_id or None) if user is not None else None,
        "alpha": alpha if alpha is not None else p.alpha, "diversity": p.diversity, "items": items}
    if degraded:
        body["degraded"] = True
    return body


def similar_items(index: ItemIndex | None, p: SimilarParams) -> dict[str, Any]:
    """Items most similar to ``p.item_id`` by cosine: embeddings if it has one, else content."""
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
