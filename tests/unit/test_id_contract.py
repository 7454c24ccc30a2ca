"""One id contract (schemas/ids.py) on every path: ingest and the pipeline (validate_event /
parse_event), the recommend function's parameters and its OpenAPI file.

An id the write path accepts must be one the read path serves: the same ids pass or fail both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from apache_beam import pvalue
from apache_beam.io.gcp.pubsub import PubsubMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from httpfn.errors import InvalidParameter
from pipelines.streaming.parse import DEAD_LETTER, ParseEventFn
from recommender.config import Settings
from recommender.params import MAX_CATEGORY_CHARS, check_id, recommend_params, similar_params
from schemas import ids, names
from schemas.catalog import validate_item
from schemas.errors import InvalidRecord
from schemas.events import validate_event

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "functions" / "recommend" / "openapi.yaml"
NOW_MS = int(time.time() * 1000)

CONTROL = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x80", "\x85", "\x9f"]
BAD_IDS = ["", "   ", "u" * (ids.MAX_ID_CHARS + 1), "a/b", ".", "..", "__name__", "____",
           *(f"i{c}1" for c in CONTROL), "u\ud800"]
GOOD_IDS = ["u1", "u" * ids.MAX_ID_CHARS, "é" * ids.MAX_ID_CHARS, "__x", "x__", "___", "a.b",
            "user@example.com", "日本語", "a b", "\u200bzero-width"]


def event(**overrides: Any) -> dict[str, Any]:
    return {"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1",
            "timestamp": NOW_MS, **overrides}


def ingest_accepts(field: str, value: str) -> bool:
    try:
        validate_event(event(**{field: value}))
        return True
    except InvalidRecord:
        return False


def function_accepts(field: str, value: str) -> bool:
    try:
        if field == "item_id":
            similar_params({"item_id": [value]}, Settings())
        else:
            recommend_params({field: value}, Settings(), from_query=False)
        return True
    except InvalidParameter:
        return False


# ---------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("value", GOOD_IDS)
def test_valid_ids(value):
    assert ids.id_problem(value) is None and ids.check_id("user_id", value) == value


@pytest.mark.parametrize("value", BAD_IDS)
def test_invalid_ids_have_a_reason(value):
    with pytest.raises(InvalidRecord) as info:
        ids.check_id("item_id", value)
    assert info.value.field == "item_id" and info.value.reason == ids.id_problem(value)


@pytest.mark.parametrize("char", CONTROL)
def test_control_characters_are_named_in_the_reason(char):
    assert ids.id_problem(f"ab{char}") == (f"must not contain control characters "
                                           f"(U+{ord(char):04X} at character 2)")


def test_the_longest_id_fits_firestore_and_pubsub_attributes():
    longest = "\U0001F600" * ids.MAX_ID_CHARS  # 4 UTF-8 bytes each
    assert ids.id_problem(longest) is None
    assert len(longest.encode("utf-8")) == ids.MAX_ID_UTF8_BYTES <= 1024 <= 1500  # Pub/Sub, Firestore


# ---------------------------------------------------------------------------- every path agrees


@pytest.mark.parametrize("value", GOOD_IDS + BAD_IDS)
@pytest.mark.parametrize("field", ["user_id", "item_id", "session_items"])
def test_ingest_and_function_accept_the_same_ids(field, value):
    write_field = "item_id" if field == "session_items" else field
    assert ingest_accepts(write_field, value) == function_accepts(field, [value] if field ==
                                                                   "session_items" else value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=ids.MAX_ID_CHARS + 2) | st.text(st.characters(max_codepoint=0xA0), max_size=6))
def test_no_id_is_stored_and_then_refused(value):
    for field in ("user_id", "item_id"):
        assert ingest_accepts(field, value) == function_accepts(field, value), (field, value)
    item = {"item_id": value, "title": "t", "category": "c", "brand": "b", "price": 1.0, "tags": [],
            "in_stock": True, "updated_at": NOW_MS}
    try:
        validate_item(item)
        catalog_ok = True
    except InvalidRecord:
        catalog_ok = False
    assert catalog_ok == function_accepts("item_id", value)


def test_the_function_names_the_parameter_and_the_reason():
    with pytest.raises(InvalidParameter) as info:
        check_id("item_id", "i\x00")
    assert info.value.parameter == "item_id"
    assert "must not contain control characters (U+0000 at character 1)" in str(info.value)
    with pytest.raises(InvalidParameter) as info:
        recommend_params({"session_items": ["i1", "i\x07"]}, Settings(), from_query=False)
    assert info.value.parameter == "session_items"


def test_a_200_character_user_id_passes_ingest_pipeline_and_function():
    user = "u" * 200
    assert validate_event(event(user_id=user)).user_id == user
    assert recommend_params({"user_id": [user]}, Settings(), from_query=True).user_id == user


@pytest.mark.parametrize(("field", "value"), [("item_id", "i\x00"), ("user_id", "u\x1f"),
                                              ("event_id", "e\x7f"), ("item_id", "u" * 257)])
def test_the_pipeline_dead_letters_a_bad_id_with_the_reason(field, value):
    data = json.dumps(event(**{field: value})).encode()
    [out] = list(ParseEventFn().process(PubsubMessage(data, {"origin": "test"})))
    assert isinstance(out, pvalue.TaggedOutput) and out.tag == DEAD_LETTER
    attrs = out.value.attributes
    assert out.value.data == data and attrs["origin"] == "test"
    assert attrs[names.DLQ_FIELD_ATTR] == field
    assert attrs[names.DLQ_REASON_ATTR] == ids.id_problem(value)


# ---------------------------------------------------------------------------- OpenAPI


def _id_schemas(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every schema in the spec that describes one id (user_id, item_id, a session item)."""
    params = spec["components"]["parameters"]
    similar = spec["paths"]["/similar-items"]["get"]["parameters"]
    request = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    return [params["UserId"]["schema"],
            next(p["schema"] for p in similar if p.get("name") == "item_id"),
            request["user_id"], request["session_items"]["oneOf"][1]["items"]]


def test_openapi_limits_are_the_contracts_constants():
    spec = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    for schema in _id_schemas(spec):
        assert (schema["minLength"], schema["maxLength"]) == (ids.MIN_ID_CHARS, ids.MAX_ID_CHARS), schema
    request = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    query = {p["name"]: p for p in spec["paths"]["/recommendations"]["get"]["parameters"] if "name" in p}
    for schema in (query["category"]["schema"]["items"], *request["category"]["oneOf"][:1],
                   request["category"]["oneOf"][1]["items"]):
        assert schema["maxLength"] == MAX_CATEGORY_CHARS
    n = Settings().max_session_items
    assert request["session_items"]["oneOf"][1]["maxItems"] == n
    for schema in (query["session_items"]["schema"], request["session_items"]["oneOf"][0]):
        assert schema["maxLength"] >= n * (ids.MAX_ID_CHARS + 1) - 1  # n ids and the commas
    assert f"1-{ids.MAX_ID_CHARS} characters" in spec["info"]["description"]


@pytest.mark.parametrize("item_id", ["a,b", " x", "x ", "a, b"])
def test_an_id_with_commas_or_edge_spaces_is_usable_in_the_session_items_array(item_id):
    assert ingest_accepts("item_id", item_id)
    got = recommend_params({"session_items": [item_id, "i2"]}, Settings(), from_query=False)
    assert got.session_items == (item_id, "i2")
    # the comma-separated forms split and strip, as documented
    for values, from_query in (({"session_items": "a, b"}, False), ({"session_items": ["a, b"]}, True)):
        assert recommend_params(values, Settings(), from_query).session_items == ("a", "b")
