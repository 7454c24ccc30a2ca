"""The id contract at the recommend function, on the Firestore emulator: a user with a
200-character id (accepted by ingest) is served; control characters are a 400 naming the parameter.
"""

from __future__ import annotations

import sys
import urllib.parse

import functions_framework
import pytest

from schemas import ids
from schemas.events import validate_event
from tests.integration import recommend_data as rd

pytestmark = pytest.mark.integration

LONG_USER = "u" * 200


@pytest.fixture
def client(firestore_client, tmp_path, monkeypatch):
    rd.publish_model(firestore_client, tmp_path, rd.make_snapshot())
    # users/{id} as the pipeline writes it for an event ingest accepted
    event = validate_event({"event_id": "e1", "event_type": "view", "user_id": LONG_USER,
                            "item_id": "b1", "timestamp": rd.CREATED_AT})
    rd.write_user(firestore_client, event.user_id, [event.item_id], [1.0, 0.0, 0.0, 0.0])
    rd.write_trending(firestore_client, [("m2", 9.0), ("g1", 6.0)])
    monkeypatch.setenv("REFRESH_SECONDS", "3600")
    app = functions_framework.create_app("recommend", str(rd.MAIN))
    assert sys.modules["main"].SERVICE.index is not None
    return app.test_client()


def test_a_200_character_user_id_is_served(client):
    resp = client.get("/recommendations?" + urllib.parse.urlencode({"user_id": LONG_USER, "k": 3}))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["user_id"] == LONG_USER and body["strategy"] == "personalized"
    served = [i["item_id"] for i in body["items"]]
    assert len(served) == 3 and "b1" not in served  # ranked for the user, history excluded
    resp = client.post("/recommendations", json={"user_id": LONG_USER, "k": 3})
    assert resp.status_code == 200 and resp.get_json()["strategy"] == "personalized"


@pytest.mark.parametrize(("path", "parameter"), [
    ("/similar-items?item_id=b1%00", "item_id"),
    ("/similar-items?item_id=b%7F1", "item_id"),
    ("/recommendations?user_id=u%0A1", "user_id"),
    ("/recommendations?session_items=b1,b2%01", "session_items"),
    ("/recommendations?user_id=" + "u" * (ids.MAX_ID_CHARS + 1), "user_id"),
])
def test_control_characters_and_overlong_ids_are_400(client, path, parameter):
    resp = client.get(path)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["parameter"] == parameter
    assert ("control characters" in error["message"]) != path.endswith("u" * 257)
