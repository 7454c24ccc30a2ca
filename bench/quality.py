"""Offline quality benchmark: the two-tower model, its served ranking and baselines, same split, same run.

    python -m bench.quality --data synthetic            # or ml-latest-small, gowalla, ml-100k, PATH
    python -m bench.quality --data gowalla --quick      # cheaper settings, 5,000 test users
    python -m bench.quality --data ml-latest-small --models popularity,ease --opt ease.lambda=300

Loads the data (``pipelines.data.load_dataset``; ``DATA_DIR`` overrides ``../shared/data``), builds
the split (Gowalla: its fixed train/test files; others: per-user temporal, newest 20% held out),
runs every registered model runner (``pipelines.evaluation.registry``: the baselines and, when it
exists, ``pipelines.evaluation.two_tower_runner``), prints a table and writes
``reports/bench/quality-<name>.json``::

    {"dataset": ..., "protocol": {...}, "machine": {...},
     "models": {"two_tower": {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage",
                              "train_seconds", "peak_rss_mb"},
                "served": {... same keys, "alpha", "diversity", "ild@10", "category_coverage@10"},
                "served_div0.2": {... as served}, "served_div0.5": {...},
                "served_http": {..., "served_ndcg@10_same_users"}, "popularity": {...}, ...}}

``served`` is what ``/recommendations`` returns for the two-tower model (the function's ranking
path and production settings, ``pipelines.evaluation.served``); ``served_http`` replays some of its
users over HTTP against the real function (``pipelines.evaluation.served_http``);
``served_div<λ>`` is ``served`` with the request parameter ``diversity`` = λ. The diversity
trade-off (NDCG@10, ``ild@10``, ``category_coverage@10`` over ``served``'s ``diversity_sweep``) is
printed and drawn to ``reports/bench/quality-<name>-diversity.png``.

Extra per-model figures (evaluation time, users, recall on cold items) go to
``reports/bench/quality-<name>.details.json``. Metrics are defined in
``pipelines.evaluation.metrics``; peak memory in ``pipelines.evaluation.resources``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import pipelines  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TF import)
import pipelines.evaluation.baseline_runners  # noqa: F401  (registers the baselines)
from pipelines.data import DataError, Dataset, load_dataset
from pipelines.evaluation.registry import REQUIRED_KEYS, RunOptions, load_plugins, runners
from pipelines.evaluation.splits import Split, split_for

ROOT = Path(__file__).resolve().parent.parent
QUICK_EVAL_USERS = 5_000
MODEL_ORDER = ("two_tower", "served", "served_div0.2", "served_div0.5", "served_http", "popularity",
               "item_knn", "ease", "als")
# kept in the report next to REQUIRED_KEYS
REPORT_EXTRA_KEYS = ("alpha", "served_ndcg@10_same_users", "diversity", "ild@10", "category_coverage@10")
SWEEP_KEY = re.compile(r"^diversity_sweep\.([0-9.]+)\.(.+)$")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic", help="data set name or path (default: synthetic)")
    p.add_argument("--data-dir", default=None, help="where named data sets live (default: $DATA_DIR "
                                                    "or ../shared/data)")
    p.add_argument("--quick", action="store_true",
                   help=f"cheaper settings and at most {QUICK_EVAL_USERS:,} evaluated users")
    p.add_argument("--models", default="", help="comma-separated runner names (default: all)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="temporal split: share held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="runner setting, e.g. als.factors=128 (repeatable)")
    p.add_argument("--out-dir", default=str(ROOT / "reports" / "bench"))
    return p.parse_args(argv)


def parse_opts(pairs: Sequence[str]) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``; raise ``SystemExit`` on a malformed pair."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--opt expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def machine_info(threads: int) -> dict[str, object]:
    """What the figures were measured on."""
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "threads": threads, "numpy": np.__version__,
            "memory_note": "peak_rss_mb = peak RSS (sampled every 10 ms) minus RSS at training start"}


def eval_users(split: Split, quick: bool, seed: int) -> np.ndarray | None:
    """All test users, or a seeded subsample in quick mode."""
    if not quick or split.test_users.size <= QUICK_EVAL_USERS:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(split.test_users, size=QUICK_EVAL_USERS, replace=False))


def run_models(split: Split, dataset: Dataset, options: RunOptions,
               selected: Sequence[str]) -> dict[str, dict[str, float]]:
    """Run the selected runners (all if empty) and collect their entries."""
    available = runners()
    unknown = [s for s in selected if s not in available]
    if unknown:
        raise SystemExit(f"unknown model runner(s) {unknown}; available: {sorted(available)}")
    results: dict[str, dict[str, float]] = {}
    for name, runner in available.items():
        if selected and name not in selected:
            continue
        print(f"- {name} ...", flush=True)
        out = runner(split, dataset, options)
        for model, metrics in out.items():
            missing = [k for k in REQUIRED_KEYS if k not in metrics]
            if missing:
                raise RuntimeError(f"runner {name!r} returned {model!r} without {missing}")
            results[model] = metrics
            print(f"  {model}: ndcg@10 {metrics['ndcg@10']:.4f}  recall@20 {metrics['recall@20']:.4f}  "
                  f"train {metrics['train_seconds']:.1f} s", flush=True)
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of the results."""
    cols = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage", "train_seconds", "peak_rss_mb")
    heads = ("R@10", "R@20", "N@10", "N@20", "cover", "train s", "peak MB")
    width = max([len(m) for m in results] + [5])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{h:>8}" for h in heads)]
    lines.append("-" * len(lines[0]))
    for model in ordered(results):
        m = results[model]
        cells = [f"{m[c]:8.4f}" if c not in ("train_seconds", "peak_rss_mb") else f"{m[c]:8.1f}"
                 for c in cols]
        lines.append(f"{model:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def diversity_curve(results: dict[str, dict[str, float]], model: str = "served"
                    ) -> dict[float, dict[str, float]]:
    """``{diversity: {"ndcg@10", "ild@10", "category_coverage@10"}}`` from a model's sweep keys."""
    curve: dict[float, dict[str, float]] = {}
    for key, value in results.get(model, {}).items():
        if (m := SWEEP_KEY.match(key)) is not None:
            curve.setdefault(float(m.group(1)), {})[m.group(2)] = float(value)
    return dict(sorted(curve.items()))


