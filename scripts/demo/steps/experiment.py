"""Step 8: an online experiment, live: two arms, simulated users clicking by taste, per-arm CTR.

The control arm serves the model version's measured α; the other ranks by the two-tower alone
(α = 1). Simulated users click each shown item with a probability set by their tastes (the
synthetic generator's planted categories, else the categories of their history), and their clicks
carry the list's ``recommendation_id``; the pipeline joins them to the served lists and writes
``stats/experiments/{id}/{arm}``, which this step reads back as it is updated.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from schemas.clock import now_ms
from schemas.events import ProductEvent
from schemas.experiments import Experiment, stats_path
from scripts.demo.console import fmt, say, step, wait_until
from scripts.demo.context import Context
from scripts.demo.data import DemoData
from scripts.demo.measure import percentile
from scripts.demo.steps.services import Services
from scripts.experiments import create_experiment, read_results, stop_experiment

EXPERIMENT_ID = "demo-alpha"
BASE_CLICK = 0.03  # per shown item, whatever the user's tastes
TASTE_CLICK = 0.30  # added when the item's category is one of the user's tastes
CART_AFTER_CLICK = 0.3
PURCHASE_AFTER_CART = 0.5
LATENCY_PROBES = 10
COUNTED_AS = {"add_to_cart": "carts", "purchase": "purchases"}


def run_experiment(ctx: Context, data: DemoData, services: Services, users: Sequence[str]) -> None:
    """Create the experiment, serve and click, wait for the stream's figures, record them."""
    cfg, fig = ctx.cfg, ctx.fig
    step(8, f"Online experiment: the version's alpha against alpha = 1, {len(users)} simulated users")
    rng = random.Random(cfg.seed)
    client = services.users.client
    experiment = Experiment.from_document(EXPERIMENT_ID, {
        "arms": [{"name": "control", "share": 0.5},
                 {"name": "cf_only", "share": 0.5, "overrides": {"alpha": 1.0}}],
        "start_ms": now_ms(), "description": "the version's measured alpha against the two-tower alone"})
    create_experiment(client, experiment, replace=True)
    rec = services.recommend
    expected: dict[str, Counter] = {a.name: Counter() for a in experiment.arms}
    alphas: dict[str, float | None] = {}  # the alpha each arm's lists were ranked with

    def serve(user: str) -> dict[str, Any]:
        """One list; an experiment's list is counted in ``expected`` as the pipeline will count it."""
        body = rec.recommend(user, k=10)
        if body.get("experiment") == EXPERIMENT_ID:
            expected[body["arm"]]["served"] += 1
            expected[body["arm"]]["shown"] += len(body["items"])
            alphas[body["arm"]] = body.get("alpha")
        return body

    wait_until("the function to pick up the experiment",
               lambda: serve(users[0]).get("experiment") == EXPERIMENT_ID, cfg.timeout_s)
    category = {it.item_id: it.category for it in data.items}
    tastes = _tastes(data, category)
    t0 = time.monotonic()
    futures = []
    outside = 0
    for user in users:
        body = serve(user)
        arm = body.get("arm")
        if body.get("experiment") != EXPERIMENT_ID:  # a worker that has not refreshed yet
            outside += 1
            continue
        liked = tastes.get(user, set())
        for entry in body["items"]:
            p = BASE_CLICK + (TASTE_CLICK if category.get(entry["item_id"]) in liked else 0.0)
            if rng.random() >= p:
                continue
            expected[arm]["clicks"] += 1
            kinds = ["view"]
            if rng.random() < CART_AFTER_CLICK:
                kinds.append("add_to_cart")
                if rng.random() < PURCHASE_AFTER_CART:
                    kinds.append("purchase")
            for kind in kinds:
                futures.append(services.publisher.publish_event(
                    _event(user, entry["item_id"], kind, body["recommendation_id"])))
                if kind in COUNTED_AS:
                    expected[arm][COUNTED_AS[kind]] += 1
    for f in futures:
        f.result(timeout=60)
    served_s = time.monotonic() - t0

    def caught_up() -> dict[str, dict[str, Any]] | None:
        arms = _read_arms(client)
        ok = all(arms.get(a, {}).get(k) == n for a, c in expected.items() for k, n in c.items())
        return arms if ok else None

    say(f"  served {sum(c['served'] for c in expected.values())} lists in the experiment "
        f"({outside} outside it) in {served_s:.1f} s; waiting for the stream's counts")
    arms = wait_until("the pipeline's per-arm figures to count every list and click", caught_up,
                      cfg.timeout_s, status=lambda: f"expected {dict(expected)}, stored {_read_arms(client)}")
    settled_s = time.monotonic() - t0 - served_s
    latencies = _click_latencies(services, client, rec, users, rng)
    stop_experiment(client, EXPERIMENT_ID)
    summary = read_results(client, EXPERIMENT_ID)["summary"] or {}
    comparison = (summary.get("comparisons") or [{}])[0]
    fig.experiment = {
        "id": EXPERIMENT_ID,
        "arms": [{"name": a.name, "alpha": alphas.get(a.name), **{k: arms[a.name].get(k) for k in (
            "served", "shown", "clicks", "carts", "purchases", "ctr", "ctr_ci95", "conversion",
            "conversion_ci95", "mean_click_position")}} for a in experiment.arms],
        "p_value": comparison.get("ctr_p_value"),
        "ctr_diff": comparison.get("ctr_diff"),
        "click_model": {"base": BASE_CLICK, "taste": TASTE_CLICK, "cart": CART_AFTER_CLICK,
                        "purchase": PURCHASE_AFTER_CART},
        "users": len(users), "served_outside": outside, "serve_and_click_s": round(served_s, 2),
        "settled_after_s": round(settled_s, 2),
        "click_to_stats_s": {"probes": len(latencies), "p50": percentile(latencies, 50),
                             "p95": percentile(latencies, 95)},
    }
    for a in fig.experiment["arms"]:
        lo, hi = a["ctr_ci95"]
        say(f"  arm {a['name']:<8} served {a['served']:>4}  clicks {a['clicks']:>4}  CTR {a['ctr']:.3f} "
            f"[{lo:.3f}, {hi:.3f}]  purchases {a['purchases']}")
    say(f"  CTR difference {fmt(fig.experiment['ctr_diff'])}, p = {fmt(fig.experiment['p_value'])}; "
        f"a click reaches stats/experiments in p50 {fmt(percentile(latencies, 50))} s, "
        f"p95 {fmt(percentile(latencies, 95))} s")


