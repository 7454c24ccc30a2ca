"""One request's ranking, as the recommend function serves it and the offline evaluation measures it.

    items = ItemArrays.build(snapshot.embeddings, snapshot.content, snapshot.categories, snapshot.in_stock)
    retriever = build_retriever(items, RetrievalConfig(backend="ivf", nprobe=16))
    query = user_query(items, user_embedding, history_rows, session_rows)
    ranked = rank_user(items, retriever, query, RankRequest(k=10, alpha=0.9, pool=200,
                                                            exclude_rows=history_rows))

``Recommender.rank_for`` (functions/recommend) and ``pipelines.evaluation.served`` both call
:func:`user_query` and :func:`rank_user`; nothing else ranks a request. The score:

* candidates ``P``: the ``pool`` unblocked items with the largest ``cf_raw = q . e_i`` (the
  retriever: exact scan, or IVF over the probed partitions);
* ``cb_raw_i = p . c_i``, with ``p`` the L2-normalised mean content vector of the profile rows
  (the user's stored history, else the session) and ``c_i`` the item's L2-normalised content;
* ``cf``, ``cb``: min-max over ``P`` (best 1, worst 0, constant -> 0);
  ``score = alpha * cf + (1 - alpha) * cb``;
* the ``k`` best by ``score``, ties by ``cf_raw``, then by row;
* with ``diversity`` λ > 0 (a request parameter): the ``k`` picked greedily from the pool by maximal
  marginal relevance, ``(1 - λ) · minmax(score) - λ · max cosine to the items already picked``
  (:mod:`scoring.diversity`); λ = 0 is the previous step exactly.

``alpha`` and the pool come from the model version's :class:`ScoringDefaults` (chosen on a
validation slice by the training job) unless the request gives ``alpha``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from schemas.content import SparseRows
from scoring import ann
from scoring.diversity import rerank_diverse
from scoring.ivf import IvfIndex, default_nlist
from scoring.ranking import Candidates, Filter, Ranked, content_mean, pool_size, rerank, retrieve, score_pool

DEFAULT_ALPHA = 0.7  # only when neither the request nor the model version gives one
DEFAULT_MIN_POOL = 200
DEFAULT_POOL_FACTOR = 4


# ---------------------------------------------------------------------------------------- items
class Items(Protocol):
    """What ranking reads about the catalogue (``ItemIndex`` and :class:`ItemArrays` have it)."""

    embeddings: np.ndarray  # float32 [N, D], C-contiguous
    norms: np.ndarray  # float32 [N]
    content: SparseRows | np.ndarray  # [N, C], L2-normalised rows
    out_of_stock: np.ndarray  # bool [N]
    category_codes: np.ndarray  # int32 [N]

    @property
    def size(self) -> int: ...


def known_rows(row_of: Mapping[str, int], item_ids: Iterable[str]) -> np.ndarray:
    """Rows of the known ids among ``item_ids`` (unknown ids skipped), in order, no duplicates."""
    rows: dict[int, None] = {}
    for item_id in item_ids:
        row = row_of.get(item_id)
        if row is not None:
            rows.setdefault(row, None)
    return np.fromiter(rows, dtype=np.int64, count=len(rows))


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of every row as float32 (the same arithmetic everywhere an index is built)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x)).astype(np.float32)


def category_codes(categories: np.ndarray) -> tuple[dict[str, int], np.ndarray]:
    """``(name -> code, int32 code per row)`` with codes in sorted name order."""
    names, codes = np.unique(np.asarray(categories).astype(str), return_inverse=True)
    return {str(c): i for i, c in enumerate(names.tolist())}, codes.astype(np.int32).reshape(-1)


@dataclass(frozen=True)
class ItemArrays:
    """The ranking arrays of a static catalogue (an index snapshot), built like ``ItemIndex.build``."""

    embeddings: np.ndarray
    norms: np.ndarray
    content: SparseRows
    out_of_stock: np.ndarray
    category_codes: np.ndarray
    category_lookup: dict[str, int]

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @classmethod
    def build(cls, embeddings: np.ndarray, content: SparseRows | np.ndarray, categories: np.ndarray,
              in_stock: np.ndarray, content_normalized: bool = True) -> ItemArrays:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if not isinstance(content, SparseRows):
            content = SparseRows.from_dense(np.asarray(content, dtype=np.float32))
        if not content_normalized:
            content = content.l2_normalized()
        content.pad()
        lookup, codes = category_codes(categories)
        return cls(embeddings=emb, norms=row_norms(emb), content=content,
                   out_of_stock=~np.asarray(in_stock, dtype=bool), category_codes=codes,
                   category_lookup=lookup)


# ------------------------------------------------------------------------------------ retrieval
class Retriever(Protocol):
    """A candidate-retrieval backend: the best ``pool`` unblocked rows by ``query . e_i``."""

    name: str

    def search(self, query: np.ndarray, pool: int, blocked: Filter | None
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cf_raw)``, best first."""
        ...


