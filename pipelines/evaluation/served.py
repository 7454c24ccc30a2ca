"""The recommend function's ranking, evaluated offline: same scoring core, same settings, same inputs.

The ``served`` bench row ranks every evaluated user through :func:`scoring.rank.rank_user`, the
call ``Recommender.rank_for`` makes, with what the function would hold for that user:

* items: the model artefact's ``item_index.npz`` (:class:`ServedCatalogue`, built like the
  function's ``ItemIndex``) and the retrieval backend of ``functions/recommend/serving.env``
  (``RETRIEVAL``, ``IVF_NLIST``, ``IVF_NPROBE``, ``IVF_MIN_ITEMS``; ``MIN_POOL``/``POOL_FACTOR``
  if set there, else the function's defaults);
* the user document: the streaming pipeline keeps the last ``STORED_HISTORY`` events of a user
  (``StreamingConfig.history_length``) and their embedding from the query tower over that
  history: the query and the content profile use those events; plus ``seen``, the user's other
  train items (see below);
* the request: ``k`` = the largest cut-off, no ``alpha`` (the model version's default),
  ``exclude_seen`` and ``in_stock_only`` at their defaults (true), ``diversity`` 0 (the default;
  ``served_div<λ>`` rows and :func:`diversity_sweep` rank at other values, same pools).

Exclusion, offline vs served: the offline protocol masks every train item of a user. A function
that knew only the last 50 events would recommend older train items again (on synthetic 1.2 of
every 20 slots, NDCG@10 0.112 instead of 0.136 at alpha 1): a real defect, not a protocol
artefact. So the user document carries ``seen`` (``UserDoc.seen``: the items before the history
window) and ``exclude_seen`` excludes history + seen; the served row writes ``seen`` = every other
train item (the newest ``MAX_SEEN``), i.e. both exclude the same set: the streaming pipeline adds
every item that leaves a user's history window to ``seen`` (``pipelines.streaming.user_state``).
``ndcg@10_history_only`` in the details is what a function excluding only the history would give.
Lists are scored as returned (nothing masked); ``train_items_in_top20``
counts train items that still reach a list.

:func:`choose_defaults` is the training job's measurement of those defaults: a validation slice is
held out of the training events (never the test split), a model is trained on the rest, and alpha
(and, if it pays, alpha per stored-history-length bucket) and the candidate pool are swept through
the same scoring core.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.dataset import Interactions
from pipelines.evaluation.metrics import (
    category_coverage,
    evaluate_lists,
    intra_list_diversity,
    ndcg_per_user,
)
from pipelines.evaluation.splits import Split, random_split, temporal_split
from schemas.content import SparseRows
from schemas.firestore import MAX_SEEN
from schemas.index_snapshot import IndexSnapshot
from scoring.rank import (
    ItemArrays,
    RankRequest,
    RetrievalConfig,
    Retriever,
    ScoringDefaults,
    alpha_grid,
    build_retriever,
    candidates,
    known_rows,
    rank_pool,
    rank_user,
    rerank,
    resolve_alpha,
    resolve_pool,
    user_query,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SERVING_ENV = ROOT / "functions" / "recommend" / "serving.env"
STORED_HISTORY = 50  # pipelines.streaming.pipeline.StreamingConfig.history_length (not imported: Beam)
MIN_POOLS = (200, 100, 400)  # swept; the first is the function's default (ties keep it)
HISTORY_BUCKETS = (0, 10, 30)  # lower edges of the stored-history-length buckets for alpha
BUCKET_GAIN = 0.01  # per-bucket alphas are adopted only if they beat one alpha by 1% on validation
BUCKET_T = 3.0  # ... and the per-user paired gain is 3 standard errors from zero
MIN_BUCKET_USERS = 200
VALIDATION_FRACTION = 0.1
VALIDATION_USERS = 3000
_EMPTY = np.empty(0, dtype=np.int64)


def read_env_file(path: str | Path = SERVING_ENV) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (comments and blanks skipped)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def serving_config(path: str | Path = SERVING_ENV) -> RetrievalConfig:
    """The function's production retrieval settings."""
    return RetrievalConfig.from_env(read_env_file(path))


