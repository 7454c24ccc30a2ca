"""Bench runner for the two-tower model and the served ranking built on it (``bench.quality``).

Entries produced (same split, same run as the baselines):

* ``two_tower``: query-tower embedding (user id + pooled recent history) dot candidate-tower
  embedding, over every item of the split (items unseen in training use their content alone).
* ``served``: what ``/recommendations`` returns for the same model: the function's ranking
  (:mod:`scoring.rank`, via :mod:`pipelines.evaluation.served`) at its production settings
  (``serving.env``), with the serving defaults (alpha, pool) the training job measures on a
  validation slice of the split's train events (``pipelines.training.train.tune_defaults``), the
  user documents the pipeline would hold (last 50 events) and the lists scored as returned.
  Extra keys: ``alpha`` (mean over users), the validation and test alpha sweeps (details),
  ``ild@10`` and ``category_coverage@10`` (``pipelines.evaluation.metrics``), and
  ``diversity_sweep.<λ>.<metric>``: NDCG@10 and both figures at every diversity of
  ``DIVERSITY_SWEEP`` (details).
* ``served_div0.2``, ``served_div0.5``: the same served ranking with the request parameter
  ``diversity`` (MMR, :mod:`scoring.diversity`) at 0.2 and 0.5, every metric of ``served``'s.
* ``served_http``: ``two_tower.served_http_users`` (200) of those users replayed over HTTP against
  the real function on the Firestore emulator (:mod:`pipelines.evaluation.served_http`), with
  ``served_ndcg@10_same_users`` from ``served``'s lists of the same users.

Extra keys: ``recall@20_cold`` (Recall@20 restricted to items with no train interaction, the
new-items metric), ``eval_seconds``, ``epochs``; on data sets with timestamps the ``two_tower``
entry also gets ``warm_start.*``: a parent model is trained on the train events before the newest
``warm_fraction`` of them, then warm-started on those newest events only; reported are the
fine-tune time as a fraction of the full training time and Recall@20 on the parent's users
(old test users) for the parent (before), the warm-started child (after) and the full retrain.

Settings: ``--opt two_tower.<field>=<value>`` for any :class:`pipelines.training.model.ModelConfig` field,
``two_tower.history_mode``, ``two_tower.warm_start=0/1``, ``two_tower.warm_fraction``,
``two_tower.warm_epochs``, ``two_tower.warm_lr_scale``, ``two_tower.new_items=0/1``,
``two_tower.served=0/1``, ``two_tower.served_http_users`` (0: no HTTP replay).

New items: when the split has no cold items (e.g. the per-user temporal split), ``new_items.*`` keys
come from a global-cutoff split of the same data where items first seen after the cutoff are cold
(Recall@20 restricted to them for the two-tower and popularity).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from pipelines.data.dataset import Dataset
from pipelines.evaluation.metrics import Scorer, evaluate
from pipelines.evaluation.registry import RunOptions, entry, register
from pipelines.evaluation.resources import ResourceMonitor
from pipelines.evaluation.splits import Split
from pipelines.training.model import ModelConfig

# Per data set settings picked on the bench's own splits: the runs behind each are in
# docs/benchmarks.md ("Two-tower variants").
DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"history_mode": "before", "optimizer": "lazy_adam", "epochs": 10, "warm_start": 1,
          "warm_fraction": 0.05, "warm_epochs": 2, "warm_lr_scale": 0.2, "new_items": 1, "served": 1,
          "served_http_users": 200},
    # The generator's small data overfits past two epochs; item-id dropout leans the candidate tower
    # on content, which carries taste there.
    "synthetic": {"epochs": 2, "item_id_dropout": 0.5, "learning_rate": 1e-2, "history_mode": "others"},
    # Gowalla's files list each user's items in id order, so the history covers (nearly) all of
    # them rather than an arbitrary last half, and heavier users get a random 100 per example.
    "gowalla": {"history_mode": "others", "dim": 128, "epochs": 12, "history_length": 100,
                "history_sample": True, "lr_schedule": "cosine", "warm_start": 0, "new_items": 0},
}
QUICK = {"epochs": 3, "warm_epochs": 1}
SERVED_DIVERSITIES = (0.2, 0.5)  # a served_div<λ> row each
DIVERSITY_SWEEP = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)  # the trade-off curve (details, plot)


def settings(dataset: Dataset, options: RunOptions) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and runner settings for a data set (defaults < data-set < quick < --opt)."""
    merged: dict[str, Any] = {**DEFAULTS["*"], **DEFAULTS.get(dataset.name, {})}
    if options.quick:
        merged.update({k: min(v, merged.get(k, v)) for k, v in QUICK.items()})
    merged["seed"] = options.seed
    defaults = ModelConfig()
    for key, raw in options.params.items():
        name = key.removeprefix("two_tower.")
        if name == key:
            continue
        current = merged.get(name, getattr(defaults, name, raw))
        merged[name] = _convert(raw, current)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    config = ModelConfig(**{k: v for k, v in merged.items() if k in fields})
    return config, {k: v for k, v in merged.items() if k not in fields}


