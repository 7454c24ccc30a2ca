"""The demo's report: ``reports/<timestamp>/report.md`` with PNG plots (matplotlib).

A dated folder per run, so reports from different runs can be compared side by side.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def plot_distribution(values: list[float], title: str, xlabel: str, path: Path,
                      marks: dict[str, float] | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if values:
        ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="#4C78A8")
    for label, x in (marks or {}).items():
        if x is not None:
            ax.axvline(x, color="#E45756", linestyle="--", linewidth=1)
            ax.text(x, ax.get_ylim()[1] * 0.92, f" {label}", color="#E45756", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality(models: dict[str, dict[str, float]], path: Path) -> None:
    names = list(models)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ax.bar([m + i * width for m in range(len(METRICS))],
               [models[name].get(k) or 0 for k in METRICS], width, label=name)
    ax.set_xticks([m + width * (len(names) - 1) / 2 for m in range(len(METRICS))], METRICS)
    ax.set_title("Offline quality on the history (temporal split, full ranking)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_experiment(arms: list[dict[str, Any]], path: Path) -> None:
    """Per-arm click-through with its 95 % interval, as the pipeline wrote it."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ctr = [a["ctr"] for a in arms]
    err = [[a["ctr"] - a["ctr_ci95"][0] for a in arms], [a["ctr_ci95"][1] - a["ctr"] for a in arms]]
    ax.bar(range(len(arms)), ctr, yerr=err, capsize=8, color=["#4c72b0", "#dd8452"][:len(arms)] or None)
    ax.set_xticks(range(len(arms)), [f"{a['name']} (alpha {_f(a.get('alpha'), 2)})" for a in arms])
    ax.set_ylabel("clicks per shown item")
    ax.set_title("Online experiment: CTR per arm, 95 % Wilson interval (live, from the stream)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment_section(x: dict[str, Any], out: Path) -> list[str]:
    """The experiment's per-arm table and plot (empty when the step did not run)."""
    if not x.get("arms"):
        return []
    plot_experiment(x["arms"], out / "experiment.png")
    lat = x.get("click_to_stats_s") or {}
    lines = ["", "## Online experiment", "",
             f"Experiment `{x['id']}`: simulated users were served lists (each user in one arm, by a "
             f"hash of the experiment and user ids) and clicked items of their tastes; their events "
             f"carried the list's `recommendation_id`, and the pipeline joined them to the served "
             f"lists. A click reached `stats/experiments/{x['id']}` in p50 {_f(lat.get('p50'), 2)} s, "
             f"p95 {_f(lat.get('p95'), 2)} s ({lat.get('probes')} probes).", "",
             "| arm | α | lists | shown | clicks | CTR | 95 % interval | purchases |",
             "|---|---|---|---|---|---|---|---|"]
    for a in x["arms"]:
        lo, hi = a["ctr_ci95"]
        lines.append(f"| {a['name']} | {_f(a.get('alpha'), 2)} | {a['served']} | {a['shown']} "
                     f"| {a['clicks']} | {_f(a['ctr'])} | [{_f(lo)}, {_f(hi)}] | {a['purchases']} |")
    lines += ["", f"CTR difference {_f(x.get('ctr_diff'))}, two-proportion test "
                  f"p = {_f(x.get('p_value'), 4)}.", "", "![experiment](experiment.png)"]
    return lines


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def console_section(console: dict[str, Any], out: Path) -> list[str]:
    """The console's screenshot (copied next to the report) and what it measured."""
    shot = Path(console.get("screenshot") or "")
    if not shot.is_file():
        return []
    shutil.copyfile(shot, out / "console.png")
    return ["", "## Console", "",
            f"The operator console (`/console/` on the recommend function, as private as its API) for "
            f"user `{console['user_id']}`, in headless Chromium: first recommendations rendered "
            f"{console['first_recommendations_ms']} ms after navigation start; {console['requests']} "
            f"requests, {len(console['off_origin_requests'])} off the local origin.", "",
            "![console](console.png)"]


def cost_section(root: Path) -> list[str]:
    """What serving and ingesting cost on Google Cloud (``scripts.cost``), with Personalize's price."""
    from scripts import cost

    result = cost.estimate(cost.from_reports(root / "reports" / "bench"), cost.Deployment())
    lines = ["", "## What it costs on Google Cloud", "",
             f"From `python -m scripts.cost` (list prices of {result['prices_as_of']}, "
             f"`scripts/prices.py`; inputs: {'; '.join(result['measured']['sources'])}), one view event "
             "per recommendation request:", "",
             "| req/s | mode | $ per million recs | $ per million events | $ per month | "
             "Personalize $ per million recs |", "|---|---|---|---|---|---|"]
    for sc in result["scenarios"]:
        lines.append(f"| {sc['requests_per_s']:g} | {sc['mode']} "
                     f"| {sc['usd_per_million_recommendations']:.2f} | {sc['usd_per_million_events']:.2f} "
                     f"| {sc['usd_per_month']:,.0f} "
                     f"| {sc['personalize_usd_per_million_recommendations']:.2f} |")
    return lines


def write_report(summary: dict[str, Any], details: dict[str, Any], reports_dir: Path) -> Path:
    """Write the Markdown report and its plots; return the report's path."""
    out = reports_dir / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    fr, sv, ev = summary["freshness"], summary["serving"], summary["events"]
    plot_distribution([x * 1000 for x in details["freshness_s"]], "Freshness: publish -> function "
                      "answers with the event", "milliseconds", out / "freshness.png",
                      {"p50": (fr["p50_s"] or 0) * 1000, "p95": (fr["p95_s"] or 0) * 1000})
    plot_distribution(details["serving_latencies_ms"], "Serving latency under load",
                      "milliseconds", out / "latency.png",
                      {"p50": sv.get("p50_ms"), "p99": sv.get("p99_ms")})
    plot_quality(summary["quality"], out / "quality.png")
    lines = [
        "# Real-time recommender: demo report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on the local emulators "
        "(Pub/Sub, Firestore), the Beam DirectRunner and functions-framework.", "",
        "## Events", "",
        "| published | unique valid | duplicates | accepted | rejected | at ingest | dead-lettered |",
        "|---|---|---|---|---|---|---|",
        f"| {ev.get('published')} | {ev.get('unique_valid')} | {ev.get('duplicates_sent')} | "
        f"{ev.get('accepted')} | {ev.get('rejected')} | {ev.get('rejected_by_ingest')} | "
        f"{ev.get('dead_lettered')} |", "",
        f"Rejection reasons (field: count): ingest {summary['ingest_reject_reasons']}, "
        f"dead letters {summary['dead_letter_reasons']}.", "",
        "## Freshness", "",
        f"Publish a view, then ask the recommend function until it answers with that event: "
        f"p50 {_f(fr['p50_s'])} s, p95 {_f(fr['p95_s'])} s over {fr['measured']} probes "
        f"(sent while the live stream ran).", "",
        "![freshness](freshness.png)", "",
        "## Serving", "",
        f"{sv.get('concurrency')} concurrent clients for {sv.get('seconds')} s: "
        f"{sv.get('rps')} requests/s, p50 {_f(sv.get('p50_ms'), 2)} ms, "
        f"p99 {_f(sv.get('p99_ms'), 2)} ms; cold start {sv.get('cold_start_s')} s. "
        f"{sv.get('note', '')}.", "",
        "![latency](latency.png)", "",
        "## Quality", "",
        "| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS),
    ]
    for name, m in summary["quality"].items():
        lines.append(f"| {name} | " + " | ".join(_f(m.get(k)) for k in METRICS) + " |")
    lines += ["", "![quality](quality.png)", "", "## Recommendations before and after new views", ""]
    for show in details["showcase"]:
        lines.append(f"- **{show['user_id']}** ({show['strategy_before']} -> "
                     f"{show['strategy_after']}): {len(show['entered'])} new in the top "
                     f"{len(show['after'])}: " + ", ".join(
                         f"{i['item_id']} (cf {_f(i['cf_score'])}, cb {_f(i['cb_score'])})"
                         for i in show["entered"][:5]))
    ni = summary["new_item"]
    if ni:
        item = ni["item"]
        lines += ["", "## A new item, without retraining", "",
                  f"`{item['item_id']}` ({item['category']} / {item['brand']}) was published to "
                  f"the catalogue topic, embedded by the pipeline's candidate tower from its "
                  f"attributes and indexed by the function in {ni['indexed_s']} s. It is in the "
                  f"top {ni['k']} ({ni['category_filter']}) of {ni['recommended_to']} of "
                  f"{ni['matching_users']} users whose history is mostly {item['category']}."]
    hr = summary["hot_reload"]
    lines += ["", "## Models", ""]
    for role, m in summary["models"].items():
        lines.append(f"- {role}: `{m['version']}` trained in {m['train_seconds']} s")
    if hr:
        lines.append(f"- hot reload: the function switched in {hr['function_switch_s']} s; the "
                     f"pipeline embedded events with `{hr['user_doc_model_version']}` "
                     f"{hr['pipeline_switch_s']} s after the switch, without a restart.")
    lines += experiment_section(details.get("experiment") or {}, out)
    lines += console_section(details.get("console") or {}, out)
    lines += cost_section(Path(__file__).resolve().parents[2])
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "report.md"
