"""Diversity on request: maximal marginal relevance (MMR) over the candidate pool.

With ``diversity`` λ in (0, 1] the ``k`` items are picked greedily from the pool; each step takes
the candidate with the largest

    mmr_i = (1 - λ) · rel_i - λ · max_{j picked} sim(i, j)        (no pick yet: the max term is 0)

* ``rel_i``: the hybrid score (:func:`scoring.ranking.hybrid_scores`) min-max normalised over the
  pool (best 1, worst 0; a constant score is 0), so relevance and similarity share a scale;
* ``sim(i, j)``: the cosine of the two item embeddings; when either item has no embedding (norm 0,
  e.g. a new item), the cosine of their content vectors (0 when either has none);
* ties: by the hybrid score, then ``cf_raw``, then row, as :func:`scoring.ranking.best_first`.

λ = 0 is the plain top-k by hybrid score (:func:`scoring.rank.rank_pool` never calls MMR then);
λ = 1 keeps the best item first and then always the one least like those already picked.

Cost: one ``[P, D] @ [D]`` product per pick (``k × P`` similarities, never ``P × P``) and a few
``P``-element operations: about 0.06 ms of CPU per request for k = 10 from a pool of 200 at D = 64
(docs/benchmarks.md, bench-quality), growing with k.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scoring.ranking import Candidates, Ranked, hybrid_scores, l2_normalize, minmax

if TYPE_CHECKING:
    from schemas.content import SparseRows


def mmr(relevance: np.ndarray, unit: np.ndarray, k: int, diversity: float,
        fallback: np.ndarray | None = None, has_vector: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``k`` MMR picks, in pick order (ties: the lower position).

    Args:
        relevance: float [P] relevance of each candidate, in [0, 1].
        unit: float32 [P, D] L2-normalised similarity vectors (zero rows for candidates without one).
        k: how many to pick (at most P).
        diversity: λ in (0, 1] (λ = 0 is the top-k by relevance: do not call this).
        fallback: float32 [P, C] L2-normalised vectors compared instead when either candidate of a
            pair has no ``unit`` vector (``has_vector`` False), or None when every candidate has one.
        has_vector: bool [P], which rows of ``unit`` are real (required with ``fallback``).
    """
    n = relevance.shape[0]
    k = min(int(k), n)
    # mmr_i / λ = ((1 - λ) / λ) rel_i - max_j sim_ij (the same argmax), kept as
    # min_j (base_i - sim_ij) over the picks j so far
    base = np.asarray(relevance, dtype=np.float32) * np.float32((1.0 - diversity) / diversity)
    value = base.copy()
    missing = np.flatnonzero(~has_vector) if fallback is not None else None
    picks = np.empty(k, dtype=np.int64)
    for step in range(k):
        j = int(value.argmax())  # the first of equal values: the lower position
        picks[step] = j
        base[j] = -np.inf  # never picked again
        if step + 1 == k:
            break
        if fallback is None:
            sims = unit.dot(unit[j])
        elif has_vector[j]:
            sims = unit.dot(unit[j])
            sims[missing] = fallback[missing].dot(fallback[j])
        else:
            sims = fallback.dot(fallback[j])
        if step == 0:
            np.subtract(base, sims, out=value)
        else:
            np.subtract(base, sims, out=sims)
            np.minimum(value, sims, out=value)
    return picks


def similarity_vectors(embeddings: np.ndarray, norms: np.ndarray, content: SparseRows | np.ndarray,
                       rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(unit, fallback, has_vector)`` of :func:`mmr` for ``rows``: unit embeddings, and unit
    content vectors only when some row has no embedding (else both None)."""
    n = norms.take(rows)
    unit = embeddings.take(rows, axis=0)
    has = n > 0
    if has.all():
        unit *= (np.float32(1.0) / n)[:, None]
        return unit, None, None
    unit *= np.divide(np.float32(1.0), n, out=np.zeros_like(n), where=has)[:, None]
    dense = content[rows] if isinstance(content, np.ndarray) else content.rows(rows)
    return unit, l2_normalize(dense), has


def rerank_diverse(cands: Candidates, k: int, alpha: float, diversity: float, embeddings: np.ndarray,
                   norms: np.ndarray, content: SparseRows | np.ndarray) -> Ranked:
    """The ``k`` MMR picks of the pool (``diversity`` > 0), each with its hybrid score, cf and cb."""
    final, cf, cb = hybrid_scores(cands.cf_raw, cands.cb_raw, alpha)
    order = np.lexsort((cands.rows, -cands.cf_raw, -final))  # best_first's order, over the whole pool
    unit, fallback, has = similarity_vectors(embeddings, norms, content, cands.rows[order])
    picks = order[mmr(minmax(final[order]), unit, k, diversity, fallback, has)]
    return Ranked(rows=cands.rows[picks], score=final[picks], cf=cf[picks], cb=cb[picks])
