"""Step 4: train the initial two-tower model, publish it to Firestore, seed the users.

Serving and the pipeline need a published model and users with history before events flow.
"""

from __future__ import annotations

from scripts.demo.clients import UserReader
from scripts.demo.console import say, step
from scripts.demo.context import Context
from scripts.demo.data import DemoData
from scripts.demo.errors import DemoError
from scripts.demo.steps.jobs import run_job
from scripts.processes import python_module


def train_and_publish(ctx: Context, data: DemoData) -> str:
    """Train on the history and publish; return the published model version."""
    step(4, "Train the two-tower model, publish it to Firestore, seed users")
    run_job(ctx, "train", python_module(
        "pipelines.training", "--data", str(data.data_dir), "--model-dir", str(ctx.model_dir),
        "--epochs", str(ctx.cfg.epochs), "--publish"))
    version = UserReader(ctx.stack.project).current_version()
    if version is None:
        raise DemoError("training finished but models/current is not set")
    run_job(ctx, "seed_users", python_module(
        "scripts.seed_users", "--events", str(data.data_dir / "events.jsonl")))
    ctx.fig.models["initial"] = {"version": version,
                                 "train_seconds": ctx.fig.timings_s["train"]}
    say(f"  model {version} trained in {ctx.fig.timings_s['train']:.1f} s and published")
    return version
