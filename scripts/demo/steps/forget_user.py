"""Step 7 (last part): forget a user (a data-protection request) through the ingest function.

``DELETE /users/{id}`` -> a ``kind=forget`` message -> the pipeline clears the user's state,
deletes ``users/{id}`` and archives a tombstone. Checked live: the document disappears, the
recommend function answers the user with cold start, and after a pipeline restart an event
dated before the forget plus one after it leave a history of exactly the new event (count 1):
neither the old state nor the late event came back.
"""

from __future__ import annotations

import dataclasses
import time

import requests

from schemas.events import ProductEvent
from scripts.demo.console import say
from scripts.demo.context import Context
from scripts.demo.data import DemoData
from scripts.demo.steps.services import Services

CHECKED = ("firestore_gone: users/{id} disappeared after DELETE /users/{id} on the ingest function; "
           "served_as_unknown: the recommend function then answered the user with cold_start; "
           "state_gone_after_restart: after stopping (drain) and restarting the pipeline, an event "
           "dated before the forget and one after it left users/{id} with event_count 1 and only "
           "the new event in its history")


def forget_user(ctx: Context, data: DemoData, services: Services) -> None:
    """Forget one user with a stored history; record the checks in ``fig.forget_user``."""
    shown = {s["user_id"] for s in ctx.fig.showcase}
    user = next(u for u in sorted({e.user_id for e in data.history}, reverse=True)
                if u not in shown and services.users.get(u) is not None)
    say(f"\n  Forget user {user} (DELETE /users/{user} on the ingest function):")
    t0 = time.monotonic()
    resp = requests.delete(f"{services.ingest_url}users/{user}", timeout=10)
    resp.raise_for_status()
    forget_at = resp.json()["forget_at"]
    timeout = ctx.cfg.timeout_s
    gone = _poll(lambda: services.users.get(user) is None, timeout)
    gone_s = time.monotonic() - t0
    unknown = _poll(lambda: services.recommend.recommend(user)["strategy"] == "cold_start", timeout)

    services.pipeline.stop(timeout_s=60)
    services.pipeline = dataclasses.replace(services.pipeline, proc=None,
                                            log_path=ctx.logs / "pipeline-restarted.log").start()
    ctx.exits.callback(services.pipeline.stop)
    item = data.history[-1].item_id
    late = ProductEvent(f"forget-late-{user}", "view", user, item, forget_at - 1)
    new = ProductEvent(f"forget-new-{user}", "view", user, item, max(forget_at + 1, int(time.time() * 1000)))
    for event in (late, new):
        services.publisher.publish_event(event).result(timeout=30)
    fresh = _poll(lambda: services.users.get(user), timeout)
    history = [h.event_id for h in fresh.history] if fresh else []
    restarted = bool(fresh) and fresh.event_count == 1 and history == [new.event_id]
    ctx.fig.forget_user = {"user_id": user, "firestore_gone": gone, "served_as_unknown": unknown,
                           "state_gone_after_restart": restarted, "gone_s": round(gone_s, 2),
                           "checked": CHECKED}
    say(f"    users/{user} gone in {gone_s:.1f} s: {gone}; served as unknown: {unknown}; "
        f"after a restart a late and a new event give a history of one: {restarted}")


def _poll(check, timeout_s: float):  # noqa: ANN001, ANN202
    """``check()``'s first truthy value within ``timeout_s``, else the last (falsy) one."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)