def _convert(raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(like, (int, float)):
        return type(like)(float(raw)) if isinstance(like, int) else float(raw)
    return raw


def training_input(split: Split, dataset: Dataset, rows: np.ndarray | None = None):  # noqa: ANN201
    """The split's train events (optionally a subset of rows) (a ``TrainingInput``)."""
    from pipelines.training.train import TrainingInput

    r = split.train_rows
    sel = slice(None) if rows is None else rows
    users = np.asarray(r.user_ids, dtype=object)[r.user_idx[sel]]
    items = np.asarray(r.item_ids, dtype=object)[r.item_idx[sel]]
    return TrainingInput(user_ids=users, item_ids=items, timestamps=np.asarray(r.timestamps[sel]),
                         catalogue=list(dataset.items))


def cf_scorer(trained: Any, split: Split) -> Scorer:
    """Two-tower scores of split users over every split item."""
    user_rows = trained.space.encode_users(split.user_ids)
    candidates = trained.candidate_embeddings(split.item_ids)
    n = trained.config.history_length

    def scorer(users: np.ndarray) -> np.ndarray:
        rows = user_rows[users]
        return trained.user_embeddings(rows, trained.seqs.last(rows, n)) @ candidates.T

    return scorer


def _metrics(scorer: Scorer, split: Split, options: RunOptions, users: np.ndarray | None = None
             ) -> dict[str, float]:
    t0 = time.perf_counter()
    metrics = evaluate(scorer, split, options.ks, users=options.eval_users if users is None else users)
    metrics["eval_seconds"] = time.perf_counter() - t0
    cold = split.cold_items()
    k = max(options.ks)
    if cold.size:
        cold_metrics = evaluate(scorer, split, (k,), users=options.eval_users, target_items=cold)
        metrics[f"recall@{k}_cold"] = cold_metrics[f"recall@{k}"]
        metrics["cold_users"] = cold_metrics["users"]
    return metrics


def warm_start_metrics(split: Split, dataset: Dataset, config: ModelConfig, extra: dict[str, Any],
                       full: Any, options: RunOptions) -> dict[str, float]:
    """Parent on older train events, warm start on the newest ones; compare with the full retrain."""
    import tempfile

    from pipelines.training.train import Parent, save, train, warm_start

    times = split.train_rows.timestamps
    cut = int(np.quantile(times, 1.0 - float(extra["warm_fraction"])))
    old_rows = np.flatnonzero(times <= cut)
    parent = train(training_input(split, dataset, old_rows), config, history_mode=extra["history_mode"])
    with tempfile.TemporaryDirectory() as tmp:
        parent_path = save(parent, tmp)
        loaded = Parent.load(parent_path)
        child = warm_start(loaded, training_input(split, dataset), dataclasses.replace(
            config, epochs=int(extra["warm_epochs"]),
            learning_rate=config.learning_rate * float(extra["warm_lr_scale"])), since=cut)
    old_users = np.flatnonzero(np.isin(np.asarray(split.user_ids, dtype=object),
                                       np.asarray(parent.space.users, dtype=object)))
    eval_users = np.intersect1d(split.test_users, old_users)
    if options.eval_users is not None:
        eval_users = np.intersect1d(eval_users, options.eval_users)
    k = max(options.ks)
    recall = {name: evaluate(cf_scorer(m, split), split, (k,), users=eval_users)[f"recall@{k}"]
              for name, m in (("before", parent), ("after", child), ("full", full))}
    span_days = (int(times.max()) - cut) / 86_400_000
    return {"warm_start.new_events": float(child.n_examples), "warm_start.span_days": span_days,
            "warm_start.fine_tune_seconds": child.train_seconds,
            "warm_start.full_train_seconds": full.train_seconds,
            "warm_start.time_fraction": child.train_seconds / max(full.train_seconds, 1e-9),
            f"warm_start.recall@{k}_before": recall["before"],
            f"warm_start.recall@{k}_after": recall["after"],
            f"warm_start.recall@{k}_full_retrain": recall["full"],
            "warm_start.old_test_users": float(eval_users.size)}


def new_item_metrics(dataset: Dataset, config: ModelConfig, extra: dict[str, Any],
                     options: RunOptions) -> dict[str, float]:
    """Recall@K restricted to items first seen after a global time cutoff (cold items).

    Used when the bench's own split has no cold items: a :func:`cutoff_split` of the same data
    (20% of events after the cutoff), the two-tower model trained on its train part, and
    popularity measured on the same split for comparison.
    """
    from pipelines.evaluation.baselines import popularity
    from pipelines.evaluation.splits import cutoff_split
    from pipelines.training.train import train

    split = cutoff_split(dataset)
    cold = split.cold_items()
    if cold.size == 0:
        return {}
    k = max(options.ks)
    trained = train(training_input(split, dataset), config, history_mode=extra["history_mode"])
    cf = cf_scorer(trained, split)
    users = None if options.eval_users is None else np.intersect1d(split.test_users, options.eval_users)
    if users is not None and users.size == 0:
        users = None
    out = {"new_items.cold_items": float(cold.size)}
    for name, scorer in (("two_tower", cf), ("popularity", popularity(split.train))):
        m = evaluate(scorer, split, (k,), users=users, target_items=cold)
        out[f"new_items.recall@{k}_{name}"] = m[f"recall@{k}"]
        out["new_items.users"] = m["users"]
    return out


def served_entries(split: Split, dataset: Dataset, trained: Any, config: ModelConfig, extra: dict[str, Any],
                   options: RunOptions, two_tower: dict[str, float]) -> dict[str, dict[str, float]]:
    """The ``served`` (and ``served_http``) rows for ``trained`` (see the module docstring)."""
    import tempfile

    from pipelines.evaluation import served
    from pipelines.training.artifact import load_towers
    from pipelines.training.train import save, tune_defaults
    from schemas.index_snapshot import INDEX_FILE, IndexSnapshot
    from scoring.rank import ScoringDefaults, alpha_grid

    k = max(options.ks)
    holdout = "random" if split.protocol == "fixed" else "temporal"
    with ResourceMonitor() as mon:
        defaults, validation = tune_defaults(training_input(split, dataset), config, extra["history_mode"],
                                             holdout)
    print(f"  served: defaults {defaults} (validation NDCG@10 {validation['ndcg@10']:.4f}, "
          f"{validation['seconds']:.0f} s)", flush=True)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="served-") as tmp:
        path = save(trained, tmp, serving_defaults=defaults)
        catalogue = served.ServedCatalogue.from_snapshot(IndexSnapshot.load(path / INDEX_FILE),
                                                         split.item_ids, served.serving_config())
        users = split.test_users if options.eval_users is None else options.eval_users
        histories = served.stored_history(split, users)
        towers = load_towers(path)
        ids = [split.user_ids[u] for u in users.tolist()]
        queries = np.concatenate([towers.embed_users(ids[s:s + 4096], histories[s:s + 4096])
                                  for s in range(0, len(ids), 4096)]
                                 or [np.zeros((0, towers.dim), np.float32)])
        su = served.served_users(catalogue, users, histories, queries,
                                 served.seen_items(split, users, histories))
        t0 = time.perf_counter()
        metrics, lists = served.evaluate_served(catalogue, su, split, options.ks)
        metrics["eval_seconds"] = time.perf_counter() - t0
        # today's pipeline writes no users/{id}.seen: exclusion of the stored history only
        history_only, _ = served.evaluate_served(
            catalogue, served.served_users(catalogue, users, histories, queries), split, options.ks)
        metrics.update({f"{key}_history_only": history_only[key]
                        for key in ("ndcg@10", "recall@20", f"train_items_in_top{k}")})
        chosen = ScoringDefaults.from_dict(defaults)
        per_user = served.sweep(catalogue, su, split, k, alpha_grid(), [chosen.min_pool])
        metrics.update({f"alpha_sweep_test.{a:g}": float(v.mean()) for (_, a), v in per_user.items()})
        metrics.update({f"alpha_sweep_validation.{a}": v for a, v in validation["alpha_sweep"].items()})
        metrics.update({f"pool_sweep_validation.{p}": v for p, v in validation["pool_sweep"].items()})
        metrics.update({"min_pool": float(chosen.min_pool), "validation_ndcg@10": validation["ndcg@10"],
                        "validation_users": float(validation["users"]),
                        "alpha_buckets_adopted": float(validation["buckets_adopted"]),
                        "retrieval": catalogue.retriever.name, "stored_history": float(served.STORED_HISTORY),
                        "ratio_to_two_tower_ndcg@10": metrics["ndcg@10"] / max(two_tower["ndcg@10"], 1e-12)})
        if validation["bucketed_ndcg@10"] is not None:
            metrics["validation_bucketed_ndcg@10"] = validation["bucketed_ndcg@10"]
        t0 = time.perf_counter()
        curve = served.diversity_sweep(catalogue, su, split, k, DIVERSITY_SWEEP, min(options.ks))
        metrics.update({f"diversity_sweep.{d:g}.{key}": v for d, row in curve.items()
                        for key, v in row.items()})
        metrics["diversity_sweep_seconds"] = time.perf_counter() - t0
        out["served"] = entry(metrics, train_seconds=trained.train_seconds + mon.seconds,
                              peak_rss_mb=mon.peak_rss_mb)
        for d in SERVED_DIVERSITIES:
            t0 = time.perf_counter()
            div_metrics, _ = served.evaluate_served(catalogue, su, split, options.ks, diversity=d)
            div_metrics["eval_seconds"] = time.perf_counter() - t0
            out[f"served_div{d:g}"] = entry(div_metrics, train_seconds=out["served"]["train_seconds"],
                                            peak_rss_mb=mon.peak_rss_mb)
        n_http = int(extra["served_http_users"])
        if n_http > 0:
            from pipelines.evaluation.served_http import served_http_metrics

            try:
                http = served_http_metrics(path, split, su, histories, lists, options.ks, n_users=n_http,
                                           seed=options.seed)
            except (RuntimeError, OSError, ValueError) as e:  # keep the in-process rows of a long run
                print(f"  served_http FAILED, row left out: {type(e).__name__}: {e}", flush=True)
            else:
                out["served_http"] = entry(http, train_seconds=out["served"]["train_seconds"],
                                           peak_rss_mb=mon.peak_rss_mb)
    return out


@register("two_tower", order=0)
def run_two_tower(split: Split, dataset: Dataset, options: RunOptions) -> dict[str, dict[str, float]]:
    """The two-tower model and the function's served ranking of it."""
    from pipelines.training.train import train

    config, extra = settings(dataset, options)
    print(f"  two_tower: {config} history_mode={extra['history_mode']}")
    with ResourceMonitor() as mon:
        trained = train(training_input(split, dataset), config, history_mode=extra["history_mode"])
    cf = cf_scorer(trained, split)
    two_tower = entry(_metrics(cf, split, options), mon)
    two_tower["epochs"] = float(config.epochs)
    out = {"two_tower": two_tower}
    if int(extra["served"]):
        out.update(served_entries(split, dataset, trained, config, extra, options, two_tower))
    if int(extra["warm_start"]) and split.protocol != "fixed":
        two_tower.update(warm_start_metrics(split, dataset, config, extra, trained, options))
    if int(extra["new_items"]) and split.cold_items().size == 0 and split.protocol != "fixed":
        two_tower.update(new_item_metrics(dataset, config, extra, options))
    return out
