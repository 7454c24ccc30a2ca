"""Step 6 (first part): replay the live stream while probing freshness; account for every event.

The counts must add up: every event sent is accepted, a duplicate, or rejected with a reason.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

from schemas.clock import now_ms
from schemas.events import ProductEvent
from scripts.demo.console import say, step, wait_until
from scripts.demo.context import Context
from scripts.demo.data import DemoData
from scripts.demo.measure import percentile
from scripts.demo.steps.dead_letters import drain_dead_letters
from scripts.demo.steps.probes import probe_loop
from scripts.demo.steps.replay import replay, replay_plan
from scripts.demo.steps.services import Services
from scripts.demo.steps.showcase import show_changes


def wait_pipeline_ready(ctx: Context, services: Services, user_id: str, item_id: str) -> None:
    """The DirectRunner takes a while to start reading: wait for a first event to land."""
    users, pipeline = services.users, services.pipeline
    event = ProductEvent(event_id=f"warmup-{uuid.uuid4().hex[:8]}", event_type="view",
                         user_id=user_id, item_id=item_id, timestamp=now_ms())
    services.publisher.publish_event(event).result()
    t0 = time.monotonic()
    wait_until("the pipeline to process its first event",
               lambda: (u := users.get(user_id)) is not None and u.last_event_id == event.event_id,
               ctx.cfg.timeout_s, status=lambda: "" if pipeline.alive()
               else "pipeline exited: " + pipeline.log_tail(500))
    ctx.fig.timings_s["pipeline_first_event"] = round(time.monotonic() - t0, 2)
    ctx.fig.events["warmup"] = 1


def replay_live_stream(ctx: Context, data: DemoData, services: Services) -> None:
    """Replay, wait until every accepted event is in Firestore, record the counts and freshness."""
    cfg, fig, users, rec = ctx.cfg, ctx.fig, services.users, services.recommend
    step(6, f"Live stream: {len(data.live)} events at {cfg.rate:.0f}/s "
            "through the ingest function and Pub/Sub")
    counts = Counter(e.user_id for e in data.live)
    showcase = [u for u, c in counts.most_common() if c >= 3][:cfg.showcase_users]
    any_item = data.items[0].item_id
    wait_pipeline_ready(ctx, services, showcase[0] if showcase else "demo-user", any_item)
    before = {u: rec.recommend(u) for u in showcase}
    base_events = users.total_events()

    plan = replay_plan(cfg, data.live)
    stop_probes = threading.Event()
    # Probes go to users the live stream does not touch, or a live event for the same user
    # could overtake the probe before the function is asked.
    probe_users = sorted({e.user_id for e in data.history} - set(counts)) or \
        [f"probe-user-{i}" for i in range(cfg.probes)]
    prober = threading.Thread(target=probe_loop, daemon=True,
                              args=(cfg, fig, rec, services.publisher, probe_users, any_item,
                                    stop_probes))
    t0 = time.monotonic()
    prober.start()
    sent = replay(plan, services.publisher, services.ingest_url, cfg.rate, fig.ingest_reject_reasons)
    replay_s = time.monotonic() - t0
    wait_until("the probes", lambda: len(fig.probes) >= cfg.probes, cfg.timeout_s)
    stop_probes.set()
    prober.join(timeout=30)
    expected = sent["unique_valid"] + len(fig.probes)
    wait_until("every accepted event to reach Firestore",
               lambda: users.total_events() - base_events >= expected, cfg.timeout_s,
               interval_s=1.0,
               status=lambda: f"{users.total_events() - base_events}/{expected}")
    time.sleep(2.0)  # anything double-counted would show up now
    accepted = users.total_events() - base_events - len(fig.probes)
    dead = drain_dead_letters(ctx.stack.project, sent["invalid_pubsub"], cfg.timeout_s,
                              fig.dead_letter_reasons)
    fig.events.update({
        "published": sent["published"], "accepted": accepted, "rejected": sent["rejected"],
        "rejected_by_ingest": sent["rejected_ingest"], "sent_to_pubsub_invalid": sent["invalid_pubsub"],
        "dead_lettered": dead, "duplicates_sent": sent["duplicates"],
        "unique_valid": sent["unique_valid"], "via_ingest": sent["via_ingest"],
        "via_pubsub": sent["via_pubsub"], "replay_seconds": round(replay_s, 2),
        "replay_events_per_s": round(sent["published"] / replay_s, 1),
    })
    fresh = fig.freshness_s
    say(f"  sent {sent['published']} ({sent['duplicates']} duplicates, {sent['rejected']} invalid) "
        f"in {replay_s:.1f} s; accepted {accepted}, dead-lettered {dead}, "
        f"rejected at ingest {sent['rejected_ingest']}")
    say(f"  freshness over {len(fresh)} probes: p50 {percentile(fresh, 50):.3f} s, "
        f"p95 {percentile(fresh, 95):.3f} s")
    show_changes(fig, before, {u: rec.recommend(u) for u in showcase}, data)
