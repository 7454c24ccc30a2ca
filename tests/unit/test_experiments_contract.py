"""The experiment contract (schemas/experiments.py): documents, assignment, served records, figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from schemas.errors import InvalidRecord
from schemas.experiments import (
    ArmCounts,
    Experiment,
    ServedRecord,
    arm_figures,
    assign,
    compare_arms,
    is_arm_doc,
    parse_served,
    two_proportion_p_value,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[2]


def doc(**overrides):
    d = {"arms": [{"name": "control", "share": 0.3},
                  {"name": "alpha1", "share": 0.7, "overrides": {"alpha": 1.0, "pool": 400}}],
         "start_ms": 1000, "stop_ms": None}
    d.update(overrides)
    return d


def test_document_round_trips_and_runs_between_start_and_stop():
    x = Experiment.from_document("alpha-test", doc(stop_ms=5000))
    assert Experiment.from_document("alpha-test", x.to_document()) == x
    assert x.arm("alpha1").overrides.alpha == 1.0 and x.arm("alpha1").overrides.pool == 400
    assert [x.running(t) for t in (999, 1000, 4999, 5000)] == [False, True, True, False]


@pytest.mark.parametrize("bad, field", [
    (doc(arms=[{"name": "a", "share": 1.0}]), "arms"),
    (doc(arms=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]), "arms"),
    (doc(arms=[{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]), "arms"),
    (doc(arms=[{"name": "A b", "share": 0.5}, {"name": "b", "share": 0.5}]), "arms[0].name"),
    (doc(arms=[{"name": "_summary", "share": 0.5}, {"name": "b", "share": 0.5}]), "arms[0].name"),
    (doc(arms=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "overrides": {"alpha": 2}}]),
     "overrides.alpha"),
    (doc(arms=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "overrides": {"colour": 1}}]),
     "overrides"),
    (doc(arms=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "overrides": {"retrieval": "x"}}]),
     "overrides.retrieval"),
    (doc(start_ms="now"), "start_ms"),
    (doc(stop_ms=10), "stop_ms"),
])
def test_invalid_documents_name_the_field(bad, field):
    with pytest.raises(InvalidRecord) as e:
        Experiment.from_document("x", bad)
    assert e.value.field == field


def test_assignment_follows_the_shares():
    x = Experiment.from_document("alpha-test", doc())
    n = 20_000
    treated = sum(assign(x, f"user-{i}").name == "alpha1" for i in range(n))
    # binomial(n, 0.7): a 5-sigma band
    assert abs(treated - 0.7 * n) < 5 * np.sqrt(n * 0.7 * 0.3)


def test_assignment_is_independent_across_experiments():
    halves = doc(arms=[{"name": "x", "share": 0.5}, {"name": "y", "share": 0.5}])
    a, b = Experiment.from_document("exp-a", halves), Experiment.from_document("exp-b", halves)
    same = sum(assign(a, f"u{i}").name == assign(b, f"u{i}").name for i in range(10_000))
    assert abs(same - 5000) < 5 * 50  # not the same split reused


def test_assignment_is_the_same_in_another_process():
    """Stable across instances and restarts: not Python's salted hash()."""
    x = Experiment.from_document("alpha-test", doc())
    here = [assign(x, f"u{i}").name for i in range(200)]
    code = ("import json; from schemas.experiments import Experiment, assign; "
            f"x = Experiment.from_document('alpha-test', json.loads({json.dumps(json.dumps(doc()))})); "
            "print(json.dumps([assign(x, f'u{i}').name for i in range(200)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here


def test_served_record_round_trips_and_is_validated():
    r = ServedRecord("r1", 1_700_000_000_000, ("i1", "i2"), "v1", "personalized", "u1", None, "exp", "a")
    assert parse_served(r.to_pubsub_data()) == r
    plain = ServedRecord("r2", 1_700_000_000_000, ("i1",))
    assert parse_served(plain.to_pubsub_data()) == plain
    with pytest.raises(InvalidRecord) as e:
        parse_served(json.dumps({**r.to_dict(), "arm": None}))
    assert e.value.field == "arm"
    with pytest.raises(InvalidRecord):
        parse_served(json.dumps({**r.to_dict(), "items": "i1"}))


@pytest.mark.parametrize("s, n", [(0, 10), (3, 40), (50, 1000), (999, 1000), (7, 7)])
def test_wilson_interval_matches_the_textbook_formula(s, n):
    lo, hi = wilson_interval(s, n)
    z = stats.norm.ppf(0.975)
    p = s / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert lo == pytest.approx(max(0, centre - half)) and hi == pytest.approx(min(1, centre + half))
    assert lo <= p <= hi


def test_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    p, n = 0.08, 500
    hits = [wilson_interval(int(k), n) for k in rng.binomial(n, p, size=2000)]
    coverage = np.mean([lo <= p <= hi for lo, hi in hits])
    assert 0.93 <= coverage <= 0.97


def test_two_proportion_p_value_equals_the_chi_square_test():
    s1, n1, s2, n2 = 120, 2000, 160, 2100
    table = [[s1, n1 - s1], [s2, n2 - s2]]
    expected = stats.chi2_contingency(table, correction=False)[1]  # the pooled z-test, squared
    assert two_proportion_p_value(s1, n1, s2, n2) == pytest.approx(expected, rel=1e-9)
    assert two_proportion_p_value(1, 0, 1, 10) is None


def test_figures_and_comparison():
    c, t = ArmCounts(100, 1000, 50, 5, 2, (30, 20)), ArmCounts(100, 1000, 90, 6, 3, (60, 20, 10))
    f = arm_figures(t)
    assert f["ctr"] == 0.09 and f["ctr_ci95"][0] < 0.09 < f["ctr_ci95"][1]
    assert f["mean_click_position"] == pytest.approx((20 + 20) / 90)
    assert ArmCounts.from_dict(c.plus(t).to_dict()) == ArmCounts(200, 2000, 140, 11, 5, (90, 40, 10))
    cmp = compare_arms([("control", c), ("alpha1", t)])
    assert cmp["control"] == "control"
    assert cmp["comparisons"][0]["arm"] == "alpha1"
    assert cmp["comparisons"][0]["ctr_diff"] == pytest.approx(0.04)
    assert cmp["comparisons"][0]["ctr_p_value"] < 0.01


def test_stats_documents_tell_arms_from_bookkeeping():
    experiment = Experiment.from_document("e1", doc())
    assert all(is_arm_doc(a.name) for a in experiment.arms)
    assert not is_arm_doc("_summary") and not is_arm_doc("_dedup")
    with pytest.raises(InvalidRecord, match="name"):  # so no arm can be mistaken for bookkeeping
        Experiment.from_document("e1", doc(arms=[{"name": "_dedup", "share": 0.5},
                                                  {"name": "b", "share": 0.5}]))
