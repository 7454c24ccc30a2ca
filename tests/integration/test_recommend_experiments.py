"""Online experiments end to end on the emulators: the CLI's documents reach a running function
without a restart, responses carry the arm ``assign`` gives, the arm's alpha ranks, and every
answered list arrives on a real Pub/Sub topic, or is counted as lost when Pub/Sub is unreachable.

Fixture data: tests/integration/recommend_data.py (alice: books embedding, history b1).
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Callable

import functions_framework
import pytest

from schemas.experiments import Experiment, assign, parse_served
from schemas.firestore import ModelDoc
from schemas.index_snapshot import INDEX_FILE
from scripts import experiments as cli
from tests.conftest import pull_all
from tests.integration import recommend_data as rd

pytestmark = pytest.mark.integration

EXPERIMENT = "alpha-test"
ARMS = [{"name": "control", "share": 0.5}, {"name": "cb", "share": 0.5, "overrides": {"alpha": 0.0}}]


@pytest.fixture
def world(firestore_client, tmp_path):
    """Model v1; alice (embedding: books axis; history b1) and trending."""
    rd.publish_model(firestore_client, tmp_path, rd.make_snapshot())
    rd.write_user(firestore_client, "alice", ["b1"], [1.0, 0.0, 0.0, 0.0])
    rd.write_trending(firestore_client, [("m2", 9.0), ("g1", 6.0), ("b2", 3.0)])
    return firestore_client


@pytest.fixture
def make_client(monkeypatch):
    def _make(**env: str):
        for k, v in {"REFRESH_SECONDS": "0", **env}.items():
            monkeypatch.setenv(k, v)
        app = functions_framework.create_app("recommend", str(rd.MAIN))
        return app.test_client(), sys.modules["main"]

    return _make


def experiment(**doc) -> Experiment:
    return Experiment.from_document(EXPERIMENT, {"arms": ARMS, "start_ms": 0, **doc})


def user_in(arm: str, n: int = 1) -> list[str]:
    """The first ``n`` user ids ``user0, user1, ...`` that ``assign`` puts in ``arm``."""
    exp = experiment()
    return [u for u in (f"user{i}" for i in range(500)) if assign(exp, u).name == arm][:n]


def get(client, url: str) -> dict:
    resp = client.get(url)
    assert resp.status_code == 200, (url, resp.status_code, resp.get_data(as_text=True))
    return resp.get_json()


def wait_for(fetch: Callable[[], dict], ok: Callable[[dict], bool], timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = fetch()
        if ok(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


# ---------------------------------------------------------------- pick-up, assignment, stop


def test_a_cli_experiment_is_picked_up_without_restart_assigned_and_stopped(world, make_client):
    client, _ = make_client()
    users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    assert get(client, "/recommendations?user_id=alice&k=3")["experiment"] is None
    cli.create_experiment(world, experiment(description="alpha 0 vs the default"))
    body = wait_for(lambda: get(client, "/recommendations?user_id=alice&k=3"),
                    lambda b: b["experiment"] == EXPERIMENT)
    assert body["arm"] == assign(experiment(), "alice").name
    arms = {u: get(client, f"/recommendations?user_id={u}&k=3")["arm"] for u in users}
    assert arms == {u: assign(experiment(), u).name for u in users}
    assert set(arms.values()) == {"control", "cb"}
    # an anonymous session is the unit when there is no user; no unit, no experiment
    anon = get(client, "/recommendations?session_id=s-42&session_items=m1&k=3")
    assert anon["experiment"] == EXPERIMENT and anon["arm"] == assign(experiment(), "s-42").name
    assert get(client, "/recommendations?session_items=m1&k=3")["experiment"] is None
    assert EXPERIMENT in get(client, "/healthz")["experiments"]
    cli.stop_experiment(world, EXPERIMENT)
    wait_for(lambda: get(client, "/recommendations?user_id=alice&k=3"), lambda b: b["experiment"] is None)
    assert EXPERIMENT not in get(client, "/healthz")["experiments"]


def test_an_invalid_document_is_ignored_and_a_deleted_experiment_ends(world, make_client):
    client, _ = make_client()
    world.collection("experiments").document("broken").set({"arms": "none", "start_ms": 0})
    cli.create_experiment(world, experiment())
    alice = lambda: get(client, "/recommendations?user_id=alice&k=3")
    body = wait_for(alice, lambda b: b["experiment"] == EXPERIMENT)
    assert body["arm"] == assign(experiment(), "alice").name
    world.collection("experiments").document(EXPERIMENT).delete()
    wait_for(alice, lambda b: b["experiment"] is None)


def test_the_arms_alpha_is_in_the_response_and_changes_the_ranking(world, make_client):
    client, _ = make_client()
    cb, control = user_in("cb", 2), user_in("control", 2)
    for u in cb + control:  # the two-tower says music, the content of her history (b1) books
        rd.write_user(world, u, ["b1"], [0.0, 1.0, 0.0, 0.0])
    pure_cf = ids(get(client, f"/recommendations?user_id={cb[0]}&k=3&alpha=1"))
    pure_cb = ids(get(client, f"/recommendations?user_id={cb[0]}&k=3&alpha=0"))
    assert pure_cf == ["m1", "m3", "m4"] and pure_cb[:2] == ["b2", "b4"]  # m2 is out of stock
    cli.create_experiment(world, experiment())
    wait_for(lambda: get(client, f"/recommendations?user_id={cb[0]}&k=3"), lambda b: b["arm"] == "cb")
    for u in cb:  # the arm wins over the client's alpha=1
        body = get(client, f"/recommendations?user_id={u}&k=3&alpha=1")
        assert (body["arm"], body["alpha"], ids(body)) == ("cb", 0.0, pure_cb)
    for u in control:  # the control arm keeps the request's alpha
        body = get(client, f"/recommendations?user_id={u}&k=3&alpha=1")
        assert (body["arm"], body["alpha"], ids(body)) == ("control", 1.0, pure_cf)


def test_an_arms_model_version_ranks_once_loaded_and_the_response_says_so(world, make_client, tmp_path):
    extra = {"z1": ("books", [0.0, 0.0, 0.0, 5.0], [1, 0, 0], True, 1.0)}
    snap = rd.make_snapshot(version=rd.V2, extra=extra)
    uri = tmp_path / "v2" / INDEX_FILE
    uri.parent.mkdir()
    snap.save(uri)
    world.collection("models").document(rd.V2).set(ModelDoc(
        version=rd.V2, status="ready", created_at=rd.CREATED_AT, artifact_uri=str(uri.parent),
        index_uri=str(uri), dim=4, item_count=len(snap.item_ids)).to_document())
    arms = [{"name": "control", "share": 0.5},
            {"name": "v2", "share": 0.5, "overrides": {"model_version": rd.V2}}]
    exp = Experiment.from_document("versions", {"arms": arms, "start_ms": 0})
    in_v2 = [u for u in (f"user{i}" for i in range(500)) if assign(exp, u).name == "v2"][:1]
    in_control = [u for u in (f"user{i}" for i in range(500)) if assign(exp, u).name == "control"][:1]
    for u in in_v2 + in_control:
        rd.write_user(world, u, ["b1"], [1.0, 0.0, 0.0, 0.0])
    client, _ = make_client()
    cli.create_experiment(world, exp)
    body = wait_for(lambda: get(client, f"/recommendations?user_id={in_v2[0]}&k=1&alpha=1"),
                    lambda b: b["model_version"] == rd.V2)
    # her embedding is of v1: under v2 the query is the mean of her history (b1)
    assert body["arm"] == "v2" and body["query"] == "history_mean"
    assert get(client, "/healthz")["arm_model_versions"] == [rd.V2]
    ctl = get(client, f"/recommendations?user_id={in_control[0]}&k=1&alpha=1")
    assert (ctl["arm"], ctl["model_version"], ctl["query"]) == ("control", rd.V1, "user_embedding")
    cli.stop_experiment(world, "versions")
    wait_for(lambda: get(client, "/healthz"), lambda b: b["arm_model_versions"] == [])
    assert get(client, f"/recommendations?user_id={in_v2[0]}&k=1")["model_version"] == rd.V1


def test_the_cli_refuses_overwrites_rejects_bad_input_and_shows_figures(world, capsys):
    assert cli.main(["create", "--id", EXPERIMENT, "--arm", "control:0.5", "--arm", "cb:0.5:alpha=0"]) == 0
    assert cli.main(["create", "--id", EXPERIMENT, "--arm", "a:0.5", "--arm", "b:0.5"]) == 1
    assert cli.main(["create", "--id", EXPERIMENT, "--arm", "a:0.5", "--arm", "b:0.5", "--replace"]) == 0
    assert cli.main(["create", "--id", "x", "--arm", "a:0.7", "--arm", "b:0.5"]) == 2  # shares
    assert cli.main(["create", "--id", "x", "--arm", "a:0.5", "--arm", "b:0.5:alpha=2"]) == 2
    assert cli.main(["create", "--id", "a/b", "--arm", "a:0.5", "--arm", "b:0.5"]) == 2
    assert cli.main(["stop", "--id", "nope"]) == 1
    assert "shares must sum to 1" in capsys.readouterr().err
    from schemas.experiments import ArmCounts, arm_figures, compare_arms

    counts = {"a": ArmCounts(served=10, shown=100, clicks=7), "b": ArmCounts(served=10, shown=100, clicks=12)}
    stats = world.collection("stats").document("experiments").collection(EXPERIMENT)
    for arm, c in counts.items():
        stats.document(arm).set(arm_figures(c))
    stats.document("_summary").set(compare_arms(list(counts.items())))
    stats.document("_dedup").set({"keys": []})  # the pipeline's bookkeeping: not an arm
    results = cli.read_results(world, EXPERIMENT)
    assert set(results["arms"]) == {"a", "b"}
    assert results["arms"]["b"]["clicks"] == 12 and results["summary"]["control"] == "a"
    assert cli.main(["show", "--id", EXPERIMENT]) == 0
    out = capsys.readouterr().out
    assert "0.0700" in out and "0.1200" in out and "b vs a: CTR diff +0.0500" in out
    assert cli.main(["stop", "--id", EXPERIMENT]) == 0 and cli.main(["list"]) == 0
    assert "stopped" in capsys.readouterr().out


# ---------------------------------------------------------------- served records


def test_served_records_arrive_on_the_topic_with_the_responses_ids(world, make_client, pubsub_topic):
    topic, sub = pubsub_topic
    cli.create_experiment(world, experiment())
    client, _ = make_client(SERVED_TOPIC=topic, REFRESH_SECONDS="3600")
    bodies = [get(client, "/recommendations?user_id=alice&k=4"),
              get(client, "/recommendations?session_id=s1&session_items=m1,m3&k=3"),
              get(client, "/recommendations?k=2")]
    messages = pull_all(sub, expected=len(bodies))
    records = {r.recommendation_id: r for r in (parse_served(m.data) for m in messages)}
    assert set(records) == {b["recommendation_id"] for b in bodies}
    for body in bodies:
        rec = records[body["recommendation_id"]]
        assert list(rec.items) == ids(body)  # position 0 first
        assert (rec.model_version, rec.strategy, rec.user_id, rec.experiment, rec.arm) == (
            body["model_version"], body["strategy"], body["user_id"], body["experiment"], body["arm"])
    assert records[bodies[1]["recommendation_id"]].session_id == "s1"
    assert records[bodies[0]["recommendation_id"]].experiment == EXPERIMENT
    assert records[bodies[2]["recommendation_id"]].experiment is None
    attrs = {m.attributes["recommendation_id"]: dict(m.attributes) for m in messages}
    assert attrs[bodies[0]["recommendation_id"]].get("experiment") == EXPERIMENT
    health = get(client, "/healthz")["served_records"]
    assert health["topic"] == topic and health["published"] == 3 and health["failed"] == 0



def test_unreachable_pubsub_never_fails_a_request_and_every_loss_is_counted(world, make_client):
    client, module = make_client(SERVED_TOPIC="recommendations-served", SERVED_QUEUE_MAX="5",
                                 SERVED_PUBLISH_TIMEOUT_SECONDS="0.5", REFRESH_SECONDS="3600",
                                 PUBSUB_EMULATOR_HOST=f"127.0.0.1:{rd.closed_port()}")
    n = 40
    started = time.monotonic()
    for i in range(n):
        assert client.get(f"/recommendations?user_id=alice&k=3&alpha={i / n}").status_code == 200
    assert time.monotonic() - started < 5  # nothing waited on Pub/Sub
    assert module.SERVICE.served.wait_idle(30)
    health = get(client, "/healthz")["served_records"]
    assert health["published"] == 0 and health["dropped_queue_full"] > 0 and health["failed"] > 0
    assert health["dropped_queue_full"] + health["failed"] == n


def test_served_records_from_forked_gunicorn_workers(world, emulators, pubsub_topic, tmp_path):
    """Two workers (forked after the cold start) each start their own publisher thread."""
    topic, sub = pubsub_topic
    env = {**emulators.client_env(), "WORKERS": "2", "THREADS": "2", "SERVED_TOPIC": topic,
           "REFRESH_SECONDS": "3600"}
    with rd.gunicorn_function(env, tmp_path) as (_, port):
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(8)]
        served = []
        for _ in range(3):
            for c in conns:
                c.request("GET", "/recommendations?user_id=alice&k=3")
            for c in conns:
                resp = c.getresponse()
                assert resp.status == 200
                served.append(json.loads(resp.read())["recommendation_id"])
        for c in conns:
            c.close()
        got = [parse_served(m.data).recommendation_id for m in pull_all(sub, expected=len(served))]
        assert sorted(got) == sorted(served)
