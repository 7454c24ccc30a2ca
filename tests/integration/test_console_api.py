"""The console's page and its read-only endpoints, through functions-framework's test client on the
Firestore emulator, over the hand-made fixture world (tests/integration/recommend_data.py).

Every figure the page shows is checked here (or, for /recommendations and /similar-items, in
test_recommend_function.py): system (model, index, trending, freshness, experiments, features),
user (history with attributes, time since the last event) and item (recommended to).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time

import functions_framework
import pytest

from schemas import names
from tests.integration import recommend_data as rd

pytestmark = pytest.mark.integration


@pytest.fixture
def world(firestore_client, tmp_path):
    """Model v1 published (with metrics and metadata.json); alice, carol, dave; trending; items docs."""
    snap = rd.make_snapshot()
    rd.publish_model(firestore_client, tmp_path, snap)
    (tmp_path / rd.V1 / "metadata.json").write_text(json.dumps(
        {"version": rd.V1, "n_users": 4, "n_items": 12, "data_fingerprint": "abc",
         "data_max_timestamp": 1767225600000}))
    firestore_client.collection(names.MODELS).document(rd.V1).update(
        {"metrics": {"train_loss": [3.0, 2.5], "recall@10": 0.42, "n_examples": 30, "note": "x"},
         "params": {"dim": 4}})
    for item_id, (category, emb, content, in_stock, _) in rd.ITEMS.items():  # before the snapshot
        rd.write_item(firestore_client, item_id, category, emb, content, rd.CREATED_AT - 1000,
                      in_stock=in_stock)
    rd.write_user(firestore_client, "alice", ["b1", "m1"], [1.0, 0.0, 0.0, 0.0])
    rd.write_user(firestore_client, "carol", ["m1", "m3"], [1.0, 0.0, 0.0, 0.0], model_version="v-old")
    rd.write_user(firestore_client, "dave", ["g1"], None, model_version=None)
    users = firestore_client.collection(names.USERS)
    for n, user_id in enumerate(("dave", "carol", "alice")):  # alice is the newest document
        users.document(user_id).update({"updated_at": rd.CREATED_AT + 1000 * (n + 1)})
    rd.write_trending(firestore_client, [("m2", 9.0), ("g1", 6.0), ("b2", 3.0)])
    return firestore_client


@pytest.fixture
def client(world, monkeypatch):
    monkeypatch.setenv("REFRESH_SECONDS", "3600")
    return functions_framework.create_app("recommend", str(rd.MAIN)).test_client()


def get(client, url: str, status: int = 200) -> dict:
    resp = client.get(url)
    assert resp.status_code == status, (url, resp.status_code, resp.get_data(as_text=True))
    assert resp.is_json, resp.get_data(as_text=True)[:200]
    return resp.get_json()


# ---------------------------------------------------------------- the page


def test_page_is_one_document_with_a_self_only_policy(client):
    resp = client.get("/console")
    assert resp.status_code == 308 and resp.headers["Location"] == "console/"
    page = client.get("/console/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    # console.css and console.js inlined: one request to the first recommendations' fetch
    static = rd.FUNCTION_DIR / "console"
    assert (static / "console.js").read_text() in html and (static / "console.css").read_text() in html
    assert 'src="console.js"' not in html and "http://" not in html and "https://" not in html
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'sha256-" in csp and "'unsafe-inline'" not in csp
    script = html.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert client.head("/console/").status_code == 200


def test_unknown_console_paths_and_methods_are_json_errors(client):
    assert get(client, "/console/nope.js", 404)["error"]["code"] == "not_found"
    assert get(client, "/console/console.js", 404)["error"]["code"] == "not_found"
    assert get(client, "/console/api/nope", 404)["error"]["code"] == "not_found"
    resp = client.post("/console/api/system", json={})
    assert resp.status_code == 405 and resp.is_json and resp.headers["Allow"] == "GET"


# ---------------------------------------------------------------- system


def test_system_reports_model_index_trending_and_freshness(client):
    t0 = time.time()
    s = get(client, "/console/api/system")
    m = s["model"]
    assert m["version"] == rd.V1 and m["status"] == "ready" and m["found"]
    assert m["created_at"] == rd.CREATED_AT and m["item_count"] == 12 and m["dim"] == 4
    assert m["switched_at"] == rd.CREATED_AT and m["parent_version"] is None
    # numeric leaves only; a list of numbers gives its last value
    assert m["figures"] == {"train_loss[-1]": 2.5, "recall@10": 0.42, "n_examples": 30}
    assert m["params"] == {"dim": 4}
    assert m["trained_on"] == {"n_users": 4, "n_items": 12, "data_fingerprint": "abc",
                               "data_max_timestamp": 1767225600000}
    ix = s["index"]
    assert ix["status"] == "ok" and ix["model_version"] == rd.V1 and ix["item_count"] == 12
    assert ix["items_added_since_snapshot"] == 0 and ix["index_created_at"] == rd.CREATED_AT
    assert ix["index_age_s"] == pytest.approx(t0 - rd.CREATED_AT / 1000, abs=5)
    assert ix["trending_items"] == 3 and ix["retrieval"] == "exact"
    tr = s["trending"]
    assert [(e["item_id"], e["category"], e["score"], e["views"]) for e in tr["items"]] == [
        ("m2", "music", 9.0, 10), ("g1", "garden", 6.0, 10), ("b2", "books", 3.0, 10)]
    assert tr["count"] == 3 and tr["updated_at"] == rd.CREATED_AT
    fr = s["freshness"]
    assert [u["user_id"] for u in fr["newest_users"]] == ["alice", "carol", "dave"]
    alice = fr["newest_users"][0]
    assert alice["updated_at"] == rd.CREATED_AT + 3000 and alice["event_count"] == 2
    assert alice["age_s"] == pytest.approx(t0 - (rd.CREATED_AT + 3000) / 1000, abs=5)
    assert fr["newest_age_s"] == alice["age_s"]
    assert s["experiments"] == {"state": "none", "experiments": [], "arm_stats": []}
    # the diversity slider shows only when /recommendations takes the parameter
    from recommender.params import RecommendParams

    assert s["features"]["diversity"] == ("diversity" in RecommendParams.__dataclass_fields__)
    assert s["limits"]["max_sample"] == 200


def test_system_lists_experiments_and_arm_figures_when_present(world, client):
    world.collection("experiments").document("alpha-test").set(
        {"arms": ["a", "b"], "started_at": 5, "status": "running"})
    stats = world.collection(names.STATS).document("experiments")
    stats.set({"updated_at": 7})
    stats.collection("alpha-test").document("a").set({"requests": 10, "ctr": 0.25})
    stats.collection("alpha-test").document("_dedup").set({"counted": "[[1.0, \"ab\"]]"})
    x = get(client, "/console/api/system")["experiments"]
    assert x["state"] == "present"
    assert x["experiments"] == [{"id": "alpha-test", "arms": ["a", "b"], "started_at": 5,
                                 "status": "running"}]
    # the pipeline's dedup memory (up to ~200 KB) is bookkeeping, not a figure: never shipped
    assert x["arm_stats"] == [{"path": "stats/experiments", "updated_at": 7},
                              {"path": "stats/experiments/alpha-test/a", "requests": 10, "ctr": 0.25}]


# ---------------------------------------------------------------- user


def test_user_history_newest_first_with_attributes(client):
    t0 = time.time()
    u = get(client, "/console/api/user?user_id=alice")
    assert u["user_id"] == "alice" and u["event_count"] == 2 and u["embedding"] == "current"
    assert u["last_event_id"] == "e-alice-1" and u["last_event_ts"] == rd.CREATED_AT + 2
    assert u["since_last_event_s"] == pytest.approx(t0 - (rd.CREATED_AT + 2) / 1000, abs=5)
    assert u["updated_at"] == rd.CREATED_AT + 3000 and u["model_version"] == rd.V1
    assert u["history_length"] == 2
    assert [(h["item_id"], h["category"], h["brand"], h["title"], h["event_type"], h["in_index"])
            for h in u["history"]] == [("m1", "music", "acme", "item m1", "view", True),
                                       ("b1", "books", "acme", "item b1", "view", True)]
    assert u["history"][0]["timestamp"] == rd.CREATED_AT + 1
    assert get(client, "/console/api/user?user_id=carol")["embedding"] == "stale"
    assert get(client, "/console/api/user?user_id=dave")["embedding"] == "none"


@pytest.mark.parametrize(("query", "status", "parameter"), [
    ("", 400, "user_id"),
    ("?user_id=", 400, "user_id"),
    ("?user_id=a/b", 400, "user_id"),
    ("?user_id=" + "x" * 2000, 400, "user_id"),
    ("?user_id=a&user_id=b", 400, "user_id"),
    ("?user_id=alice&k=0", 400, "k"),
    ("?user_id=nobody", 404, "user_id"),
])
def test_user_bad_input_is_a_4xx_json_error(client, query, status, parameter):
    err = get(client, f"/console/api/user{query}", status)["error"]
    assert err["parameter"] == parameter and err["message"]


# ---------------------------------------------------------------- item


def test_item_is_recommended_to_the_users_the_strategy_ranks_it_for(client):
    it = get(client, "/console/api/item?item_id=b2&k=3&sample=10")
    assert it["item_id"] == "b2" and it["in_index"] and it["category"] == "books"
    assert it["in_stock"] is True and it["popularity"] == 50.0 and it["model_version"] == rd.V1
    assert it["attributes"]["brand"] == "acme" and it["attributes"]["title"] == "item b2"
    assert it["sample_size"] == 3 and it["k"] == 3
    # the same ranking /recommendations answers for each sampled user
    expected = []
    for user_id in ("alice", "carol", "dave"):
        body = get(client, f"/recommendations?user_id={user_id}&k=3")
        ranked = [i["item_id"] for i in body["items"]]
        if "b2" in ranked:
            item = body["items"][ranked.index("b2")]
            expected.append({"user_id": user_id, "rank": ranked.index("b2") + 1, "score": item["score"],
                             "cf_score": item["cf_score"], "cb_score": item["cb_score"],
                             "strategy": body["strategy"]})
    assert it["recommended_to"] == expected and it["recommended_count"] == len(expected)
    assert [h["user_id"] for h in expected][:1] == ["alice"]  # books axis: b2 is her first pick
    assert get(client, "/console/api/item?item_id=b2&k=3&sample=1")["sample_size"] == 1


@pytest.mark.parametrize(("query", "status", "parameter"), [
    ("", 400, "item_id"),
    ("?item_id=b1&sample=0", 400, "sample"),
    ("?item_id=b1&sample=201", 400, "sample"),
    ("?item_id=b1&sample=x", 400, "sample"),
    ("?item_id=b1&sample=1&sample=2", 400, "sample"),
    ("?item_id=b1&k=1000", 400, "k"),
    ("?item_id=..", 400, "item_id"),
    ("?item_id=zzz", 404, "item_id"),
])
def test_item_bad_input_is_a_4xx_json_error(client, query, status, parameter):
    err = get(client, f"/console/api/item{query}", status)["error"]
    assert err["parameter"] == parameter and err["message"]


def test_firestore_down_is_a_503_json_error_not_a_500(client, emulators):
    main = sys.modules["main"]
    real = main.CONSOLE._client

    def broken():
        from google.api_core.exceptions import ServiceUnavailable
        raise ServiceUnavailable("emulator down")

    main.CONSOLE._client = broken
    try:
        for url in ("/console/api/system", "/console/api/item?item_id=b1"):
            resp = client.get(url)
            assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "unavailable", url
    finally:
        main.CONSOLE._client = real
