"""In-process cost of a request: retrieval + ranking as served, the exact scan, the IVF grid.

Load tests mix framework, I/O and the shared machine's noise, so the ranking's own CPU is measured
here in the benchmark's process against the raw matrix-vector product on the same index.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving.config import BenchConfig
from schemas.firestore import UserDoc
from schemas.index_snapshot import IndexSnapshot


def _median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1000.0)


def _timed(fn, args: list) -> tuple[float, float]:
    """Median wall time and median thread-CPU time of ``fn(a)`` over ``args``."""
    wall, cpu = [], []
    for a in args:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(a)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return float(np.median(wall)), float(np.median(cpu))


def _function_modules():
    from recommender.config import Settings
    from recommender.index import ItemIndex
    from recommender.params import RecommendParams
    from recommender.service import Recommender
    return Settings, ItemIndex, RecommendParams, Recommender


def _filter_categories(snap: IndexSnapshot) -> tuple[str, ...]:
    """Two mid-frequency categories (the 4th and 11th most common) for the filtered figure."""
    names, counts = np.unique(snap.categories.astype(str), return_counts=True)
    ranked = names[np.argsort(-counts, kind="stable")].tolist()
    return tuple(ranked[i] for i in (3, 10) if i < len(ranked)) or tuple(ranked[:1])


def served_settings():
    """The function's settings as served (environment, e.g. RETRIEVAL / IVF_* overrides)."""
    Settings = _function_modules()[0]
    return Settings.from_env()


def served_index(service, exact_index, index_uri: str, snapshot_version: str):
    """The index as the function serves it: the training job's faiss index loaded, or IVF built."""
    return service.with_ivf_built(service.indexes.with_ann_loaded(exact_index, index_uri, snapshot_version))


def _diversity_request():
    """``RankRequest`` if it has a ``diversity`` field (another change adds it), else None."""
    from scoring.rank import RankRequest

    return RankRequest if "diversity" in getattr(RankRequest, "__dataclass_fields__", {}) else None


def _direct_ranker(index, users: list[UserDoc], settings, diversity: float):
    """``rank_user`` on the served index for a user, as ``rank_for`` calls it, with ``diversity``."""
    from scoring.rank import rank_user, resolve_pool, retriever_for, user_query

    RankRequest = _diversity_request()
    retriever = retriever_for(index.embeddings, index.ivf)
    pool = resolve_pool(10, index.defaults, settings.min_pool, settings.pool_factor)

    def rank(u: UserDoc):
        hist = index.rows(h.item_id for h in u.history)
        query = user_query(index, np.asarray(u.embedding, dtype=np.float32), hist, hist[:0])
        return rank_user(index, retriever, query, RankRequest(k=10, alpha=settings.default_alpha, pool=pool,
                                                              exclude_rows=hist, diversity=diversity))
    return rank


