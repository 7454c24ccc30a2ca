"""The summary: the figures people look at first, printed and written to summary.json.

``summary()`` is the one place summary.json's top level is defined; ``details`` is ``Figures``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scripts.demo.console import fmt, say
from scripts.demo.figures import Figures
from scripts.demo.measure import percentile


def summary(fig: Figures) -> dict[str, Any]:
    """The figures people look at first (summary.json's top level)."""
    fresh = fig.freshness_s
    lat = fig.serving_latencies_ms
    q = fig.quality.get("models", {})
    return {
        "events": fig.events,
        "dead_letter_reasons": fig.dead_letter_reasons,
        "ingest_reject_reasons": fig.ingest_reject_reasons,
        "freshness": {"probes": len(fig.probes), "measured": len(fresh),
                      "p50_s": percentile(fresh, 50), "p95_s": percentile(fresh, 95)},
        "serving": {**fig.serving, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)},
        "quality": {name: {k: m.get(k) for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
                    for name, m in q.items()},
        "models": fig.models,
        "new_item": {k: v for k, v in fig.new_item.items() if k != "ranks"},
        "hot_reload": fig.hot_reload,
        "forget_user": fig.forget_user,
        "experiment": {k: fig.experiment.get(k) for k in ("id", "arms", "p_value", "ctr_diff",
                                                          "click_to_stats_s")} if fig.experiment else {},
        "timings_s": fig.timings_s,
    }


def write_summary_json(s: dict[str, Any], fig: Figures, out_dir: Path) -> Path:
    """Write ``s`` with every figure under ``details``; return the file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    path.write_text(json.dumps({**s, "details": asdict(fig)}, indent=2))
    return path


def print_summary(s: dict[str, Any]) -> None:
    """Print the summary's headline figures, one line per concern."""
    ev, fr, sv = s["events"], s["freshness"], s["serving"]
    say("\n\033[1mSummary\033[0m")
    say(f"  events published      {ev.get('published')}  (unique valid {ev.get('unique_valid')}, "
        f"duplicates {ev.get('duplicates_sent')}, invalid {ev.get('rejected')})")
    say(f"  accepted by pipeline  {ev.get('accepted')}")
    say(f"  rejected              {ev.get('rejected')}: at ingest {ev.get('rejected_by_ingest')} "
        f"{s['ingest_reject_reasons']}, dead-lettered {ev.get('dead_lettered')} "
        f"{s['dead_letter_reasons']}")
    say(f"  freshness             p50 {fmt(fr['p50_s'])} s, p95 {fmt(fr['p95_s'])} s "
        f"({fr['measured']}/{fr['probes']} probes)")
    say(f"  serving               p50 {fmt(sv.get('p50_ms'))} ms, p99 {fmt(sv.get('p99_ms'))} ms, "
        f"{sv.get('rps')} requests/s, cold start {sv.get('cold_start_s')} s")
    for name, m in s["quality"].items():
        say(f"  quality {name:<13} NDCG@10 {fmt(m.get('ndcg@10'))}  Recall@20 {fmt(m.get('recall@20'))}")
    for role, m in s["models"].items():
        say(f"  model {role:<15} {m['version']} ({m['train_seconds']} s)")
    ni = s["new_item"]
    if ni:
        say(f"  new item              recommended to {ni['recommended_to']} of "
            f"{ni['matching_users']} matching users, indexed in {ni['indexed_s']} s")
    x = s.get("experiment") or {}
    for a in x.get("arms", []):
        say(f"  experiment {a['name']:<11} CTR {fmt(a['ctr'])} {[round(v, 3) for v in a['ctr_ci95']]} "
            f"over {a['shown']} shown items")
    if x:
        say(f"  experiment p-value    {fmt(x.get('p_value'))}; click to stats p95 "
            f"{fmt((x.get('click_to_stats_s') or {}).get('p95'))} s")