@dataclass
class ServedCatalogue:
    """The items as the function holds them, plus the map from its rows to a split's item indices."""

    item_ids: np.ndarray
    items: ItemArrays
    retriever: Retriever
    config: RetrievalConfig
    row_of: dict[str, int]
    to_split: np.ndarray  # int64 [N]: split item index of each row, -1 if the split lacks it
    defaults: ScoringDefaults | None = None

    @classmethod
    def build(cls, item_ids: Sequence[str], embeddings: np.ndarray, content: SparseRows | np.ndarray,
              categories: np.ndarray, in_stock: np.ndarray, split_item_ids: Sequence[str],
              config: RetrievalConfig, defaults: ScoringDefaults | None = None) -> ServedCatalogue:
        ids = np.asarray(item_ids).astype(str)
        items = ItemArrays.build(embeddings, content, categories, in_stock)
        split_of = {str(i): n for n, i in enumerate(split_item_ids)}
        to_split = np.array([split_of.get(i, -1) for i in ids.tolist()], dtype=np.int64)
        return cls(item_ids=ids, items=items, retriever=build_retriever(items, config), config=config,
                   row_of=dict(zip(ids.tolist(), range(ids.shape[0]))), to_split=to_split,
                   defaults=defaults)

    @classmethod
    def from_snapshot(cls, snap: IndexSnapshot, split_item_ids: Sequence[str], config: RetrievalConfig
                      ) -> ServedCatalogue:
        return cls.build(snap.item_ids, snap.embeddings, snap.content, snap.categories, snap.in_stock,
                         split_item_ids, config,
                         ScoringDefaults.from_dict(snap.serving_defaults))

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of the known ids, in order, no duplicates (``ItemIndex.rows``)."""
        return known_rows(self.row_of, item_ids)


@dataclass
class ServedUsers:
    """What the function would read for each user: query embedding, stored history, seen items."""

    users: np.ndarray  # split user indices
    queries: np.ndarray  # float32 [U, D]
    history: list[np.ndarray]  # catalogue rows of each user's stored history
    excluded: list[np.ndarray]  # rows exclude_seen removes: history, then seen (as the function builds it)
    seen: list[list[str]]  # the users/{id}.seen ids

    def history_lengths(self) -> np.ndarray:
        return np.array([h.size for h in self.history], dtype=np.int64)

    def subset(self, pos: np.ndarray) -> ServedUsers:
        return ServedUsers(users=self.users[pos], queries=self.queries[pos],
                           history=[self.history[p] for p in pos], excluded=[self.excluded[p] for p in pos],
                           seen=[self.seen[p] for p in pos])


def stored_history(split: Split, users: np.ndarray, length: int = STORED_HISTORY) -> list[list[str]]:
    """Item ids of each user's last ``length`` train events, oldest first (the user document)."""
    ids = np.asarray(split.item_ids, dtype=object)
    return [ids[split.history(int(u))[-length:]].tolist() for u in users]


