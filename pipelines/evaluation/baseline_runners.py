"""The baseline runners (popularity, item-kNN, EASE, implicit ALS), registered for the bench.

Hyper-parameters come from ``DEFAULTS`` (per data set, else ``"*"``), overridable with
``--opt name.key=value`` (e.g. ``--opt ease.lambda=300``). The per-data-set values were picked
with a small sweep on the same split the bench reports (so the baselines are, if anything,
flattered, which makes them a conservative bar for the two-tower model).
"""

from __future__ import annotations

import time

from pipelines.data.dataset import Dataset
from pipelines.evaluation import baselines
from pipelines.evaluation.metrics import Scorer, evaluate
from pipelines.evaluation.registry import RunOptions, entry, register
from pipelines.evaluation.resources import ResourceMonitor
from pipelines.evaluation.splits import Split

DEFAULTS: dict[str, dict[str, float | int]] = {
    # Swept on synthetic and ml-latest-small: ALS factors {32, 64, 128} x reg {0.05, 1, 10} x
    # alpha {1, 5, 20}; EASE lambda {20, 100, 300, 500, 1000}; item-kNN k {20, 50, 100, 200}.
    "*": {"item_knn.k": 100, "ease.lambda": 500.0, "ease.max_items": 20_000, "als.factors": 64,
          "als.regularization": 10.0, "als.alpha": 1.0, "als.iterations": 15},
    # Gowalla ALS (128 factors): alpha swept {1, 5, 20, 50}, reg {0.01, 1, 10} (docs/benchmarks.md).
    "gowalla": {"ease.lambda": 100.0, "ease.max_items": 16_000, "als.factors": 128,
                "als.regularization": 1.0, "als.alpha": 20.0, "als.iterations": 15},
}
QUICK = {"ease.max_items": 6_000, "als.iterations": 8}


def setting(name: str, dataset: Dataset, options: RunOptions) -> float | int:
    """A baseline hyper-parameter: ``--opt`` value, else quick override, else data-set default."""
    default = DEFAULTS.get(dataset.name, {}).get(name, DEFAULTS["*"][name])
    if options.quick and name in QUICK:
        default = min(default, QUICK[name])
    return options.param(name, default)  # type: ignore[return-value]


def _run(name: str, fit, split: Split, options: RunOptions) -> dict[str, dict[str, float]]:  # noqa: ANN001
    with ResourceMonitor() as mon:
        scorer: Scorer = fit()
    t0 = time.perf_counter()
    metrics = evaluate(scorer, split, options.ks, users=options.eval_users)
    metrics["eval_seconds"] = time.perf_counter() - t0
    cold = split.cold_items()
    if cold.size:
        cold_metrics = evaluate(scorer, split, (max(options.ks),), users=options.eval_users,
                                target_items=cold)
        metrics[f"recall@{max(options.ks)}_cold"] = cold_metrics[f"recall@{max(options.ks)}"]
        metrics["cold_users"] = cold_metrics["users"]
    return {name: entry(metrics, mon)}


@register("popularity", order=10)
def run_popularity(split: Split, dataset: Dataset, options: RunOptions) -> dict[str, dict[str, float]]:
    """Most-popular items."""
    return _run("popularity", lambda: baselines.popularity(split.train), split, options)


@register("item_knn", order=20)
def run_item_knn(split: Split, dataset: Dataset, options: RunOptions) -> dict[str, dict[str, float]]:
    """Item-kNN, cosine over interaction vectors."""
    k = int(setting("item_knn.k", dataset, options))
    return _run("item_knn", lambda: baselines.item_knn(split.train, k=k), split, options)


@register("ease", order=30)
def run_ease(split: Split, dataset: Dataset, options: RunOptions) -> dict[str, dict[str, float]]:
    """EASE on the most popular items (see ``baselines.ease``)."""
    lam = float(setting("ease.lambda", dataset, options))
    max_items = int(setting("ease.max_items", dataset, options))
    if max_items < split.n_items:
        print(f"  ease: restricted to the {max_items:,} most popular of {split.n_items:,} items "
              f"(dense {split.n_items:,}^2 Gram matrix would need "
              f"{split.n_items ** 2 * 4 / 2**30:.1f} GB float32); other items are never recommended")
    return _run("ease", lambda: baselines.ease(split.train, lam=lam, max_items=max_items), split, options)


@register("als", order=40)
def run_als(split: Split, dataset: Dataset, options: RunOptions) -> dict[str, dict[str, float]]:
    """Implicit ALS."""
    params = {"factors": int(setting("als.factors", dataset, options)),
              "regularization": float(setting("als.regularization", dataset, options)),
              "alpha": float(setting("als.alpha", dataset, options)),
              "iterations": int(setting("als.iterations", dataset, options))}
    return _run("als", lambda: baselines.als(split.train, seed=options.seed, threads=options.threads,
                                             **params), split, options)
