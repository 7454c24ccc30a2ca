"""The cost model's arithmetic, pinned on figures computed by hand."""

from __future__ import annotations

import json

import pytest

from scripts import cost

HOURS = 730
SECONDS = HOURS * 3600
M = cost.Measured(server_cpu_ms_per_request=2.0, firestore_reads_per_request=1.0,
                  background_reads_per_instance_s=0.5, pipeline_cpu_ms_per_event=0.3,
                  firestore_writes_per_event=0.5, pubsub_bytes_per_event=512.0, sources=("test",))
D = cost.Deployment(function_vcpu=1.0, function_memory_gib=0.5, min_instances=2, target_cpu_utilisation=0.5,
                    worker_vcpu=2.0, worker_memory_gb=7.5, worker_disk_gb=30.0, worker_cpu_utilisation=0.5,
                    dataflow_cpu_overhead=3.0, streaming_engine_bytes_per_event=3000.0,
                    events_per_request=2.0)


def test_scale_to_zero_serving_by_hand():
    # 100 req/s x 2 ms / 0.5 utilisation = 0.4 busy vCPU all month
    vcpu_s = 0.4 * SECONDS
    got = cost.serving_month(100, M, D, always_on=False)
    assert got["function_compute"] == pytest.approx(vcpu_s * (0.000024 + 0.5 * 0.0000025))
    assert got["function_requests"] == pytest.approx(100 * SECONDS / 1e6 * 0.40)
    assert got["firestore_reads"] == pytest.approx((100 * SECONDS + vcpu_s * 0.5) * 0.03 / 100_000)


def test_always_on_serving_pays_min_instances_all_month():
    got = cost.serving_month(100, M, D, always_on=True)  # 0.4 vCPU needed -> 1 instance, min is 2
    assert got["function_compute"] == pytest.approx(2 * SECONDS * (0.000018 + 0.5 * 0.000002))
    assert got["function_requests"] == 0.0
    busy = cost.serving_month(3000, M, D, always_on=True)  # 12 busy vCPU -> 12 instances
    assert busy["function_compute"] == pytest.approx(12 * SECONDS * (0.000018 + 0.5 * 0.000002))


def test_events_by_hand():
    # 5,000 events/s x 0.3 ms x 3 (Dataflow overhead) / 0.5 = 9 busy vCPU -> 5 workers of 2 vCPU
    got = cost.events_month(5000, M, D)
    events = 5000 * SECONDS
    assert got["workers"] == 5
    assert got["dataflow_workers"] == pytest.approx(5 * HOURS * (2 * 0.069 + 7.5 * 0.003557 + 30 * 0.000054))
    assert got["pubsub"] == pytest.approx(2 * events * 512 / 2**40 * 40.0)
    assert got["dataflow_streaming_engine"] == pytest.approx(events * 3000 / 1e9 * 0.018)
    assert got["firestore_writes"] == pytest.approx(events * 0.5 * 0.09 / 100_000)
    assert cost.events_month(0.001, M, D)["workers"] == 1  # a streaming job never scales to zero


def test_personalize_tiers_by_hand():
    assert cost.personalize_month(0.2) == pytest.approx(HOURS * 0.20)  # the 1 TPS minimum
    # 100 TPS all month = 73,000 TPS-hours: 20,000 at 0.20 + 53,000 at 0.10
    assert cost.personalize_month(100) == pytest.approx(20_000 * 0.20 + 53_000 * 0.10)
    # 1,000 TPS = 730,000: + 180,000 at 0.10 + 530,000 at 0.05
    assert cost.personalize_month(1000) == pytest.approx(4_000 + 18_000 + 530_000 * 0.05)


def test_scenario_per_million_figures_add_up():
    s = cost.scenario(100, False, M, D)
    serving = sum(cost.serving_month(100, M, D, False).values())
    events = cost.events_month(200, M, D)
    events.pop("workers")
    assert s["usd_per_million_recommendations"] == pytest.approx(serving / (100 * SECONDS / 1e6))
    assert s["usd_per_million_events"] == pytest.approx(sum(events.values()) / (200 * SECONDS / 1e6))
    assert s["usd_per_month"] == pytest.approx(serving + sum(events.values()))


def test_json_output_has_the_documented_keys(capsys, tmp_path):
    (tmp_path / "serving.json").write_text(json.dumps({"recommend": {"server_cpu_ms_per_request": 3.0}}))
    assert cost.main(["--json", "--reports", str(tmp_path), "--rates", "10,100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(s["requests_per_s"], s["mode"]) for s in out["scenarios"]] == [
        (10.0, "scale_to_zero"), (10.0, "always_on"), (100.0, "scale_to_zero"), (100.0, "always_on")]
    for s in out["scenarios"]:
        assert {"requests_per_s", "usd_per_million_recommendations", "usd_per_million_events",
                "usd_per_month"} <= set(s)
    assert set(out["personalize_usd_per_million_recommendations"]) == {"10", "100"}
    assert out["measured"]["server_cpu_ms_per_request"] == 3.0  # read from the report
    assert out["measured"]["pubsub_bytes_per_event"] > 100  # a real encoded event


def test_bad_rates_are_a_usage_error():
    with pytest.raises(SystemExit):
        cost.main(["--rates", "ten"])
    with pytest.raises(SystemExit):
        cost.main(["--rates", "0"])
