"""Model runners for ``bench.quality``: the plug-in point for models other than the baselines.

Interface
---------
A *runner* trains one or more models on a split and evaluates them in the same run::

    runner(split: Split, dataset: Dataset, options: RunOptions) -> dict[str, dict[str, float]]

It returns ``{model_name: entry}``; each entry must hold ``REQUIRED_KEYS`` (``recall@10``,
``recall@20``, ``ndcg@10``, ``ndcg@20``, ``coverage``, ``train_seconds``, ``peak_rss_mb``). Extra
keys (e.g. ``recall@20_cold``) are kept in the report's details file. Build an entry with
:func:`entry`::

    # pipelines/evaluation/two_tower_runner.py  (owned by the model engineer)
    from pipelines.evaluation.metrics import evaluate
    from pipelines.evaluation.registry import RunOptions, entry, register
    from pipelines.evaluation.resources import ResourceMonitor

    @register("two_tower", order=0)
    def run_two_tower(split, dataset, options: RunOptions) -> dict[str, dict[str, float]]:
        with ResourceMonitor() as mon:
            model = train_on(split.train_rows, dataset.items, quick=options.quick, seed=options.seed)
        scores = model.scorer          # user_idx [b] -> scores [b, split.n_items]
        out = {"two_tower": entry(evaluate(scores, split, options.ks, users=options.eval_users), mon)}
        for alpha in (0.9, 0.7, 0.5):
            out[f"hybrid_a{alpha}"] = entry(evaluate(model.hybrid(alpha), split, options.ks,
                                                     users=options.eval_users), mon)
        return out

Rules: train only on ``split.train`` / ``split.train_rows`` (train events in user/time order,
``split.history(u)`` gives a user's items oldest first) plus ``dataset.items`` (content); never
on ``split.test``. Score every item of ``split.item_ids`` (the metrics mask train items).
Evaluate on ``options.eval_users`` (``None`` = all test users; a subsample in ``--quick`` mode).

Loading: :func:`load_plugins` imports ``pipelines.evaluation.two_tower_runner``. While that module
does not exist the bench prints that the two-tower runner is missing; once it exists, any error
while importing it is raised (the bench fails loudly rather than reporting baselines only).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipelines.data.dataset import Dataset
from pipelines.evaluation.resources import ResourceMonitor
from pipelines.evaluation.splits import Split

REQUIRED_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage", "train_seconds",
                 "peak_rss_mb")
PLUGIN_MODULES = ("pipelines.evaluation.two_tower_runner",)


@dataclass
class RunOptions:
    """Settings shared by every runner in one bench run.

    Attributes:
        quick: cheaper settings (fewer epochs/iterations, smaller EASE, evaluation subsample).
        seed: random seed.
        ks: metric cut-offs.
        threads: CPU threads a model may use.
        eval_users: users to evaluate, or ``None`` for every test user.
        params: free-form ``key=value`` settings from the command line (``--opt``), e.g.
            ``als.factors=128``; runners read the keys they know.
    """

    quick: bool = False
    seed: int = 0
    ks: tuple[int, ...] = (10, 20)
    threads: int = 2
    eval_users: np.ndarray | None = None
    params: dict[str, str] = field(default_factory=dict)

    def param(self, key: str, default: float | int | str) -> float | int | str:
        """A ``params`` value converted to the type of ``default``."""
        if key not in self.params:
            return default
        return type(default)(self.params[key])


Runner = Callable[[Split, Dataset, RunOptions], dict[str, dict[str, float]]]


@dataclass(frozen=True)
class _Registered:
    name: str
    order: int
    runner: Runner


_RUNNERS: dict[str, _Registered] = {}


def register(name: str, order: int = 100) -> Callable[[Runner], Runner]:
    """Decorator registering a runner under ``name`` (runners run by ascending ``order``)."""

    def wrap(fn: Runner) -> Runner:
        _RUNNERS[name] = _Registered(name, order, fn)
        return fn

    return wrap


def runners() -> dict[str, Runner]:
    """Registered runners by name, in run order."""
    return {r.name: r.runner for r in sorted(_RUNNERS.values(), key=lambda r: (r.order, r.name))}


def load_plugins() -> list[str]:
    """Import the plug-in runner modules; return messages about the ones that do not exist.

    Raises:
        ImportError (or whatever the module raises): a plug-in exists but fails to import.
    """
    missing = []
    for module in PLUGIN_MODULES:
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} not found: the two-tower/hybrid models are not evaluated")
            continue
        importlib.import_module(module)
    return missing


def entry(metrics: dict[str, float], monitor: ResourceMonitor | None = None,
          train_seconds: float | None = None, peak_rss_mb: float | None = None) -> dict[str, float]:
    """A report entry: metrics plus training time and peak memory (from ``monitor`` or given)."""
    out = dict(metrics)
    out["train_seconds"] = float(monitor.seconds if monitor is not None else train_seconds or 0.0)
    out["peak_rss_mb"] = float(monitor.peak_rss_mb if monitor is not None else peak_rss_mb or 0.0)
    return out
