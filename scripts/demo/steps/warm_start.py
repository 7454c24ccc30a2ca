"""Step 7: fine-tune on the events the pipeline archived; watch both consumers switch versions.

Shows the pipeline and the recommend function picking up a new model without a restart.
"""

from __future__ import annotations

import time
import uuid

from schemas.clock import now_ms
from schemas.events import ProductEvent
from scripts.demo.console import say, step, wait_until
from scripts.demo.context import Context
from scripts.demo.data import DemoData
from scripts.demo.errors import DemoError
from scripts.demo.steps.jobs import run_job
from scripts.demo.steps.services import Services
from scripts.processes import python_module

SWITCH_PROBES = 6


def warm_start(ctx: Context, data: DemoData, services: Services, first: str) -> None:
    """Train from ``first`` on the archive, publish, and time the function's and pipeline's switch."""
    cfg, fig = ctx.cfg, ctx.fig
    rec, users, pipeline = services.recommend, services.users, services.pipeline
    step(7, "Warm start on the archived events; hot reload in the pipeline and the function")
    archive = ctx.archive_dir
    wait_until("the pipeline's event archive", lambda: any(archive.rglob("*.jsonl*")),
               cfg.timeout_s)
    time.sleep(6)  # let the current archive window close
    run_job(ctx, "warm_start", python_module(
        "pipelines.training", "--data", str(archive), "--model-dir", str(ctx.model_dir),
        "--init-from", first, "--epochs", str(max(1, cfg.epochs // 2)), "--publish"))
    second = users.current_version()
    if second == first:
        raise DemoError("warm start did not switch models/current")
    t0 = time.monotonic()
    # Each serving worker (WORKERS in serving.env) follows models/current on its own: wait until
    # consecutive probes, spread over the workers by SO_REUSEPORT, all answer the new version.
    wait_until("the function to load the new version",
               lambda: all(rec.health().get("model_version") == second for _ in range(SWITCH_PROBES)),
               cfg.timeout_s)
    function_switch = time.monotonic() - t0
    user = fig.showcase[0]["user_id"] if fig.showcase else fig.probes[0]["user_id"]
    t1 = time.monotonic()
    doc, event, sent = None, None, 0
    # The pipeline polls models/current on its own schedule: send a view every second until
    # the user's document comes back embedded with the new version.
    while doc is None:
        if time.monotonic() - t1 > cfg.timeout_s:
            raise DemoError("the pipeline did not switch to the new version in time")
        event = ProductEvent(event_id=f"after-reload-{uuid.uuid4().hex[:8]}",
                             event_type="view", user_id=user, item_id=data.items[0].item_id,
                             timestamp=now_ms())
        services.publisher.publish_event(event).result()
        sent += 1
        written = wait_until("the pipeline to write the event",
                             lambda e=event: (d := users.get(user)) is not None
                             and d.last_event_id == e.event_id and d, cfg.timeout_s)
        if written.model_version == second:
            doc = written
        else:
            time.sleep(1.0)
    answer = wait_until("the function to answer with the new event and version",
                        lambda: (a := rec.recommend(user))["last_event_id"] == event.event_id
                        and a["model_version"] == second and a, cfg.timeout_s)
    fig.models["warm_start"] = {"version": second, "parent": first,
                                "train_seconds": fig.timings_s["warm_start"]}
    fig.hot_reload = {
        "function_switch_s": round(function_switch, 2),
        "pipeline_switch_s": round(time.monotonic() - t1, 2),
        "events_sent_until_switch": sent,
        "user_doc_model_version": doc.model_version,
        "function_model_version": answer["model_version"],
        "function_last_event_id_matches": answer.get("last_event_id") == event.event_id,
        "pipeline_restarted": False, "pipeline_pid_alive": pipeline.alive()}
    say(f"  {second} (from {first}) fine-tuned in {fig.timings_s['warm_start']:.1f} s "
        f"(initial training {fig.timings_s['train']:.1f} s)")
    say(f"  function switched in {function_switch:.1f} s; the pipeline embedded {user}'s events "
        f"with {doc.model_version} {fig.hot_reload['pipeline_switch_s']} s after the "
        f"switch; no restart (pipeline pid {pipeline.pid} alive)")