def seen_items(split: Split, users: np.ndarray, histories: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each user's distinct train items outside their stored history, as the pipeline bounds
    ``users/{id}.seen`` (the newest ``MAX_SEEN``)."""
    ids = np.asarray(split.item_ids, dtype=object)
    out = []
    for u, hist in zip(np.asarray(users).tolist(), histories):
        recent = set(hist)
        others = [i for i in dict.fromkeys(ids[split.history(int(u))].tolist()) if i not in recent]
        out.append(others[-MAX_SEEN:])
    return out


def served_users(catalogue: ServedCatalogue, users: np.ndarray, histories: Sequence[Sequence[str]],
                 queries: np.ndarray, seen: Sequence[Sequence[str]] | None = None) -> ServedUsers:
    """The users as the function sees them; ``seen`` None: documents without ``seen``."""
    seen = [list(s) for s in seen] if seen is not None else [[] for _ in histories]
    history = [catalogue.rows(h) for h in histories]
    excluded = [np.concatenate([h, catalogue.rows(s)]) if s else h for h, s in zip(history, seen)]
    return ServedUsers(users=np.asarray(users, dtype=np.int32), queries=np.asarray(queries, np.float32),
                       history=history, excluded=excluded, seen=seen)


def rank_rows(catalogue: ServedCatalogue, users: ServedUsers, k: int, alpha: float | None = None,
              diversity: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each user's served top-``k`` as catalogue rows [U, k] (-1 pads), and the alpha used [U]."""
    cfg, defaults = catalogue.config, catalogue.defaults
    out = np.full((users.users.size, k), -1, dtype=np.int64)
    alphas = np.zeros(users.users.size)
    pool = resolve_pool(k, defaults, cfg.min_pool, cfg.pool_factor)
    for j, hist in enumerate(users.history):
        query = user_query(catalogue.items, users.queries[j], hist, _EMPTY)
        a = resolve_alpha(alpha, defaults, hist.size)
        ranked = rank_user(catalogue.items, catalogue.retriever, query,
                           RankRequest(k=k, alpha=a, pool=pool, exclude_rows=users.excluded[j],
                                       in_stock_only=True, diversity=diversity))
        out[j, :ranked.rows.size] = ranked.rows
        alphas[j] = a
    return out, alphas


def to_split_lists(catalogue: ServedCatalogue, rows: np.ndarray) -> np.ndarray:
    """Catalogue rows [U, k] (-1 pads) as split item indices (-1: pad, or an item the split lacks)."""
    return np.where(rows >= 0, catalogue.to_split[np.maximum(rows, 0)], -1)


def rank_lists(catalogue: ServedCatalogue, users: ServedUsers, k: int, alpha: float | None = None,
               diversity: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each user's served top-``k`` as split item indices [U, k] (-1 pads), and the alpha used [U]."""
    rows, alphas = rank_rows(catalogue, users, k, alpha, diversity)
    return to_split_lists(catalogue, rows), alphas


def list_diversity(catalogue: ServedCatalogue, rows: np.ndarray, k: int = 10) -> dict[str, float]:
    """``ild@k`` and ``category_coverage@k`` of served lists (catalogue rows), as :mod:`metrics` defines."""
    items = catalogue.items
    return {f"ild@{k}": intra_list_diversity(rows, items.embeddings, k),
            f"category_coverage@{k}": category_coverage(rows, items.category_codes, k)}


def sweep(catalogue: ServedCatalogue, users: ServedUsers, split: Split, k: int, alphas: Sequence[float],
          min_pools: Sequence[int], metric_k: int = 10) -> dict[tuple[int, float], np.ndarray]:
    """Per-user NDCG@``metric_k`` of the served lists for every (min_pool, alpha).

    Retrieves each user's largest pool once; a smaller pool is its head (the best by CF score), the
    pool a request with that setting retrieves.
    """
    cfg = catalogue.config
    pools = {p: resolve_pool(k, ScoringDefaults(alpha=1.0, min_pool=p), cfg.min_pool, cfg.pool_factor)
             for p in min_pools}
    biggest = max(pools.values())
    lists = {(p, a): np.full((users.users.size, k), -1, dtype=np.int64) for p in min_pools for a in alphas}
    for j, hist in enumerate(users.history):
        query = user_query(catalogue.items, users.queries[j], hist, _EMPTY)
        cands = candidates(catalogue.items, catalogue.retriever, query,
                           RankRequest(k=k, alpha=1.0, pool=biggest, exclude_rows=users.excluded[j],
                                       in_stock_only=True))
        for p, size in pools.items():
            head = cands.head(size)
            for a in alphas:
                rows = rerank(head, k, a).rows
                lists[(p, a)][j, :rows.size] = catalogue.to_split[rows]
    return {key: ndcg_per_user(v, users.users, split, metric_k) for key, v in lists.items()}


def diversity_sweep(catalogue: ServedCatalogue, users: ServedUsers, split: Split, k: int,
                    diversities: Sequence[float], metric_k: int = 10) -> dict[float, dict[str, float]]:
    """NDCG@``metric_k``, ``ild@metric_k`` and ``category_coverage@metric_k`` of the served lists at
    every diversity (model version's alpha and pool), each user's pool retrieved once."""
    cfg, defaults = catalogue.config, catalogue.defaults
    pool = resolve_pool(k, defaults, cfg.min_pool, cfg.pool_factor)
    rows = {d: np.full((users.users.size, k), -1, dtype=np.int64) for d in diversities}
    for j, hist in enumerate(users.history):
        query = user_query(catalogue.items, users.queries[j], hist, _EMPTY)
        a = resolve_alpha(None, defaults, hist.size)
        cands = candidates(catalogue.items, catalogue.retriever, query,
                           RankRequest(k=k, alpha=a, pool=pool, exclude_rows=users.excluded[j],
                                       in_stock_only=True))
        for d in diversities:
            ranked = rank_pool(catalogue.items, cands, k, a, d).rows
            rows[d][j, :ranked.size] = ranked
    out = {}
    for d, r in rows.items():
        ndcg = ndcg_per_user(to_split_lists(catalogue, r), users.users, split, metric_k)
        out[d] = {f"ndcg@{metric_k}": float(ndcg.mean()) if ndcg.size else 0.0,
                  **list_diversity(catalogue, r, metric_k)}
    return out


def choose(per_user: Mapping[tuple[int, float], np.ndarray], history_lengths: np.ndarray
           ) -> tuple[ScoringDefaults, dict[str, Any]]:
    """The (min_pool, alpha) with the best mean NDCG, then per-bucket alphas if they pay.

    Ties keep the earlier pool of the sweep (the function's default first) and the larger alpha.
    """
    pools = list(dict.fromkeys(p for p, _ in per_user))
    keys = sorted(per_user, key=lambda pa: (pools.index(pa[0]), -pa[1]))
    means = {key: float(per_user[key].mean()) for key in keys}
    best = max(keys, key=lambda key: means[key])  # max keeps the first of equal values
    pool, alpha = best
    report: dict[str, Any] = {
        "alpha_sweep": {f"{a:g}": means[(pool, a)] for p, a in keys if p == pool},
        "pool_sweep": {str(p): means[(p, alpha)] for p, a in keys if a == alpha},
        "ndcg@10": means[best]}
    edges = list(HISTORY_BUCKETS) + [np.iinfo(np.int64).max]
    total = np.zeros_like(per_user[best])
    buckets: list[tuple[int, float]] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        members = (history_lengths >= lo) & (history_lengths < hi)
        if members.sum() < MIN_BUCKET_USERS:
            buckets = []
            break
        alphas = [a for p, a in keys if p == pool]
        a_best = max(alphas, key=lambda a: float(per_user[(pool, a)][members].sum()))
        buckets.append((lo, a_best))
        total[members] = per_user[(pool, a_best)][members]
    bucketed = float(total.mean()) if buckets else None
    report["bucketed_ndcg@10"] = bucketed
    report["buckets"] = [[lo, a] for lo, a in buckets]
    # Three alphas picked on the same users flatter themselves: adopt them only for a gain that is
    # both worth having and clear of the per-user noise (paired t >= BUCKET_T).
    diff = total - per_user[best]
    spread = float(diff.std(ddof=1)) / np.sqrt(diff.size) if diff.size > 1 else 0.0
    report["bucketed_t"] = float(diff.mean()) / spread if spread > 0 else 0.0
    use_buckets = (bucketed is not None and bucketed > means[best] * (1.0 + BUCKET_GAIN)
                   and report["bucketed_t"] >= BUCKET_T)
    report["buckets_adopted"] = use_buckets
    defaults = ScoringDefaults(alpha=alpha, min_pool=pool,
                               alpha_by_history=tuple(buckets) if use_buckets else ())
    return defaults, report


# ------------------------------------------------------------------------ the training job's choice
def interactions_of(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray) -> Interactions:
    """Columnar interactions from parallel id arrays (the training job's input)."""
    users, uidx = np.unique(np.asarray(user_ids).astype(str), return_inverse=True)
    items, iidx = np.unique(np.asarray(item_ids).astype(str), return_inverse=True)
    n = uidx.shape[0]
    return Interactions(user_ids=users.tolist(), item_ids=items.tolist(), user_idx=uidx.astype(np.int32),
                        item_idx=iidx.astype(np.int32), timestamps=np.asarray(timestamps, dtype=np.int64),
                        event_types=np.zeros(n, dtype=np.int8))


def validation_split(data: Any, holdout: str = "temporal", fraction: float = VALIDATION_FRACTION,
                     seed: int = 0) -> Split:
    """A validation split of the training events (``data`` a ``TrainingInput``)."""
    inter = interactions_of(data.user_ids, data.item_ids, data.timestamps)
    if holdout == "random":
        return random_split(inter, fraction, seed=seed, name="validation")
    return temporal_split(inter, fraction, name="validation")


def keras_queries(trained: Any, user_ids: Sequence[str], histories: Sequence[Sequence[str]]) -> np.ndarray:
    """Query embeddings from the in-memory model, as ``Towers.embed_users`` computes them."""
    n = trained.config.history_length
    rows = [list(h)[-n:] for h in histories]
    width = max(1, max((len(r) for r in rows), default=0))
    hist = np.zeros((len(rows), width), dtype=np.int32)  # PAD_INDEX = 0, left padding
    for j, r in enumerate(rows):
        if r:
            hist[j, width - len(r):] = trained.space.encode_items(r)
    users = np.asarray(trained.space.encode_users(list(user_ids)), dtype=np.int32)
    return trained.user_embeddings(users, hist)


def catalogue_of(trained: Any, split_item_ids: Sequence[str], config: RetrievalConfig) -> ServedCatalogue:
    """The snapshot the training job would write for ``trained``, in memory."""
    items = list(trained.catalogue)
    ids = [i.item_id for i in items]
    return ServedCatalogue.build(ids, trained.candidate_embeddings(ids),
                                 trained.space.encoder.encode_sparse(items),
                                 np.array([i.category for i in items], dtype=str),
                                 np.array([i.in_stock for i in items], dtype=bool), split_item_ids, config)


def measure_defaults(trained: Any, vsplit: Split, retrieval: RetrievalConfig | None = None, k: int = 20,
                     seed: int = 0, max_users: int = VALIDATION_USERS
                     ) -> tuple[ScoringDefaults | None, dict[str, Any]]:
    """Sweep the served ranking of a model trained on ``vsplit``'s train part over its test part.

    Ranks (at most ``max_users`` of) the slice's users with the scoring core at every alpha of
    :func:`scoring.rank.alpha_grid` and pool of ``MIN_POOLS``; keeps the best NDCG@10
    (:func:`choose`). The training job calls it on its validation slice
    (``pipelines.training.train.tune_defaults``).
    """
    t0 = time.perf_counter()
    retrieval = retrieval or serving_config()
    users = vsplit.test_users
    known = np.isin(np.asarray(vsplit.user_ids, dtype=object)[users],
                    np.asarray(trained.space.users, dtype=object))
    users = users[known]
    if users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    if users.size == 0:
        log.warning("no validation users: no serving defaults measured (the function's settings apply)")
        return None, {"users": 0}
    catalogue = catalogue_of(trained, vsplit.item_ids, retrieval)
    histories = stored_history(vsplit, users)
    queries = keras_queries(trained, [vsplit.user_ids[u] for u in users], histories)
    su = served_users(catalogue, users, histories, queries, seen_items(vsplit, users, histories))
    per_user = sweep(catalogue, su, vsplit, k, alpha_grid(), MIN_POOLS)
    defaults, report = choose(per_user, su.history_lengths())
    report.update(users=int(users.size), sweep_seconds=round(time.perf_counter() - t0, 1))
    log.info("serving defaults %s (validation NDCG@10 %.4f, %d users)", defaults.to_dict(),
             report["ndcg@10"], users.size)
    return defaults, report


def evaluate_served(catalogue: ServedCatalogue, users: ServedUsers, split: Split, ks: Sequence[int],
                    diversity: float = 0.0) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of the served lists at the model version's defaults (and ``diversity``), and the lists."""
    rows, alphas = rank_rows(catalogue, users, max(ks), diversity=diversity)
    lists = to_split_lists(catalogue, rows)
    metrics = evaluate_lists(lists, users.users, split, ks)
    metrics.update(list_diversity(catalogue, rows, min(ks)), diversity=float(diversity))
    metrics["alpha"] = float(np.mean(alphas)) if alphas.size else float("nan")
    train_hits = [np.isin(lists[j][lists[j] >= 0], split.train[int(u)].indices).sum()
                  for j, u in enumerate(users.users.tolist())]
    metrics[f"train_items_in_top{max(ks)}"] = float(np.mean(train_hits)) if train_hits else 0.0
    return metrics, lists


def with_defaults(catalogue: ServedCatalogue, defaults: ScoringDefaults | None) -> ServedCatalogue:
    return dataclasses.replace(catalogue, defaults=defaults)
