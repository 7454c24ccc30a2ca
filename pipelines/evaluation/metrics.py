"""Full-ranking top-K metrics: every item is ranked for every test user (no sampling).

Definitions (averaged over the evaluated users, i.e. users with at least one test item):

* ``recall@K`` = |top-K ∩ test items| / |test items| -- the LightGCN/NGCF definition (not
  divided by min(K, |test|)), so a user with more than K test items cannot reach 1.
* ``ndcg@K`` = DCG@K / IDCG@K with binary relevance, DCG = Σ_{hit at rank r} 1/log2(r + 2)
  (r from 0), IDCG = Σ_{r < min(K, |test|)} 1/log2(r + 2) -- also as in LightGCN.
* ``coverage`` = number of distinct items that appear in at least one evaluated user's top-K
  list (K = the largest cut-off) divided by the number of items in the split's vocabulary.

Within-list diversity (:func:`intra_list_diversity`, :func:`category_coverage`; the served rows):

* ``ild@K`` = the mean over lists of the mean pairwise cosine distance ``1 - cos(e_i, e_j)`` over
  the pairs of the list's top K, with ``e`` the item embeddings (an item without one is at
  distance 1 from every other); lists of fewer than two items are left out.
* ``category_coverage@K`` = the mean over lists of |distinct categories in the top K| / K (a list
  shorter than K counts its missing slots as uncovered; 1 needs K items of K categories).

Items in the user's train row are masked (score -inf) before ranking. Scores are computed in
user batches whose size keeps a batch's score matrix under ``max_batch_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pipelines.evaluation.splits import Split

Scorer = Callable[[np.ndarray], np.ndarray]
"""``scorer(user_idx_batch int32 [b]) -> float scores [b, n_items]`` (higher is better)."""

DEFAULT_MAX_BATCH_BYTES = 256 * 1024 * 1024


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def evaluate(scorer: Scorer, split: Split, ks: Sequence[int] = (10, 20), users: np.ndarray | None = None,
             target_items: np.ndarray | None = None,
             max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> dict[str, float]:
    """Recall@K, NDCG@K and coverage of ``scorer`` on ``split`` with full ranking.

    Args:
        scorer: maps a batch of user indices to scores over all items.
        split: the split; its train items are masked.
        ks: cut-offs.
        users: users to evaluate (default: every user with a test item).
        target_items: if given, only these items count as test items (e.g. cold items), and only
            users with at least one of them are evaluated; ranking is still over all items.
        max_batch_bytes: memory bound for one batch of float32 scores.

    Returns:
        ``{"recall@K", "ndcg@K" for each K, "coverage", "users"}``.
    """
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    test, eval_users = _targets(split, users, target_items)
    acc = _Accumulator(split.n_items, ks)
    if eval_users.size == 0:
        return acc.result(test, eval_users)
    batch = max(1, int(max_batch_bytes // (4 * max(split.n_items, 1))))
    for start in range(0, eval_users.size, batch):
        ub = eval_users[start:start + batch]
        scores = np.array(scorer(ub), dtype=np.float32, copy=True)
        if scores.shape != (ub.size, split.n_items):
            raise ValueError(f"scorer returned shape {scores.shape}, expected {(ub.size, split.n_items)}")
        _mask_train(scores, split, ub)
        acc.add(test, ub, top_k(scores, kmax))
    return acc.result(test, eval_users)


def evaluate_lists(lists: np.ndarray, list_users: np.ndarray, split: Split, ks: Sequence[int] = (10, 20),
                   users: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of :func:`evaluate` for ranked lists given as they are (a served ranking).

    Args:
        lists: int [U, K] item indices best first; -1 pads a list shorter than K.
        list_users: int [U] the user of each list.
        split: the split (its test items are the targets).
        ks: cut-offs (each <= K).
        users: evaluate only these users (default: every listed user with a test item).

    Nothing is masked: an item the user already had in train that the ranking returns takes a slot
    and is a miss (it is never a test item), which is what that user would see.
    """
    ks = sorted(set(int(k) for k in ks))
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2 or lists.shape[1] < ks[-1]:
        raise ValueError(f"lists of shape {lists.shape} cannot give metrics at K={ks[-1]}")
    pos = {int(u): r for r, u in enumerate(np.asarray(list_users).tolist())}
    wanted = np.asarray(list_users if users is None else users, dtype=np.int32)
    missing = [int(u) for u in wanted.tolist() if int(u) not in pos]
    if missing:
        raise ValueError(f"no ranked list for users {missing[:5]}")
    test, eval_users = _targets(split, wanted, None)
    acc = _Accumulator(split.n_items, ks)
    if eval_users.size:
        acc.add(test, eval_users, lists[[pos[int(u)] for u in eval_users.tolist()], :ks[-1]])
    return acc.result(test, eval_users)


def ndcg_per_user(lists: np.ndarray, list_users: np.ndarray, split: Split, k: int) -> np.ndarray:
    """NDCG@k of each listed user (0 for a user without test items)."""
    lists = np.asarray(lists, dtype=np.int64)[:, :k]
    users = np.asarray(list_users, dtype=np.int32)
    hits = _hits(split.test, users, lists)
    n_rel = np.diff(split.test.indptr)[users].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    idcg = np.cumsum(discounts)[np.clip(np.minimum(n_rel, k).astype(np.int64) - 1, 0, None)]
    return np.where(n_rel > 0, (hits * discounts[:hits.shape[1]]).sum(axis=1) / idcg, 0.0)


