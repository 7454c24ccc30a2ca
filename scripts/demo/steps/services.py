"""Step 5: start the streaming pipeline (DirectRunner) and the recommend and ingest functions.

Each runs as its own child process, as in production, and is stopped at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import names
from scripts.demo.clients import Publisher, RecommendClient, UserReader
from scripts.demo.console import say, step
from scripts.demo.context import Context
from scripts.processes import ROOT, ManagedProcess, functions_framework, python_module, read_env_file

SERVING_ENV = ROOT / "functions" / "recommend" / "serving.env"


@dataclass
class Services:
    """The running pipeline and functions, and the clients the later steps use to reach them."""

    pipeline: ManagedProcess
    recommend: RecommendClient
    ingest_url: str
    users: UserReader
    publisher: Publisher


def start_services(ctx: Context) -> Services:
    """Start the three processes, wait until both functions answer, record the cold start."""
    step(5, "Start the streaming pipeline (DirectRunner) and the two functions")
    cfg = ctx.cfg
    pipeline = ManagedProcess("pipeline", python_module(
        "pipelines.streaming", "--model-dir", str(ctx.model_dir),
        "--archive-dir", str(ctx.archive_dir), "--archive-window-seconds", "5",
        "--model-refresh-seconds", "2", "--trending-window-seconds", "600",
        "--trending-period-seconds", "60"), ctx.logs / "pipeline.log", env=ctx.env)
    serving = read_env_file(SERVING_ENV)
    recommend = ManagedProcess("recommend", functions_framework(
        "recommend", "functions/recommend/main.py", cfg.recommend_port),
        ctx.logs / "recommend.log",
        env={**ctx.env, **serving, "REFRESH_SECONDS": "1", "SERVED_TOPIC": names.SERVED_TOPIC})
    ingest = ManagedProcess("ingest", functions_framework(
        "ingest", "functions/ingest/main.py", cfg.ingest_port),
        ctx.logs / "ingest.log", env={**ctx.env, "EVENTS_TOPIC": names.EVENTS_TOPIC})
    for proc in (pipeline, recommend, ingest):
        proc.start()
        ctx.exits.callback(proc.stop)
    base = f"http://127.0.0.1:{cfg.recommend_port}"
    cold = recommend.wait_http(f"{base}/healthz", cfg.timeout_s)
    ingest.wait_http(f"http://127.0.0.1:{cfg.ingest_port}/healthz", cfg.timeout_s)
    ctx.fig.serving["cold_start_s"] = round(cold, 2)
    ctx.fig.serving["settings"] = serving
    say(f"  recommend function up in {cold:.1f} s with {serving or 'default settings'}")
    return Services(pipeline=pipeline, recommend=RecommendClient(base),
                    ingest_url=f"http://127.0.0.1:{cfg.ingest_port}/",
                    users=UserReader(ctx.stack.project),
                    publisher=Publisher.connect(ctx.stack.project))