def measure_compute(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc], index_uri: str = "",
                    rounds: int = 5) -> dict:
    """Retrieval + hybrid ranking per request vs the bare matvec, same index, same queries.

    ``compute``: as served (the configured retrieval, IVF by default); ``compute_exact``: the
    exact scan; ``floor``: the raw 100k x D matrix-vector product. Measured in alternating
    rounds so a noisy, shared machine affects all alike; each figure is the median of the
    rounds' medians, in thread CPU time (what the request costs) and in wall time.
    """
    Settings, ItemIndex, RecommendParams, Recommender = _function_modules()
    settings = served_settings()
    t = time.perf_counter()
    exact_index = ItemIndex.from_snapshot(snap)
    build_s = time.perf_counter() - t
    service = Recommender(settings, store=None)  # rank_for never touches the store
    t = time.perf_counter()
    index = served_index(service, exact_index, index_uri, snap.version)
    ivf_build_s = time.perf_counter() - t
    params = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha)
    cat_params = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha,
                                 categories=_filter_categories(snap))
    queries = [users[i % len(users)] for i in range(cfg.compute_queries)]
    vectors = [np.asarray(u.embedding, dtype=np.float32) for u in queries]
    body = service.rank_for(index, params, queries[0])
    assert body["strategy"] == "personalized" and len(body["items"]) == 10
    names = ("floor", "compute", "compute_exact", "filtered", "filtered_exact")
    diverse = _diversity_request() is not None
    if diverse:
        names += ("direct", "diversity")
        direct, diversity = (_direct_ranker(index, queries, settings, d) for d in (0.0, 0.5))
    rounds_out: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(rounds):
        if diverse:
            rounds_out["direct"].append(_timed(direct, queries))
            rounds_out["diversity"].append(_timed(diversity, queries))
        rounds_out["floor"].append(_timed(lambda q: exact_index.embeddings @ q, vectors))
        rounds_out["compute"].append(_timed(lambda u: service.rank_for(index, params, u), queries))
        rounds_out["compute_exact"].append(
            _timed(lambda u: service.rank_for(exact_index, params, u), queries))
        rounds_out["filtered"].append(_timed(lambda u: service.rank_for(index, cat_params, u), queries))
        rounds_out["filtered_exact"].append(
            _timed(lambda u: service.rank_for(exact_index, cat_params, u), queries))

    def ms(name: str, which: int) -> float:
        return float(np.median([r[which] for r in rounds_out[name]]) * 1000)

    extra = {"compute_diversity_ms": ms("diversity", 1), "compute_direct_no_diversity_ms": ms("direct", 1),
             "diversity_note": "rank_user with diversity 0.5 / 0 at the default pool (k 10, user "
                               "embedding, history excluded), thread CPU"} if diverse else {}
    return {"compute_ms": ms("compute", 1), **extra, "matvec_floor_ms": ms("floor", 1),
            "compute_vs_floor": ms("compute", 1) / ms("floor", 1),
            "compute_exact_ms": ms("compute_exact", 1),
            "compute_exact_vs_floor": ms("compute_exact", 1) / ms("floor", 1),
            "compute_with_category_filter_ms": ms("filtered", 1),
            "compute_exact_with_category_filter_ms": ms("filtered_exact", 1),
            "compute_wall_ms": ms("compute", 0), "compute_exact_wall_ms": ms("compute_exact", 0),
            "matvec_floor_wall_ms": ms("floor", 0),
            "compute_with_category_filter_wall_ms": ms("filtered", 0),
            "filter_categories": list(cat_params.categories),
            "timing": "compute_ms/matvec_floor_ms: thread CPU time (immune to the shared machine's "
                      "preemption); *_wall_ms: wall clock; medians of per-round medians; compute = "
                      "retrieval + ranking as served (see index), compute_exact = with the exact scan",
            "rounds_ms": {k: [[round(w * 1000, 3), round(c * 1000, 3)] for w, c in v]
                          for k, v in rounds_out.items()},
            "index_build_s": build_s, "ann_load_or_ivf_build_s": ivf_build_s,
            "index": index_summary(service, index, exact_index, users)}


def _overlap(a: list[dict], b: list[dict]) -> float:
    ids = {i["item_id"] for i in b}
    return len([i for i in a if i["item_id"] in ids]) / max(len(b), 1)


def index_summary(service, index, exact_index, users: list[UserDoc]) -> dict:
    """The served index type and its recall@10 vs exact on the benchmark's own users.

    ``recall_at_10``: overlap of the served top 10 (IVF retrieval + hybrid ranking, the default
    request) with the same request answered by the exact scan. ``cf_recall_at_10``: overlap of the
    top 10 by dot product alone (unfiltered), IVF vs exact.
    """
    RecommendParams = _function_modules()[2]
    from scoring.ranking import retrieve

    out: dict = {"type": index.retrieval, "items": index.size}
    if index.ivf is None:
        return {**out, "recall_at_10": 1.0, "cf_recall_at_10": 1.0}
    params = RecommendParams(user_id="u", k=10, alpha=service.settings.default_alpha)
    served, cf, scanned = [], [], []
    for u in users:
        served.append(_overlap(service.rank_for(index, params, u)["items"],
                               service.rank_for(exact_index, params, u)["items"]))
        q = np.asarray(u.embedding, dtype=np.float32)
        approx, _ = retrieve(q, index.embeddings, 10, None, index.ivf)
        exact, _ = retrieve(q, index.embeddings, 10, None, None)
        cf.append(len(set(approx.tolist()) & set(exact.tolist())) / 10)
        scanned.append(index.ivf.candidates(q)[0].shape[0] if index.retrieval == "ivf"
                       else index.size * index.ivf.nprobe / index.ivf.nlist)
    return {**out, "nlist": index.ivf.nlist, "nprobe": index.ivf.nprobe,
            "recall_at_10": float(np.mean(served)), "cf_recall_at_10": float(np.mean(cf)),
            "users": len(users), "scanned_rows_mean": float(np.mean(scanned)),
            "scanned_fraction": float(np.mean(scanned)) / index.size}