def _tastes(data: DemoData, category: dict[str, str]) -> dict[str, set[str]]:
    """Planted tastes if the data has them, else each user's two most viewed categories."""
    if data.tastes:
        return {u: set(t.get("categories", ())) for u, t in data.tastes.items()}
    counts: dict[str, Counter] = {}
    for e in data.history:
        counts.setdefault(e.user_id, Counter())[category.get(e.item_id)] += 1
    return {u: {c for c, _ in n.most_common(2) if c} for u, n in counts.items()}


def _event(user: str, item: str, kind: str, recommendation_id: str) -> ProductEvent:
    return ProductEvent(event_id=f"x-{uuid.uuid4().hex}", event_type=kind, user_id=user, item_id=item,
                        timestamp=now_ms(), recommendation_id=recommendation_id)


def _read_arms(client: Any) -> dict[str, dict[str, Any]]:
    return read_results(client, EXPERIMENT_ID)["arms"]


def _arm_doc(client: Any, arm: str) -> dict[str, Any]:
    """One arm's document (the probes poll it, not the whole collection with its ``_dedup``)."""
    snap = client.collection(stats_path(EXPERIMENT_ID)).document(arm).get()
    return (snap.to_dict() or {}) if snap.exists else {}


def _click_latencies(services: Services, client: Any, rec: Any, users: Sequence[str],
                     rng: random.Random) -> list[float]:
    """Seconds from publishing one click to its arm's document counting it, one probe at a time."""
    return [_click_latency(services, client, rec, user)
            for user in rng.sample(list(users), min(LATENCY_PROBES, len(users)))]


def _click_latency(services: Services, client: Any, rec: Any, user: str) -> float:
    """Serve ``user`` a list, wait until it is counted, then time one click on its first item.

    Nothing else is served meanwhile, so the arm's ``served`` rising means this list is counted;
    only then is the click published (else the wait would also time the served record).
    """
    def arm_doc() -> dict[str, Any]:
        return _arm_doc(client, arm)

    served_before = {a: d.get("served", 0) for a, d in _read_arms(client).items()}
    # A worker idle since the experiment started answers its first request with the experiments
    # it knew (its refresh runs in the background, started by that request): ask again.
    body = wait_until("a probe list in the experiment", lambda: (b := rec.recommend(user, k=10))["arm"] and b,
                      10, interval_s=0.2)
    arm = body["arm"]
    served = served_before.get(arm, 0)
    before = wait_until("the probe's list to be counted",
                        lambda: (d := arm_doc()).get("served", 0) > served and d, 60, interval_s=0.02,
                        status=lambda: f"arm {arm}: {served} lists before, now {arm_doc().get('served')}")
    t0 = time.monotonic()
    services.publisher.publish_event(
        _event(user, body["items"][0]["item_id"], "view", body["recommendation_id"])).result(60)
    wait_until("the probe's click to be counted",
               lambda: arm_doc().get("clicks", 0) > before.get("clicks", 0), 60, interval_s=0.02)
    return round(time.monotonic() - t0, 3)