def format_diversity(curve: dict[float, dict[str, float]]) -> str:
    """The trade-off as a table: one row per diversity."""
    lines = [f"{'diversity':>9}  {'N@10':>8}  {'ild@10':>8}  {'cat@10':>8}"]
    for d, row in curve.items():
        cells = "  ".join(f"{row[key]:8.4f}" for key in ("ndcg@10", "ild@10", "category_coverage@10"))
        lines.append(f"{d:9.2f}  {cells}")
    return "\n".join(lines)


def plot_diversity(curve: dict[float, dict[str, float]], title: str, path: Path) -> None:
    """The trade-off to a PNG: the figures against diversity, and NDCG@10 against each diversity figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = list(curve)
    ndcg = [curve[d]["ndcg@10"] for d in ds]
    figures = (("ild@10", "intra-list diversity@10"), ("category_coverage@10", "category coverage@10"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(ds, ndcg, marker="o", color="C0", label="NDCG@10")
    left.set_xlabel("diversity (MMR λ)")
    left.set_ylabel("NDCG@10", color="C0")
    twin = left.twinx()
    for n, (key, label) in enumerate(figures, start=1):
        twin.plot(ds, [curve[d][key] for d in ds], marker="s", color=f"C{n}", label=label)
        right.plot([curve[d][key] for d in ds], ndcg, marker="o", color=f"C{n}", label=label)
    twin.set_ylabel("ild@10, category_coverage@10")
    twin.set_ylim(0, 1.05)
    left.legend(handles=left.get_lines() + twin.get_lines(), loc="center left", fontsize=8)
    for d in (0.5, max(ds)):
        if d in curve:
            right.annotate(f"λ={d:g}", (curve[d]["ild@10"], curve[d]["ndcg@10"]), textcoords="offset points",
                           xytext=(4, 4), fontsize=8)
    right.set_xlabel("diversity figure (0-1)")
    right.set_ylabel("NDCG@10")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: the served ranking at diversity 0 to {max(ds):g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ordered(results: dict[str, dict[str, float]]) -> list[str]:
    known = [m for m in MODEL_ORDER if m in results]
    return known + sorted(m for m in results if m not in MODEL_ORDER)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = RunOptions(quick=args.quick, seed=args.seed, threads=args.threads,
                         params=parse_opts(args.opt))
    for message in load_plugins():
        print(f"NOTE: {message}")
    t0 = time.perf_counter()
    try:
        dataset = load_dataset(args.data, args.data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = split_for(dataset, args.test_fraction)
    options.eval_users = eval_users(split, args.quick, args.seed)
    summary = split.summary()
    print(f"{dataset.name}: {summary} (loaded and split in {time.perf_counter() - t0:.1f} s)")
    selected = [s.strip() for s in args.models.split(",") if s.strip()]
    results = run_models(split, dataset, options, selected)
    print()
    print(format_table(results))
    name = safe_name(dataset.name)
    protocol = dict(summary, metrics="full ranking over all items, train items masked; recall@K = "
                                     "hits/|test items| (LightGCN); ndcg binary; coverage = share of "
                                     "items in any evaluated user's top-20",
                    quick=args.quick, evaluated_users=int(options.eval_users.size) if options.eval_users
                    is not None else int(split.test_users.size))
    report = {"dataset": dataset.name, "protocol": protocol, "machine": machine_info(args.threads),
              "models": {m: {k: float(results[m][k]) for k in REQUIRED_KEYS + REPORT_EXTRA_KEYS
                             if k in results[m]} for m in ordered(results)}}
    details = {m: {k: v for k, v in results[m].items() if k not in REQUIRED_KEYS + REPORT_EXTRA_KEYS}
               for m in ordered(results)}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"quality-{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"quality-{name}.details.json").write_text(
        json.dumps({"dataset": dataset.name, "options": options.params, "models": details}, indent=2) + "\n",
        encoding="utf-8")
    curve = diversity_curve(results)
    if curve:
        print("\nserved ranking by diversity:\n" + format_diversity(curve))
        plot_diversity(curve, dataset.name, out_dir / f"quality-{name}-diversity.png")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