def measure_backends(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc], index_uri: str,
                     sample_users: int = 300, rounds: int = 3) -> dict:
    """The retrieval backends side by side on this catalogue, interleaved per round.

    Per backend: ``retrieval_ms`` (thread CPU of the top-pool retrieval, unfiltered, median),
    ``recall_at_10`` (served list vs the exact scan's) and ``cf_recall_at_10`` (top 10 by dot
    product), ``ready_s`` (faiss: load of the training job's file; numpy IVF: build at load) and
    ``index_mb`` (memory beyond the embeddings).
    """
    Settings, ItemIndex, RecommendParams, Recommender = _function_modules()
    from scoring.rank import retriever_for

    settings = served_settings()
    exact_index = ItemIndex.from_snapshot(snap)
    params = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha)
    exact_service = Recommender(dataclasses.replace(settings, retrieval="exact"), store=None)
    sample = users[:sample_users]
    qs = [np.asarray(u.embedding, dtype=np.float32) for u in sample]
    pool = max(settings.min_pool, settings.pool_factor * 10)
    exact_served = [exact_service.rank_for(exact_index, params, u)["items"] for u in sample]
    exact_cf = [set(retriever_for(exact_index.embeddings, None).search(q, 10, None)[0].tolist()) for q in qs]
    indexes = {"exact": (exact_index, 0.0, 0.0)}
    t = time.perf_counter()
    faiss_index = Recommender(dataclasses.replace(settings, retrieval="faiss"), store=None
                              ).indexes.with_ann_loaded(exact_index, index_uri, snap.version)
    if faiss_index.ivf is not None:
        ready = time.perf_counter() - t
        from scoring import ann  # the index in memory is about its file (codes, ids, centroids)

        indexes["faiss"] = (faiss_index, ready, (Path(index_uri).parent / ann.ANN_FILE).stat().st_size / 1e6)
    t = time.perf_counter()
    ivf_index = exact_index.with_ivf(settings.ivf_nlist, settings.ivf_nprobe)
    ivf = ivf_index.ivf
    indexes["ivf"] = (ivf_index, time.perf_counter() - t,
                      (ivf.sorted_emb.nbytes + ivf.order.nbytes + ivf.assign.nbytes) / 1e6)
    cpu: dict[str, list[float]] = {k: [] for k in indexes}
    for _ in range(rounds):
        for name, (idx, _, _) in indexes.items():
            r = retriever_for(idx.embeddings, idx.ivf)
            for q in qs:
                c0 = time.thread_time()
                r.search(q, pool, None)
                cpu[name].append(time.thread_time() - c0)
    out = {}
    for name, (idx, ready, mb) in indexes.items():
        r = retriever_for(idx.embeddings, idx.ivf)
        served = [_overlap(exact_service.rank_for(idx, params, u)["items"], e)
                  for u, e in zip(sample, exact_served)]
        cf = [len(set(r.search(q, 10, None)[0].tolist()) & e) / 10 for q, e in zip(qs, exact_cf)]
        out[name] = {"retrieval_ms": _median_ms(cpu[name]), "recall_at_10": float(np.mean(served)),
                     "cf_recall_at_10": float(np.mean(cf)), "ready_s": round(ready, 3),
                     "index_mb": round(mb, 1),
                     **({"nlist": idx.ivf.nlist, "nprobe": idx.ivf.nprobe} if idx.ivf is not None else {})}
    return {"users": len(sample), "pool": pool, "backends": out}


@dataclasses.dataclass
class _GridBase:
    """What every grid point is compared with: the exact scan's top 10 and served lists."""

    exact_index: Any
    params: Any
    users: list[UserDoc]
    queries: list[np.ndarray]
    exact_cf: list[set]
    exact_service: Any
    exact_served: list[list[dict]]
    pool: int


