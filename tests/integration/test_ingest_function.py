"""The ingest function, loaded by functions-framework, publishing to the real Pub/Sub emulator."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from schemas.events import parse_event
from tests.conftest import pull_all

pytestmark = pytest.mark.integration

SOURCE = str(Path(__file__).resolve().parents[2] / "functions" / "ingest" / "main.py")
NOW_MS = int(time.time() * 1000)


def event(i: int, **kw) -> dict:
    rec = {"event_id": f"h{i}", "event_type": ("view", "add_to_cart", "purchase")[i % 3],
           "user_id": f"u{i % 11}", "item_id": f"i{i % 17}", "timestamp": NOW_MS - i}
    rec.update(kw)
    return rec


def make_client(monkeypatch, project: str, topic: str):
    import functions_framework

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    monkeypatch.setenv("EVENTS_TOPIC", topic)
    monkeypatch.setenv("PUBLISH_TIMEOUT_S", "10")
    return functions_framework.create_app(target="ingest", source=SOURCE).test_client()


def test_valid_events_arrive_intact_invalid_ones_are_rejected(emulators, pubsub_topic, monkeypatch):
    topic, sub = pubsub_topic
    client = make_client(monkeypatch, emulators.project, topic)

    only_bad = client.post("/", json=[event(90, timestamp=-1), event(91, item_id="")])
    assert only_bad.status_code == 400
    error = only_bad.get_json()["error"]
    assert error["code"] == "invalid_parameter"
    assert [(e["index"], e["field"]) for e in error["errors"]] == [(0, "timestamp"), (1, "item_id")]

    single = event(0, session_id="s0", context={"ref": "email"})
    assert client.post("/", json=single).status_code == 202
    batch = [event(i) for i in range(1, 400)]
    batch[10] = event(11, event_type="wishlist")
    batch[20] = {"event_id": "h21", "event_type": "view"}
    batch[30] = event(31, session_id={"string": "avro-json"})
    resp = client.post("/", data=json.dumps(batch), content_type="application/json")
    assert resp.status_code == 202
    body = resp.get_json()
    assert (body["accepted"], body["rejected"]) == (397, 2)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(10, "event_type"), (20, "user_id")]

    valid = [single] + [r for i, r in enumerate(batch) if i not in (10, 20)]
    assert body["event_ids"] == [r["event_id"] for r in valid[1:]]
    messages = pull_all(sub, expected=len(valid), timeout_s=30)
    received = {m.attributes["event_id"]: m for m in messages}
    assert len(messages) == len(received) == len(valid)  # nothing lost, nothing twice
    assert set(received) == {r["event_id"] for r in valid}  # and no invalid one
    for rec in valid:
        expected = parse_event(json.dumps(rec))
        msg = received[rec["event_id"]]
        assert msg.data == expected.to_pubsub_data()
        assert dict(msg.attributes) == expected.pubsub_attributes()
    assert parse_event(received["h31"].data).session_id == "avro-json"
    assert parse_event(received["h0"].data).context == {"ref": "email"}


def test_publish_failure_is_503_listing_unpublished_events(emulators, monkeypatch):
    client = make_client(monkeypatch, emulators.project, "topic-that-does-not-exist")
    resp = client.post("/", json=[event(1), event(2), event(3, user_id="a/b")])
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    error = resp.get_json()["error"]
    assert error["code"] == "unavailable"
    assert error["not_published"] == ["h1", "h2"] and error["event_ids"] == []
    assert error["accepted"] == 0 and error["rejected"] == 1
    assert "Traceback" not in resp.get_data(as_text=True)


def test_healthz_names_the_topic(emulators, monkeypatch):
    client = make_client(monkeypatch, emulators.project, "product-events")
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json()["topic"] == f"projects/{emulators.project}/topics/product-events"
