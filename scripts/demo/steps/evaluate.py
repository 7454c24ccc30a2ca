"""Step 3: offline quality of the two-tower against most-popular on the history.

A baseline next to the model's figures shows whether the model is worth serving.
"""

from __future__ import annotations

import json

from scripts.demo.console import say, step
from scripts.demo.context import Context
from scripts.demo.data import DemoData
from scripts.demo.steps.jobs import run_job
from scripts.processes import python_module


def evaluate(ctx: Context, data: DemoData) -> None:
    """Run bench.quality on the history and print its table."""
    step(3, "Offline quality on the history (temporal split): two-tower vs most-popular")
    out = ctx.cfg.work_dir / "quality"
    args = ["--data", str(data.data_dir), "--models", "two_tower,popularity",
            "--out-dir", str(out)]
    if ctx.cfg.short:
        args.append("--quick")
    run_job(ctx, "quality", python_module("bench.quality", *args))
    report = json.loads(next(p for p in out.glob("quality-*.json")
                             if not p.name.endswith(".details.json")).read_text())
    ctx.fig.quality = report
    say(f"  {'model':<13} {'Recall@10':>9} {'Recall@20':>9} {'NDCG@10':>8} {'NDCG@20':>8} "
        f"{'train s':>8}")
    for name, m in report["models"].items():
        say(f"  {name:<13} {m['recall@10']:>9.4f} {m['recall@20']:>9.4f} {m['ndcg@10']:>8.4f} "
            f"{m['ndcg@20']:>8.4f} {m.get('train_seconds') or 0:>8.1f}")