@dataclass(frozen=True)
class ExactRetriever:
    """Exact scan over every row (filters applied exactly)."""

    embeddings: np.ndarray
    name: str = "exact"

    def search(self, query: np.ndarray, pool: int, blocked: Filter | None
               ) -> tuple[np.ndarray, np.ndarray]:
        return retrieve(query, self.embeddings, pool, blocked, None)


@dataclass(frozen=True)
class IvfRetriever:
    """IVF partitions (:mod:`scoring.ivf`), with the exact scan when filters leave too few rows."""

    embeddings: np.ndarray
    ivf: IvfIndex
    name: str = "ivf"

    def search(self, query: np.ndarray, pool: int, blocked: Filter | None
               ) -> tuple[np.ndarray, np.ndarray]:
        return retrieve(query, self.embeddings, pool, blocked, self.ivf)


MIN_ANN_DEPTH = 512  # rows asked of faiss at least, re-scored exactly (bench-serving: recall of the pool)


@dataclass(frozen=True)
class FaissRetriever:
    """The compiled IVF index (:mod:`scoring.ann`), with the exact scan when filters leave too few rows.

    faiss returns the best ``pool`` plus headroom (the excluded rows, half a pool for out-of-stock
    items; at least ``MIN_ANN_DEPTH``: 4-bit codes order near ties loosely) of the probed
    partitions; the tail and the exact re-scoring are :class:`scoring.ann.FaissIvf`'s; filters and
    the fallback are :func:`scoring.ranking.retrieve`'s, as for the numpy IVF.
    """

    embeddings: np.ndarray
    index: ann.FaissIvf
    name: str = "faiss"

    def search(self, query: np.ndarray, pool: int, blocked: Filter | None
               ) -> tuple[np.ndarray, np.ndarray]:
        excluded = blocked.excluded_rows if blocked is not None else None
        depth = max(pool + pool // 2, MIN_ANN_DEPTH) + (excluded.shape[0] if excluded is not None else 0)
        return retrieve(query, self.embeddings, pool, blocked, _Found(*self.index.candidates(query, depth)))


@dataclass(frozen=True)
class _Found:
    """Candidates already retrieved, in the shape :func:`scoring.ranking.retrieve` asks an index for."""

    rows: np.ndarray
    scores: np.ndarray

    def candidates(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rows, self.scores


def retriever_for(embeddings: np.ndarray, approx: IvfIndex | ann.FaissIvf | None) -> Retriever:
    """The backend of an index that may carry an approximate index (numpy IVF or faiss)."""
    if isinstance(approx, ann.FaissIvf):
        return FaissRetriever(embeddings, approx)
    return IvfRetriever(embeddings, approx) if approx is not None else ExactRetriever(embeddings)


@dataclass(frozen=True)
class RetrievalConfig:
    """The function's retrieval settings (``RETRIEVAL``, ``IVF_NLIST``, ``IVF_NPROBE``, ``IVF_MIN_ITEMS``).

    ``backend``: ``faiss`` (the compiled IVF of :mod:`scoring.ann`), ``ivf`` (numpy partitions of
    :mod:`scoring.ivf`) or ``exact`` (the full scan, nothing compiled).
    """

    backend: str = "faiss"
    nlist: int = 0  # 0: about sqrt(N)
    nprobe: int = 0  # 0: the index's own (scoring.ann.default_nprobe of its partitions)
    min_items: int = 20_000  # smaller catalogues are always scanned exactly
    min_pool: int = DEFAULT_MIN_POOL
    pool_factor: int = DEFAULT_POOL_FACTOR

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetrievalConfig:
        """From environment-style settings (e.g. ``functions/recommend/serving.env``)."""
        d = cls()
        return cls(backend=(env.get("RETRIEVAL") or d.backend).strip().lower(),
                   nlist=int(env.get("IVF_NLIST") or d.nlist), nprobe=int(env.get("IVF_NPROBE") or d.nprobe),
                   min_items=int(env.get("IVF_MIN_ITEMS") or d.min_items),
                   min_pool=int(env.get("MIN_POOL") or d.min_pool),
                   pool_factor=int(env.get("POOL_FACTOR") or d.pool_factor))


def build_ivf(embeddings: np.ndarray, norms: np.ndarray, nlist: int, nprobe: int, seed: int = 0) -> IvfIndex:
    """The IVF partitions the function builds when an index version loads (``ItemIndex.with_ivf``)."""
    nlist = nlist or default_nlist(embeddings.shape[0])
    return IvfIndex.build(embeddings, norms, nlist, nprobe or ann.default_nprobe(nlist), seed=seed)


def build_retriever(items: Items, config: RetrievalConfig, prebuilt: ann.FaissIvf | None = None) -> Retriever:
    """The backend the function would use for ``items`` with ``config``.

    ``faiss``: ``prebuilt`` (the training job's index, :func:`scoring.ann.read_index`) or one built
    here with the training job's settings.
    """
    if config.backend == "faiss" and items.size >= config.min_items:
        if prebuilt is None:
            built = ann.build_index(items.embeddings, config.nlist)
            nprobe = config.nprobe or ann.default_nprobe(ann.nlist_of(built))
            prebuilt = ann.FaissIvf.from_index(built, items.embeddings, items.norms, nprobe)
        return FaissRetriever(items.embeddings, prebuilt)
    if config.backend == "ivf" and items.size >= config.min_items:
        return IvfRetriever(items.embeddings, build_ivf(items.embeddings, items.norms, config.nlist,
                                                        config.nprobe))
    return ExactRetriever(items.embeddings)


# -------------------------------------------------------------------------------------- defaults
@dataclass(frozen=True)
class ScoringDefaults:
    """A model version's serving defaults, measured by the training job on a validation slice.

    ``alpha_by_history``: ``((min_history_length, alpha), ...)`` ascending; a user with a stored
    history of ``n`` items gets the alpha of the last bucket with ``min_history_length <= n``
    (empty: ``alpha`` for everyone). ``min_pool``: candidate pool, as ``MIN_POOL`` (None: the
    function's setting).
    """

    alpha: float
    min_pool: int | None = None
    alpha_by_history: tuple[tuple[int, float], ...] = ()

    def alpha_for(self, history_length: int) -> float:
        alpha = self.alpha
        for low, a in self.alpha_by_history:
            if history_length >= low:
                alpha = a
        return alpha

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alpha": float(self.alpha)}
        if self.min_pool is not None:
            out["min_pool"] = int(self.min_pool)
        if self.alpha_by_history:  # maps, not pairs: Firestore stores no array inside an array
            out["alpha_by_history"] = [{"min_history": int(n), "alpha": float(a)}
                                       for n, a in self.alpha_by_history]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ScoringDefaults | None:
        """None for a missing or empty mapping (models published before the defaults existed)."""
        if not d or d.get("alpha") is None:
            return None
        alpha = float(d["alpha"])
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"scoring defaults: alpha {alpha} is not in [0, 1]")
        pool = d.get("min_pool")
        buckets = tuple(sorted((int(b["min_history"]), float(b["alpha"])) if isinstance(b, Mapping)
                               else (int(b[0]), float(b[1])) for b in d.get("alpha_by_history") or ()))
        return cls(alpha=alpha, min_pool=int(pool) if pool is not None else None, alpha_by_history=buckets)


def resolve_alpha(requested: float | None, defaults: ScoringDefaults | None, history_length: int,
                  fallback: float = DEFAULT_ALPHA) -> float:
    """The request's alpha, else the model version's default for this history, else ``fallback``."""
    if requested is not None:
        return float(requested)
    if defaults is not None:
        return defaults.alpha_for(history_length)
    return float(fallback)


def resolve_pool(k: int, defaults: ScoringDefaults | None, min_pool: int = DEFAULT_MIN_POOL,
                 pool_factor: int = DEFAULT_POOL_FACTOR) -> int:
    """Candidate pool for ``k`` items: the model version's ``min_pool`` if it has one."""
    if defaults is not None and defaults.min_pool is not None:
        min_pool = defaults.min_pool
    return pool_size(k, min_pool, pool_factor)


# ------------------------------------------------------------------------------------- the query
@dataclass(frozen=True)
class Query:
    """The vector a request retrieves with, where it came from, and the rows of its CB profile."""

    vector: np.ndarray
    source: str  # user_embedding | history_mean | session_mean
    profile_rows: np.ndarray


def mean_embedding(items: Items, rows: np.ndarray) -> np.ndarray | None:
    """Mean embedding of the rows that have one (non-zero), or None."""
    rows = rows[items.norms[rows] > 0] if rows.size else rows
    if not rows.size:
        return None
    return items.embeddings[rows].mean(axis=0)


def user_query(items: Items, user_embedding: np.ndarray | None, history: np.ndarray,
               session: np.ndarray) -> Query | None:
    """The user's embedding (when it is of this model version), else their history's mean, else the
    session's; None when there is nothing to retrieve with (the caller falls back to trending)."""
    if user_embedding is not None:
        return Query(np.asarray(user_embedding, dtype=np.float32), "user_embedding", history)
    vec = mean_embedding(items, history)
    if vec is not None:
        return Query(vec, "history_mean", history)
    vec = mean_embedding(items, session)
    if vec is not None:
        return Query(vec, "session_mean", session)
    return None


def content_profile(content: SparseRows | np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """The L2-normalised mean content vector of ``rows``, or None (no rows, or all zeros)."""
    if not rows.size:
        return None
    v = content_mean(content, rows)
    norm = float(np.sqrt(np.dot(v, v)))
    return v / np.float32(norm) if norm > 0 else None


# ------------------------------------------------------------------------------------ the ranking
@dataclass(frozen=True)
class RankRequest:
    """What one ranking call needs besides the items and the query.

    ``categories``: wanted category codes (None: any); ``exclude_rows``: rows never returned;
    ``diversity``: the MMR λ in [0, 1] (0: the plain top-k by hybrid score).
    """

    k: int
    alpha: float
    pool: int
    exclude_rows: np.ndarray | None = None
    in_stock_only: bool = False
    categories: np.ndarray | None = None
    diversity: float = 0.0

    def with_alpha(self, alpha: float) -> RankRequest:
        return dataclasses.replace(self, alpha=alpha)


def request_filter(items: Items, request: RankRequest) -> Filter:
    """The request's filter over ``items``."""
    return Filter(items.size, items.out_of_stock if request.in_stock_only else None, items.category_codes,
                  request.categories, request.exclude_rows)


def candidates(items: Items, retriever: Retriever, query: Query, request: RankRequest) -> Candidates:
    """Retrieve the pool and score its content match."""
    rows, cf_raw = retriever.search(query.vector, request.pool, request_filter(items, request))
    return score_pool(items.content, rows, cf_raw, content_profile(items.content, query.profile_rows))


def rank_pool(items: Items, cands: Candidates, k: int, alpha: float, diversity: float = 0.0) -> Ranked:
    """The ``k`` items of a scored pool: top-k by hybrid score, or MMR picks when ``diversity`` > 0."""
    if diversity > 0.0:
        return rerank_diverse(cands, k, alpha, diversity, items.embeddings, items.norms, items.content)
    return rerank(cands, k, alpha)


def rank_user(items: Items, retriever: Retriever, query: Query, request: RankRequest) -> Ranked:
    """One request's ranked items: retrieval, content profile, hybrid score, filters, top-k (or MMR)."""
    return rank_pool(items, candidates(items, retriever, query, request), request.k, request.alpha,
                     request.diversity)


def alpha_grid(step: float = 0.1) -> Sequence[float]:
    """``0, step, ..., 1`` rounded (the alphas the training job sweeps)."""
    n = int(round(1.0 / step))
    return [round(i * step, 6) for i in range(n + 1)]
