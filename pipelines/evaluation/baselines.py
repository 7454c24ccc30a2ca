"""Baseline recommenders, each fitted on a binary user x item train matrix and returned as a scorer.

* :func:`popularity` -- number of train users per item, the same list for everyone.
* :func:`item_knn` -- cosine similarity between item interaction vectors, top-``k`` neighbours
  per item; a user's score for item j is the sum of j's similarities to the user's items.
* :func:`ease` -- EASE (Steck, WWW 2019), closed form B = I - P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹,
  computed with a Cholesky inverse (LAPACK potrf/potri). The Gram matrix is dense items x items,
  so EASE is restricted to the ``max_items`` items with most train users; the others get no
  score (never recommended). On Gowalla (41k items) the full matrix would be 6.7 GB (float32).
* :func:`als` -- implicit-feedback ALS from the ``implicit`` package (CPU, conjugate gradient).

A scorer maps a batch of user indices to float32 scores over all items (see ``metrics.Scorer``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from pipelines.evaluation.metrics import Scorer

SIMILARITY_BLOCK_BYTES = 128 * 1024 * 1024


def popularity(train: sp.csr_matrix) -> Scorer:
    """Most-popular: score = number of train users of the item."""
    counts = np.asarray(train.sum(axis=0), dtype=np.float32).ravel()

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (len(users), counts.size))

    return score


def cosine_neighbours(train: sp.csr_matrix, k: int = 100) -> sp.csc_matrix:
    """Item-item cosine similarities keeping each item's top-``k`` neighbours.

    Returns:
        CSC [n_items, n_items]: column j holds the similarities of j's neighbours (no self-loops).
    """
    x = sp.csr_matrix(train, dtype=np.float32)
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())  # binary matrix: column norm = sqrt(count)
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    xn = sp.csc_matrix(x.multiply(inv[None, :]), dtype=np.float32)
    xnt = xn.T.tocsr()
    n = x.shape[1]
    k = max(1, min(k, n - 1))
    block = max(1, int(SIMILARITY_BLOCK_BYTES // (4 * max(n, 1))))
    rows, cols, vals = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        sim = (xnt @ xn[:, start:stop]).toarray()  # [n, stop-start], sparse product then dense
        sim[np.arange(start, stop), np.arange(stop - start)] = 0.0
        top = np.argpartition(-sim, k - 1, axis=0)[:k]  # [k, block]
        top_vals = np.take_along_axis(sim, top, axis=0)
        keep = top_vals > 0
        rows.append(top[keep])
        cols.append(np.broadcast_to(np.arange(start, stop), top.shape)[keep])
        vals.append(top_vals[keep])
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n), dtype=np.float32)


def item_knn(train: sp.csr_matrix, k: int = 100) -> Scorer:
    """Item-kNN with cosine similarity over interaction vectors and ``k`` neighbours per item."""
    sim = cosine_neighbours(train, k).tocsr()
    x = sp.csr_matrix(train, dtype=np.float32)

    def score(users: np.ndarray) -> np.ndarray:
        return (x[users] @ sim).toarray()

    return score


def ease_items(train: sp.csr_matrix, max_items: int | None) -> np.ndarray:
    """The items EASE is fitted on: all, or the ``max_items`` with most train users."""
    counts = np.asarray(train.sum(axis=0)).ravel()
    if max_items is None or max_items >= train.shape[1]:
        return np.arange(train.shape[1])
    return np.sort(np.argsort(-counts, kind="stable")[:max_items])


def ease_weights(x: sp.csr_matrix, lam: float, dtype: type = np.float64) -> np.ndarray:
    """EASE item-item weights B (zero diagonal) for a binary matrix ``x``."""
    gram = (x.T @ x).toarray().astype(dtype, copy=False)
    gram[np.diag_indices_from(gram)] += lam
    potrf, potri = (lapack.dpotrf, lapack.dpotri) if gram.dtype == np.float64 else \
        (lapack.spotrf, lapack.spotri)
    # gram is symmetric: its transpose is the same matrix in Fortran order, so LAPACK works in place.
    chol, info = potrf(gram.T, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky failed (info={info}); increase lambda")
    p, info = potri(chol, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse failed (info={info})")
    _symmetrise_upper(p)
    diag = np.diag(p).copy()
    p /= -diag[None, :]
    p[np.diag_indices_from(p)] = 0.0
    return p


def ease(train: sp.csr_matrix, lam: float = 500.0, max_items: int | None = 20_000) -> Scorer:
    """EASE on the ``max_items`` most popular items (float32 above 12,000 items to halve memory)."""
    items = ease_items(train, max_items)
    x = sp.csr_matrix(train[:, items], dtype=np.float32)
    weights = ease_weights(x, lam, np.float64 if items.size <= 12_000 else np.float32)
    weights = weights.astype(np.float32, copy=False)
    n_items = train.shape[1]
    full = items.size == n_items

    def score(users: np.ndarray) -> np.ndarray:
        part = np.asarray(x[users] @ weights, dtype=np.float32)
        if full:
            return part
        out = np.full((len(users), n_items), -np.inf, dtype=np.float32)
        out[:, items] = part
        return out

    return score


def als(train: sp.csr_matrix, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0,
        iterations: int = 15, seed: int = 0, threads: int = 2) -> Scorer:
    """Implicit ALS (``implicit.cpu.als``); BLAS limited to one thread while fitting, as implicit advises."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                        iterations=iterations, random_state=seed, num_threads=threads)
        model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
    users_f = np.asarray(model.user_factors, dtype=np.float32)
    items_f = np.asarray(model.item_factors, dtype=np.float32)

    def score(users: np.ndarray) -> np.ndarray:
        return users_f[users] @ items_f.T

    return score


def _symmetrise_upper(a: np.ndarray, block: int = 2048) -> None:
    """Copy the upper triangle onto the lower one in place (potri fills only one triangle)."""
    n = a.shape[0]
    for start in range(0, n, block):
        stop = min(n, start + block)
        a[start:stop, :start] = a[:start, start:stop].T
        sub = a[start:stop, start:stop]
        sub[:] = np.triu(sub) + np.triu(sub, 1).T