def intra_list_diversity(lists: np.ndarray, vectors: np.ndarray, k: int = 10) -> float:
    """``ild@k``: mean pairwise cosine distance within each list's top ``k``, averaged over lists.

    Args:
        lists: int [U, >= k] rows of ``vectors``, best first; -1 pads a short list.
        vectors: float [N, D] item embeddings (zero rows: no embedding).
        k: cut-off.
    """
    top = np.asarray(lists, dtype=np.int64)[:, :k]
    valid = top >= 0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros(vectors.shape, np.float64), where=norms > 0)
    v = unit[np.where(valid, top, 0)] * valid[..., None]  # [U, k, D], zeros in the pads
    n = valid.sum(axis=1)
    pairs = n * (n - 1) / 2.0
    cos_sum = (np.einsum("ukd,uld->u", v, v) - np.einsum("ukd,ukd->u", v, v)) / 2.0  # i < j
    keep = pairs > 0
    return float(np.mean(1.0 - cos_sum[keep] / pairs[keep])) if keep.any() else 0.0


def category_coverage(lists: np.ndarray, categories: np.ndarray, k: int = 10) -> float:
    """``category_coverage@k``: distinct categories in each list's top ``k`` / ``k``, averaged over lists.

    Args:
        lists: int [U, >= k] rows of ``categories``, best first; -1 pads a short list.
        categories: int [N] category code of each row.
        k: cut-off.
    """
    top = np.asarray(lists, dtype=np.int64)[:, :k]
    if top.shape[0] == 0:
        return 0.0
    codes = np.asarray(categories, dtype=np.int64)[np.maximum(top, 0)]
    codes = np.sort(np.where(top >= 0, codes, -1), axis=1)  # pads (-1) first
    distinct = ((np.diff(codes, axis=1, prepend=-1) != 0) & (codes >= 0)).sum(axis=1)
    return float(np.mean(distinct / k))


def _targets(split: Split, users: np.ndarray | None, target_items: np.ndarray | None
             ) -> tuple[object, np.ndarray]:
    """The (possibly restricted) test matrix and the users with at least one target."""
    test = split.test
    if target_items is not None:
        keep = np.zeros(split.n_items, dtype=np.float32)
        keep[np.asarray(target_items, dtype=np.int64)] = 1.0
        test = test.multiply(keep[None, :]).tocsr()
        test.eliminate_zeros()
    candidates = split.test_users if users is None else np.asarray(users, dtype=np.int32)
    n_test = np.diff(test.indptr)[candidates]
    return test, candidates[n_test > 0]


class _Accumulator:
    """Sums of recall/NDCG over user batches, and the items recommended (coverage)."""

    def __init__(self, n_items: int, ks: Sequence[int]) -> None:
        self.ks = list(ks)
        self.kmax = self.ks[-1]
        self.n_items = n_items
        self.discounts = 1.0 / np.log2(np.arange(self.kmax) + 2.0)
        self.idcg_table = np.cumsum(self.discounts)
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in ("recall", "ndcg")}
        self.recommended = np.zeros(n_items, dtype=bool)

    def add(self, test, users: np.ndarray, top: np.ndarray) -> None:  # noqa: ANN001 (scipy CSR)
        listed = top[top >= 0]
        self.recommended[listed] = True
        hits = _hits(test, users, top)
        if hits.shape[1] < self.kmax:  # fewer items than the largest cut-off
            hits = np.pad(hits, ((0, 0), (0, self.kmax - hits.shape[1])))
        n_rel = np.diff(test.indptr)[users].astype(np.float64)
        for k in self.ks:
            h = hits[:, :k]
            self.sums[f"recall@{k}"] += float((h.sum(axis=1) / n_rel).sum())
            dcg = (h * self.discounts[:k]).sum(axis=1)
            idcg = self.idcg_table[np.minimum(n_rel, k).astype(np.int64) - 1]
            self.sums[f"ndcg@{k}"] += float((dcg / idcg).sum())

    def result(self, test, users: np.ndarray) -> dict[str, float]:  # noqa: ANN001
        out: dict[str, float] = {key: 0.0 for key in self.sums}
        out.update(coverage=0.0, users=float(users.size))
        if users.size == 0:
            return out
        for key, value in self.sums.items():
            out[key] = value / users.size
        out["coverage"] = float(self.recommended.sum()) / self.n_items
        return out


def _mask_train(scores: np.ndarray, split: Split, users: np.ndarray) -> None:
    rows = split.train[users]
    scores[np.repeat(np.arange(users.size), np.diff(rows.indptr)), rows.indices] = -np.inf


def _hits(test, users: np.ndarray, top: np.ndarray) -> np.ndarray:  # noqa: ANN001 (scipy CSR)
    """Boolean [b, k]: is the item at each rank a test item of that user."""
    rows = test[users]
    hits = np.zeros(top.shape, dtype=bool)
    for r in range(users.size):
        relevant = rows.indices[rows.indptr[r]:rows.indptr[r + 1]]
        hits[r] = np.isin(top[r], relevant, assume_unique=False) & (top[r] >= 0)
    return hits
