"""CPU cost of diversity on request: ``rank_user`` with diversity 0.5 vs 0, in process (an experiment).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.diversity_cost [--items 100000 --requests 1000]

(one BLAS thread, as ``serving.env`` sets for the function)

A clustered synthetic catalogue (``--items`` x ``--dim`` embeddings, sparse content of ~6 non-zeros
over 616 columns, 30 categories, 5% out of stock) behind the retrieval of ``serving.env``; each
request (a user near a cluster, 20 history rows excluded, k 10, alpha 0.7, the default pool) is
ranked at diversity 0 and 0.5 back to back, in alternating order, timed in thread CPU. Also the
re-rank step alone (``rank_pool`` on the same candidates). Writes ``reports/bench/diversity_cost.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from bench.measure import load_average, machine_info, print_rows, write_report
from schemas.content import SparseRows
from scoring.rank import (
    ItemArrays,
    RankRequest,
    build_retriever,
    candidates,
    rank_pool,
    rank_user,
    resolve_pool,
    user_query,
)

REPORT = "reports/bench/diversity_cost.json"


def catalogue(n: int, dim: int, seed: int = 0) -> tuple[ItemArrays, np.ndarray, np.ndarray]:
    """Items, the cluster of each row and the cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 500, 2), dim)).astype(np.float32)
    cluster = rng.integers(0, centres.shape[0], n)
    emb = (centres[cluster] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    cols, width = 616, 6
    # one category column, then one column from each of five disjoint blocks: distinct, sorted
    blocks = 30 + 97 * np.arange(width - 1) + rng.integers(0, 97, size=(n, width - 1))
    indices = np.concatenate([(cluster % 30)[:, None], blocks], axis=1)
    content = SparseRows(np.arange(0, n * width + 1, width, dtype=np.int64),
                         indices.reshape(-1).astype(np.int32), np.ones(n * width, np.float32), cols)
    items = ItemArrays.build(emb, content, (cluster % 30).astype(str), rng.random(n) > 0.05,
                             content_normalized=False)
    return items, cluster, centres


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--diversity", type=float, default=0.5)
    p.add_argument("--out", default=REPORT)
    args = p.parse_args(argv)
    from pipelines.evaluation.served import serving_config  # the function's retrieval settings

    load_before = load_average()
    items, cluster, centres = catalogue(args.items, args.dim)
    config = serving_config()
    retriever = build_retriever(items, config)
    pool = resolve_pool(10, None, config.min_pool, config.pool_factor)
    rng = np.random.default_rng(1)
    by_cluster = [np.flatnonzero(cluster == c) for c in range(centres.shape[0])]
    reqs = []
    for _ in range(args.requests):
        c = int(rng.integers(0, centres.shape[0]))
        hist = rng.choice(by_cluster[c], size=min(20, by_cluster[c].size), replace=False)
        vec = (centres[c] + 0.3 * rng.normal(size=args.dim)).astype(np.float32)
        query = user_query(items, vec, hist, hist[:0])
        reqs.append((query, RankRequest(k=10, alpha=0.7, pool=pool, exclude_rows=hist, in_stock_only=True)))
    levels = (0.0, args.diversity)
    full = {d: [] for d in levels}
    step = {d: [] for d in levels}
    clock = time.thread_time_ns
    for r in range(args.rounds):
        for i, (query, req) in enumerate(reqs):
            order = levels if (i + r) % 2 == 0 else levels[::-1]
            for d in order:
                diverse = RankRequest(**{**req.__dict__, "diversity": d})
                t0 = clock()
                rank_user(items, retriever, query, diverse)
                full[d].append(clock() - t0)
            cands = candidates(items, retriever, query, req)
            for d in order:
                t0 = clock()
                rank_pool(items, cands, req.k, req.alpha, d)
                step[d].append(clock() - t0)

    def us(x: list[int]) -> dict[str, float]:
        a = np.asarray(x, dtype=np.float64) / 1e3
        return {"mean_us": float(a.mean()), "median_us": float(np.median(a)),
                "p90_us": float(np.percentile(a, 90))}

    hi = args.diversity
    report = {
        "what": __doc__.split("\n\n")[0], "items": args.items, "dim": args.dim, "k": 10, "pool": pool,
        "retrieval": retriever.name, "requests": args.requests, "rounds": args.rounds,
        "rank_user": {f"diversity_{d:g}": us(v) for d, v in full.items()},
        "rank_user_delta": us(list(np.subtract(full[hi], full[0.0]))),
        "rerank_step": {f"diversity_{d:g}": us(v) for d, v in step.items()},
        "rerank_step_delta": us(list(np.subtract(step[hi], step[0.0]))),
        "load_average_before": load_before, "load_average_after": load_average(),
        "machine": machine_info("numpy"), "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    path = write_report(report, args.out)
    rows = [(f"rank_user, diversity {d:g}", f"{v['mean_us']:.1f} / {v['median_us']:.1f} us", "mean / median")
            for d, v in zip(levels, report["rank_user"].values())]
    rows += [("rank_user delta", f"{report['rank_user_delta']['mean_us']:.1f} / "
                                 f"{report['rank_user_delta']['median_us']:.1f} us", "<= 100 us"),
             ("re-rank step delta", f"{report['rerank_step_delta']['mean_us']:.1f} / "
                                    f"{report['rerank_step_delta']['median_us']:.1f} us", "")]
    print_rows(f"diversity cost ({retriever.name}, {args.items:,} x {args.dim}, pool {pool}, "
               f"load {report['load_average_before'][0]:.1f})", rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
