"""scripts/experiments.py input parsing: arms from flags, a spec file, times; bad input exits with 2
before any Firestore access (the Firestore side: tests/integration/test_recommend_experiments.py)."""

from __future__ import annotations

import argparse
import json

import pytest

from schemas.errors import InvalidRecord
from schemas.experiments import ArmOverrides
from scripts import experiments as cli


def args(**kw) -> argparse.Namespace:
    base = {"id": "exp-1", "arm": [], "file": None, "start": None, "stop": None, "description": ""}
    return argparse.Namespace(**{**base, **kw})


def test_arms_from_flags_with_overrides():
    exp = cli.experiment_from_args(args(arm=["control:0.5", "t:0.5:alpha=1.0,pool=300,retrieval=exact,"
                                                            "diversity=0.2,model_version=v2"],
                                        start="2026-12-03T08:00:00Z", description="d"), now=5)
    assert [a.name for a in exp.arms] == ["control", "t"]
    assert exp.arms[1].overrides == ArmOverrides(alpha=1.0, model_version="v2", retrieval="exact", pool=300,
                                                 diversity=0.2)
    assert exp.start_ms == 1_796_284_800_000 and exp.stop_ms is None and exp.description == "d"
    assert cli.experiment_from_args(args(arm=["a:0.5", "b:0.5"]), now=5).start_ms == 5


def test_a_spec_file_and_its_id(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"id": "from-file", "arms": [{"name": "a", "share": 0.25},
                                                            {"name": "b", "share": 0.75}],
                                "start_ms": 10, "stop_ms": 20}))
    exp = cli.experiment_from_args(args(id=None, file=str(spec)))
    assert (exp.id, exp.start_ms, exp.stop_ms) == ("from-file", 10, 20)
    assert [a.share for a in exp.arms] == [0.25, 0.75]


@pytest.mark.parametrize("arm, message", [
    (["a:0.5"], "2 to 10 arms"), (["a", "b:0.5"], "name:share"), (["a:x", "b:0.5"], "not a number"),
    (["a:0.5", "b:0.5:alpha"], "key=value"), (["a:0.5", "b:0.5:colour=red"], "unknown override"),
    (["a:0.5", "b:0.5:pool=2.5"], "an integer"), (["a:0.5", "b:0.5:retrieval=annoy"], "retrieval"),
    (["a:0.5", "A:0.5"], "must match"), (["a:0.5", "a:0.5"], "unique"),
])
def test_bad_arms_are_invalid_records(arm, message):
    with pytest.raises(InvalidRecord, match=message):
        cli.experiment_from_args(args(arm=arm))


def test_bad_input_exits_2_without_touching_firestore(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_client", lambda project: pytest.fail("Firestore was touched"))
    assert cli.main(["create", "--id", "x", "--arm", "a:0.5", "--arm", "b:0.6"]) == 2
    assert cli.main(["create", "--id", "x", "--arm", "a:0.5", "--arm", "b:0.5", "--stop", "yesterday"]) == 2
    assert cli.main(["create", "--arm", "a:0.5", "--arm", "b:0.5"]) == 2
    assert "error: invalid experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2
