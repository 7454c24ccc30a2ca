"""The demo's steps in order, and stopping everything they started.

Read this first: each line is one step, each step a module under ``scripts.demo.steps``.
"""

from __future__ import annotations

import shutil
import time

from scripts.demo.config import DemoConfig
from scripts.demo.console import step
from scripts.demo.context import Context
from scripts.demo.figures import Figures
from scripts.demo.steps.console_shot import console_screenshot
from scripts.demo.steps.emulators import start_emulators
from scripts.demo.steps.evaluate import evaluate
from scripts.demo.steps.experiment import run_experiment
from scripts.demo.steps.forget_user import forget_user
from scripts.demo.steps.live_stream import replay_live_stream
from scripts.demo.steps.load_test import load_test
from scripts.demo.steps.new_item import new_item
from scripts.demo.steps.prepare_data import prepare_data
from scripts.demo.steps.services import start_services
from scripts.demo.steps.train import train_and_publish
from scripts.demo.steps.warm_start import warm_start


def run(cfg: DemoConfig) -> Figures:
    """Run every step in a fresh ``work_dir``; return the figures. Stops all children, always."""
    ctx = Context.create(cfg)
    shutil.rmtree(cfg.work_dir, ignore_errors=True)
    cfg.work_dir.mkdir(parents=True)
    t_start = time.monotonic()
    try:
        start_emulators(ctx)                                # 1
        data = prepare_data(ctx)                            # 2
        evaluate(ctx, data)                                 # 3
        first = train_and_publish(ctx, data)                # 4
        services = start_services(ctx)                      # 5
        replay_live_stream(ctx, data, services)             # 6
        new_item(ctx, data, services)
        load_test(ctx, services.recommend, sorted({e.user_id for e in data.history})[:500])
        warm_start(ctx, data, services, first)              # 7
        run_experiment(ctx, data, services,                 # 8
                       sorted({e.user_id for e in data.history})[:ctx.cfg.experiment_users])
        console_screenshot(ctx, services, ctx.fig.showcase[0]["user_id"] if ctx.fig.showcase
                           else sorted({e.user_id for e in data.history})[0])
        forget_user(ctx, data, services)
        step(9, "Stop everything, write the summary and the report")
    finally:
        ctx.exits.close()  # the functions and the pipeline, then the emulators
    ctx.fig.timings_s["total"] = round(time.monotonic() - t_start, 1)
    return ctx.fig