def _grid_base(snap: IndexSnapshot, users: list[UserDoc], sample_users: int) -> _GridBase:
    Settings, ItemIndex, RecommendParams, Recommender = _function_modules()
    from scoring.ranking import retrieve

    exact_index = ItemIndex.from_snapshot(snap)
    settings = served_settings()
    params = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha)
    sample = users[:sample_users]
    qs = [np.asarray(u.embedding, dtype=np.float32) for u in sample]
    exact_service = Recommender(dataclasses.replace(settings, retrieval="exact"), store=None)
    return _GridBase(exact_index, params, sample, qs,
                     [set(retrieve(q, exact_index.embeddings, 10, None)[0].tolist()) for q in qs],
                     exact_service, [exact_service.rank_for(exact_index, params, u)["items"] for u in sample],
                     max(settings.min_pool, settings.pool_factor * 10))


def _grid_point(base: _GridBase, idx: Any, search: Any) -> dict:
    """Recall@10 (top 10 by dot product, and the served list) vs exact, and CPU of ``search(q, n)``."""
    cf, served, cpu = [], [], []
    for q, e_cf, u, e_served in zip(base.queries, base.exact_cf, base.users, base.exact_served):
        c0 = time.thread_time()
        search(q, base.pool)
        cpu.append(time.thread_time() - c0)
        cf.append(len(set(search(q, 10)[0].tolist()) & e_cf) / 10)
        served.append(_overlap(base.exact_service.rank_for(idx, base.params, u)["items"], e_served))
    return {"cf_recall_at_10": float(np.mean(cf)), "recall_at_10": float(np.mean(served)),
            "retrieval_ms": _median_ms(cpu)}


def measure_faiss_grid(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc], sample_users: int = 300
                       ) -> dict:
    """The faiss grid (partitions x probes), like :func:`measure_ivf`: recall@10 vs exact, CPU per query.

    Each index is built with the training job's :func:`scoring.ann.build_index`; ``retrieval_ms``
    is the thread CPU of the faiss retriever for the default pool, unfiltered.
    """
    from scoring import ann
    from scoring.rank import retriever_for

    base = _grid_base(snap, users, sample_users)
    emb, norms = base.exact_index.embeddings, base.exact_index.norms
    out: dict = {"users": len(base.users), "grid": []}
    for nlist in cfg.ivf_nlists:
        t = time.perf_counter()
        built = ann.build_index(emb, nlist)
        build_s = time.perf_counter() - t
        for nprobe in cfg.ivf_nprobes:
            fi = ann.FaissIvf.from_index(built, emb, norms, nprobe)
            r = retriever_for(emb, fi)
            point = _grid_point(base, dataclasses.replace(base.exact_index, ivf=fi),
                                lambda q, n, r=r: r.search(q, n, None))
            out["grid"].append({"nlist": nlist, "nprobe": nprobe, "build_s": round(build_s, 3), **point})
    return out


def measure_ivf(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc], sample_users: int = 300
                ) -> dict:
    """The IVF grid (partitions x probes) on this catalogue: recall@10 vs exact and CPU per query.

    Recall of the top 10 by dot product (``cf_recall_at_10``) and of the served list after hybrid
    ranking (``recall_at_10``, the default request), both against the exact scan, over the
    benchmark's users; ``retrieval_ms``: thread CPU of the IVF candidate scoring + top-pool.
    """
    from scoring.ranking import retrieve

    base = _grid_base(snap, users, sample_users)
    exact_index, qs, pool = base.exact_index, base.queries, base.pool
    out: dict = {"users": len(base.users), "grid": []}
    for nlist in cfg.ivf_nlists:
        t = time.perf_counter()
        index = exact_index.with_ivf(nlist, 1)
        build_s = time.perf_counter() - t
        for nprobe in cfg.ivf_nprobes:
            ivf = dataclasses.replace(index.ivf, nprobe=nprobe)
            point = _grid_point(base, dataclasses.replace(index, ivf=ivf),
                                lambda q, n, ivf=ivf: retrieve(q, exact_index.embeddings, n, None, ivf))
            out["grid"].append({"nlist": nlist, "nprobe": nprobe, "build_s": round(build_s, 3), **point})
    c0 = time.thread_time()
    for q in qs:
        retrieve(q, exact_index.embeddings, pool, None)
    out["exact_retrieval_ms"] = (time.thread_time() - c0) / len(qs) * 1000
    return out

