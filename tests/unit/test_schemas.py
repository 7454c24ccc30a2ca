"""Contracts in schemas/: validation (incl. hostile input), encodings, Firestore codecs,
the content encoder and the item-index snapshot."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import numpy as np
import pytest
from google.cloud.firestore_v1.vector import Vector
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.catalog import CatalogItem, catalog_schema, parse_item, validate_item
from schemas.content import ContentEncoder, SparseRows
from schemas.errors import InvalidRecord
from schemas.events import (
    MAX_CONTEXT_ENTRIES,
    MIN_TIMESTAMP_MS,
    ProductEvent,
    event_schema,
    parse_event,
    validate_event,
)
from schemas.firestore import (
    CurrentModelDoc,
    HistoryEntry,
    ItemDoc,
    ModelDoc,
    TrendingDoc,
    TrendingEntry,
    UserDoc,
    pack_history,
    unpack_history,
)
from schemas.index_snapshot import IndexSnapshot

NOW_MS = int(time.time() * 1000)
DAY_MS = 24 * 3600 * 1000


def event(**overrides: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1",
                           "timestamp": NOW_MS}
    rec.update(overrides)
    return rec


def item(**overrides: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"item_id": "i1", "title": "Red shoe", "category": "shoes", "brand": "acme",
                           "price": 19.5, "tags": ["red", "leather"], "in_stock": True,
                           "updated_at": NOW_MS}
    rec.update(overrides)
    return rec


def without(rec: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != key}


def as_datetime(ms: int) -> datetime:
    """How fastavro reads a ``timestamp-millis`` value."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def rejected(func, value) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        func(value)
    return info.value


# ---------------------------------------------------------------------------- events: valid


def test_plain_and_avro_json_are_the_same_event():
    plain = event(session_id="s1", context={"page": "home"})
    avro = event(session_id={"string": "s1"}, context={"map": {"page": "home"}})
    a, b = parse_event(json.dumps(plain)), parse_event(json.dumps(avro).encode())
    assert a == b == ProductEvent("e1", "view", "u1", "i1", NOW_MS, "s1", {"page": "home"})


@pytest.mark.parametrize("context", [{"null": ""}, {"map": "x"}, {"string": "x"}])
def test_a_plain_one_entry_map_named_like_a_union_branch_stays_a_map(context):
    # found by test_event_round_trips: {"null": ""} was read as Avro JSON's wrapped union
    ev = validate_event(event(context=context))
    assert ev.context == context
    assert parse_event(ev.to_pubsub_data()) == ev


def test_optional_fields_may_be_missing_or_null():
    assert validate_event(event()).session_id is None
    assert validate_event(event(session_id=None, context=None)).context is None


@pytest.mark.parametrize("event_type", ["view", "add_to_cart", "purchase"])
def test_every_event_type_is_accepted(event_type):
    assert validate_event(event(event_type=event_type)).event_type == event_type


def test_timestamp_limits_are_inclusive():
    assert validate_event(event(timestamp=MIN_TIMESTAMP_MS)).timestamp == MIN_TIMESTAMP_MS
    assert validate_event(event(timestamp=NOW_MS + DAY_MS - 60_000)).timestamp > NOW_MS


# ---------------------------------------------------------------------------- events: hostile


LONG = "x" * 10_000
NESTED = {"a": [{"b": [1, 2, {"c": None}]}, "d"]}


@pytest.mark.parametrize("record, field, reason", [
    (event(event_id=1), "event_id", "got int 1, expected string"),
    (event(user_id=None), "user_id", "got NoneType None, expected string"),
    (event(item_id=["i1"]), "item_id", "got list ['i1'], expected string"),
    (event(event_id=NESTED), "event_id",
     "got dict {'a': [{'b': [1, 2, {'c': None}]}, 'd']}, expected string"),
    (event(event_type="click"), "event_type", "expected one of view, add_to_cart, purchase"),
    (event(event_type="VIEW"), "event_type", "expected one of view, add_to_cart, purchase"),
    (without(event(), "user_id"), "user_id", "missing required field"),
    (without(event(), "timestamp"), "timestamp", "missing required field"),
    (event(colour="red"), "colour", "unknown field"),
    (event(timestamp="1700000000000"), "timestamp", "got str '1700000000000', expected long"),
    (event(timestamp=1.5e12), "timestamp", "got float 1500000000000.0, expected long"),
    (event(timestamp=True), "timestamp", "got bool True, expected long"),
    (event(timestamp=float("nan")), "timestamp", "got float nan, expected long"),
    (event(timestamp=float("inf")), "timestamp", "got float inf, expected long"),
    (event(timestamp=2**63), "timestamp", "expected long (timestamp-millis)"),
    (event(timestamp=-1), "timestamp", "-1 is before 2000-01-01"),
    (event(timestamp=1_700_000_000), "timestamp", "before 2000-01-01 (epoch milliseconds expected)"),
    (event(timestamp=NOW_MS + 2 * DAY_MS), "timestamp", "more than a day in the future"),
    (event(event_id=""), "event_id", "must not be empty"),
    (event(user_id="   "), "user_id", "must not be empty"),
    (event(item_id="a/b"), "item_id", "must not contain '/'"),
    (event(user_id=".."), "user_id", "must not contain '/', be '.' or '..'"),
    (event(event_id="__name__"), "event_id", "match '__...__'"),
    (event(item_id="i\x00"), "item_id", "must not contain control characters (U+0000 at character 1)"),
    (event(user_id="u\n1"), "user_id", "must not contain control characters (U+000A"),
    (event(item_id="i\x7f"), "item_id", "must not contain control characters (U+007F"),
    (event(event_id="e\x85"), "event_id", "must not contain control characters (U+0085"),
    (event(session_id="s\x00"), "session_id", "must not contain control characters"),
    (event(user_id=LONG), "user_id", "longer than 256 characters"),
    (event(session_id="s" * 257), "session_id", "longer than 256 characters"),
    (event(session_id=5), "session_id", "got int 5, expected null or string"),
    (event(session_id={"int": 5}), "session_id", "expected null or string"),
    (event(context=["a"]), "context", "expected null or map of string"),
    (event(context={"k": 1}), "context", "expected null or map of string"),
    (event(context={"k": {"nested": "x"}}), "context", "expected null or map of string"),
    (event(context={f"k{i}": "v" for i in range(MAX_CONTEXT_ENTRIES + 1)}), "context",
     "more than 32 entries"),
    (event(context={"k": LONG}), "context", "key or value too long"),
    (event(context={LONG: "v"}), "context", "key or value too long"),
    (event(context={"": "v"}), "context", "keys must not be empty"),
    (event(user_id="u\ud800"), "user_id", "not valid Unicode: lone surrogate at character 1"),
    (event(context={"k": "\udfff"}), "context", "not valid Unicode"),
])
def test_invalid_event_names_field_and_reason(record, field, reason):
    err = rejected(validate_event, record)
    assert err.field == field
    assert reason in err.reason
    assert str(err) == f"{field}: {err.reason}"
    assert err.to_dict() == {"field": field, "reason": err.reason, "error": str(err)}


def test_unknown_field_with_a_huge_name_is_reported_truncated():
    err = rejected(validate_event, event(**{"k" * 5000: 1}))
    assert err.reason == "unknown field" and len(err.field) == 64 and err.field.endswith("...")


def test_reason_does_not_echo_huge_values():
    err = rejected(validate_event, event(event_id=[LONG]))
    assert err.field == "event_id" and len(err.reason) < 200


@pytest.mark.parametrize("value", [None, [], "event", 42, [event()]])
def test_non_object_records_are_rejected(value):
    err = rejected(validate_event, value)
    assert err.field == "payload" and "expected a JSON object" in err.reason


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b" \n\t", "empty"),
    (b"\xff\xfe\x00", "not valid UTF-8 at byte 0"),
    (b'{"event_id": "caf\xe9"}', "not valid UTF-8 at byte 17"),
    (b"{", "not JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'"e1"', "expected a JSON object, got str"),
    (b"null", "expected a JSON object, got NoneType"),
    (b"[" * 30_000 + b"]" * 30_000, "not JSON"),  # nesting deeper than the decoder allows
    (b"x" * (64 * 1024 + 1), "too large: 65537 bytes > 65536"),
    ("x" * (64 * 1024 + 1), "too large: more than 65536 bytes"),
])
def test_unusable_payloads(data, reason):
    err = rejected(parse_event, data)
    assert err.field == "payload"
    assert reason in err.reason


@pytest.mark.parametrize("text, field, reason", [
    ('{"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1", "timestamp": NaN}',
     "timestamp", "got float nan"),
    ('{"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1", "timestamp": 1e400}',
     "timestamp", "got float inf"),
    ('{"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1", "timestamp": true}',
     "timestamp", "got bool True"),
    ('{"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1", "timestamp": 1, '
     '"context": {"a": [[[[["deep"]]]]]}}', "context", "expected null or map of string"),
])
def test_hostile_json_values(text, field, reason):
    err = rejected(parse_event, text)
    assert err.field == field
    assert reason in err.reason


def test_event_just_under_the_payload_limit_is_still_judged_on_its_fields():
    data = json.dumps(event(user_id="u" * 60_000)).encode()
    assert len(data) < 64 * 1024
    err = rejected(parse_event, data)
    assert err.field == "user_id" and "longer than 256" in err.reason


# ---------------------------------------------------------------------------- events: encoding


def test_pubsub_body_is_plain_json_with_optional_fields_only_when_set():
    ev = validate_event(event(session_id="s1", context={"a": "b"}))
    body = json.loads(ev.to_pubsub_data())
    assert body == {**event(), "session_id": "s1", "context": {"a": "b"}}  # plain, not wrapped
    assert ev.pubsub_attributes() == {"event_id": "e1", "event_type": "view", "user_id": "u1"}
    assert json.loads(validate_event(event()).to_pubsub_data()) == event()  # the minimal event


def test_avro_json_with_wrapped_unions_is_still_accepted():
    ev = validate_event(event(session_id="s1", context={"a": "b"}))
    buf = io.StringIO()
    fastavro.json_writer(buf, event_schema(), [ev.to_dict()])
    assert json.loads(buf.getvalue())["session_id"] == {"string": "s1"}
    assert parse_event(buf.getvalue().strip()) == ev


def test_an_event_from_before_recommendation_id_still_validates():
    """The Avro change is backwards compatible: old events (and archive lines) parse unchanged."""
    old = validate_event(event())
    assert old.recommendation_id is None and "recommendation_id" not in old.to_dict()
    assert validate_event(event(recommendation_id="r-1")).recommendation_id == "r-1"
    with pytest.raises(InvalidRecord) as e:
        validate_event(event(recommendation_id="bad\x00id"))
    assert e.value.field == "recommendation_id"


ID = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1,
             max_size=40).filter(lambda s: s.strip() and s not in (".", "..")
                                 and not (len(s) >= 4 and s.startswith("__") and s.endswith("__")))
SHORT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
SESSION = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)

EVENTS = st.builds(
    ProductEvent, event_id=ID, event_type=st.sampled_from(["view", "add_to_cart", "purchase"]),
    user_id=ID, item_id=ID, timestamp=st.integers(MIN_TIMESTAMP_MS, NOW_MS),
    session_id=st.none() | SESSION,
    context=st.none() | st.dictionaries(SHORT.filter(bool), SHORT, max_size=MAX_CONTEXT_ENTRIES),
    recommendation_id=st.none() | ID)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_event_round_trips(ev):
    full = dataclasses.asdict(ev)
    if ev.recommendation_id is None:  # the later optional field is left out when unset
        del full["recommendation_id"]
    assert ev.to_dict() == full  # every field, in schema order
    assert list(ev.to_dict()) == [f["name"] for f in event_schema()["fields"]][:len(full)]
    assert parse_event(ev.to_pubsub_data()) == ev
    assert validate_event(ev.to_dict()) == ev
    assert parse_event(json.dumps(ev.to_dict())) == ev


# ---------------------------------------------------------------------------- catalogue items


def test_valid_item_and_int_price():
    it = validate_item(item(price=20))
    assert it == CatalogItem("i1", "Red shoe", "shoes", "acme", 20.0, ("red", "leather"), True, NOW_MS)
    assert isinstance(it.price, float)


@pytest.mark.parametrize("record, field, reason", [
    (item(price=float("nan")), "price", "must be a finite number >= 0, got nan"),
    (item(price=float("inf")), "price", "must be a finite number >= 0, got inf"),
    (item(price=-1.0), "price", "must be a finite number >= 0, got -1.0"),
    (item(price="9.99"), "price", "got str '9.99', expected double"),
    (item(price=True), "price", "expected double"),
    (item(in_stock="yes"), "in_stock", "got str 'yes', expected boolean"),
    (item(tags="red"), "tags", "expected array of string"),
    (item(tags=["ok", 3]), "tags", "expected array of string"),
    (item(tags=[f"t{i}" for i in range(65)]), "tags", "more than 64 tags"),
    (item(tags=["t" * 1025]), "tags", "a tag is longer than 1024 characters"),
    (item(title="t" * 1025), "title", "longer than 1024 characters"),
    (item(item_id="a/b"), "item_id", "must not contain '/'"),
    (item(item_id=""), "item_id", "must not be empty"),
    (item(updated_at="now"), "updated_at", "expected long (timestamp-millis)"),
    (without(item(), "brand"), "brand", "missing required field"),
    (item(colour="red"), "colour", "unknown field"),
    (item(title="\ud83d"), "title", "not valid Unicode"),
])
def test_invalid_item_names_field_and_reason(record, field, reason):
    err = rejected(validate_item, record)
    assert err.field == field
    assert reason in err.reason


def test_item_payload_errors():
    assert rejected(parse_item, b"\x80").field == "payload"
    assert rejected(parse_item, b"[]").reason == "expected a JSON object, got list"


ITEMS = st.builds(
    CatalogItem, item_id=ID, title=SHORT, category=SHORT, brand=SHORT,
    price=st.floats(0, 1e9, allow_nan=False, allow_infinity=False),
    tags=st.lists(SHORT, max_size=10).map(tuple), in_stock=st.booleans(),
    updated_at=st.integers(0, NOW_MS))


@settings(max_examples=200, deadline=None)
@given(ITEMS)
def test_item_round_trips(it):
    assert parse_item(it.to_pubsub_data()) == it
    assert validate_item(it.to_dict()) == it
    [decoded] = list(fastavro.json_reader(io.StringIO(it.to_pubsub_data().decode()), catalog_schema()))
    assert decoded == {**it.to_dict(), "updated_at": as_datetime(it.updated_at)}


# ---------------------------------------------------------------------------- Firestore codecs


CAT_ITEM = CatalogItem("i1", "Red shoe", "shoes", "acme", 19.5, ("red",), False, NOW_MS)


@pytest.mark.parametrize("doc", [
    HistoryEntry("e1", "i1", "purchase", NOW_MS),
    UserDoc("u1", (HistoryEntry("e1", "i1", "view", NOW_MS - 5),
                   HistoryEntry("e2", "i2", "purchase", NOW_MS)),
            last_event_id="e2", last_event_ts=NOW_MS, updated_at=NOW_MS + 3, model_version="v1",
            embedding=(0.25, -1.5, 3.0), event_count=2),
    UserDoc("u2", (), last_event_id="", last_event_ts=0, updated_at=0),
    ItemDoc(CAT_ITEM, embedding=(0.1, 0.2), content_vector=(1.0, 0.0, 0.0), model_version="v1",
            popularity=0.75, indexed_at=NOW_MS),
    ItemDoc(CAT_ITEM),
    ModelDoc("v1", "ready", NOW_MS, "gs://b/models/v1", "gs://b/models/v1/item_index.npz", dim=32,
             item_count=1000, params={"epochs": 3, "lr": 0.1}, metrics={"recall@10": 0.31},
             parent_version="v0"),
    ModelDoc("v0", "publishing", NOW_MS, "/tmp/m/v0", "/tmp/m/v0/item_index.npz", 8, 10),
    CurrentModelDoc("v1", "gs://b/models/v1", "gs://b/models/v1/item_index.npz", NOW_MS),
    TrendingDoc((TrendingEntry("i1", 10, 2, 1, 13.5), TrendingEntry("i2", 3, 0, 0, 3.0)),
                window_start=NOW_MS - 3_600_000, window_end=NOW_MS, updated_at=NOW_MS),
    TrendingDoc((), 0, 0, 0),
], ids=lambda d: type(d).__name__)
def test_firestore_round_trip(doc):
    stored = doc.to_document()
    assert type(doc).from_document(stored) == doc
    assert type(doc).from_document(json.loads(json.dumps(stored, default=list))) == doc


def test_embeddings_are_stored_as_firestore_vectors_and_read_from_lists():
    user = UserDoc("u1", (), "", 0, 0, embedding=(1.0, 2.0))
    assert isinstance(user.to_document()["embedding"], Vector)
    assert list(user.to_document()["embedding"]) == [1.0, 2.0]
    it = ItemDoc(CAT_ITEM, embedding=(0.5,), content_vector=(1.0,))
    doc = it.to_document()
    assert isinstance(doc["embedding"], Vector) and doc["content_vector"] == [1.0]
    assert {k: doc[k] for k in CAT_ITEM.to_dict()} == CAT_ITEM.to_dict()
    doc["embedding"] = [0.5]
    assert ItemDoc.from_document(doc) == it
    assert UserDoc("u", (), "", 0, 0).to_document()["embedding"] is None


def test_user_history_is_stored_as_one_json_string_of_rows_oldest_first():
    user = UserDoc("u1", (HistoryEntry("e1", "i1", "view", NOW_MS - 5),
                          HistoryEntry("é2", "i\"2", "purchase", NOW_MS)), "é2", NOW_MS, NOW_MS)
    stored = user.to_document()["history"]
    assert isinstance(stored, str)
    assert json.loads(stored) == [["e1", "i1", "view", NOW_MS - 5], ["é2", 'i"2', "purchase", NOW_MS]]
    assert stored == pack_history(user.history) and " " not in stored  # compact separators
    assert unpack_history(stored) == user.history
    assert unpack_history(stored.encode()) == user.history  # a bytes value reads the same
    assert UserDoc("u", (), "", 0, 0).to_document()["history"] == "[]"


def test_user_doc_reads_the_older_list_of_maps_history():
    entries = (HistoryEntry("e1", "i1", "view", NOW_MS - 5), HistoryEntry("e2", "i2", "purchase", NOW_MS))
    old = {"user_id": "u1", "history": [h.to_document() for h in entries], "last_event_id": "e2",
           "last_event_ts": NOW_MS, "updated_at": NOW_MS, "model_version": "v1",
           "embedding": Vector([0.5, 1.0]), "event_count": 2}
    assert old["history"][0] == {"event_id": "e1", "item_id": "i1", "event_type": "view",
                                 "timestamp": NOW_MS - 5}
    expected = UserDoc("u1", entries, "e2", NOW_MS, NOW_MS, "v1", (0.5, 1.0), 2)
    assert UserDoc.from_document(old) == expected
    assert UserDoc.from_document({**old, "history": expected.to_document()["history"]}) == expected
    for missing in (None, [], ""):
        assert UserDoc.from_document({**old, "history": missing}).history == ()


@pytest.mark.parametrize("bad", ["{", '{"e1": 1}', '[["e1", "i1", "view"]]', '[{"event_id": "e1"}]',
                                 '[["e1", "i1", "view", "soon"]]', "[1]"])
def test_malformed_packed_history_raises_a_value_error(bad):
    with pytest.raises((ValueError, TypeError)):
        UserDoc.from_document({"user_id": "u1", "history": bad})


# ---------------------------------------------------------------------------- content encoder


def _cat(item_id: str, category: str, brand: str, price: float, tags: tuple[str, ...]) -> CatalogItem:
    return CatalogItem(item_id, item_id, category, brand, price, tags, True, NOW_MS)


CATALOGUE = [_cat("a", "shoes", "acme", 10.0, ("red", "leather")),
             _cat("b", "shoes", "zeta", 20.0, ("red",)),
             _cat("c", "bags", "acme", 30.0, ("blue",)),
             _cat("d", "hats", "acme", 40.0, ())]


def test_encoder_fit_orders_vocabularies_by_frequency_then_name():
    enc = ContentEncoder.fit(CATALOGUE, price_buckets=2)
    assert enc.categories == ["shoes", "bags", "hats"]
    assert enc.brands == ["acme", "zeta"]
    assert enc.tags == ["red", "blue", "leather"]
    assert enc.price_edges == [25.0]
    assert enc.dim == 3 + 2 + 2 + 3


def test_encoder_vector_checked_by_hand():
    enc = ContentEncoder.fit(CATALOGUE, price_buckets=2)
    # layout: [shoes bags hats | acme zeta | price<25 price>=25 | red blue leather]
    raw = np.array([1.0, 0, 0, 0.7, 0, 0.3, 0, 0.5 / math.sqrt(2), 0, 0.5 / math.sqrt(2)])
    np.testing.assert_allclose(enc.encode(CATALOGUE[0]), raw / np.linalg.norm(raw), rtol=1e-6)
    unknown = _cat("x", "toys", "nobody", 100.0, ("green",))
    expected = np.zeros(enc.dim)
    expected[6] = 1.0  # only the price bucket is known
    np.testing.assert_allclose(enc.encode(unknown), expected)
    assert enc.encode_many(CATALOGUE).dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(enc.encode_many(CATALOGUE), axis=1), 1.0, rtol=1e-6)


def test_encoder_json_round_trip(tmp_path):
    enc = ContentEncoder.fit(CATALOGUE, price_buckets=3)
    again = ContentEncoder.from_json(enc.to_json())
    assert (again.categories, again.brands, again.tags, again.price_edges, again.weights) == (
        enc.categories, enc.brands, enc.tags, enc.price_edges, enc.weights)
    np.testing.assert_array_equal(again.encode_many(CATALOGUE), enc.encode_many(CATALOGUE))
    enc.save(tmp_path / "enc.json")
    np.testing.assert_array_equal(ContentEncoder.load(tmp_path / "enc.json").encode_many(CATALOGUE),
                                  enc.encode_many(CATALOGUE))


# ---------------------------------------------------------------------------- index snapshot


def _snapshot(n: int = 4, **overrides: Any) -> IndexSnapshot:
    rng = np.random.default_rng(0)
    fields: dict[str, Any] = dict(
        version="v1", created_at=NOW_MS, item_ids=np.array([f"i{k}" for k in range(n)]),
        embeddings=rng.normal(size=(n, 8)).astype(np.float32),
        content=rng.random((n, 5)).astype(np.float32),
        categories=np.array(["shoes", "bags", "hats", "shoes"][:n]),
        in_stock=np.array([True, False, True, True][:n]),
        popularity=np.linspace(0, 1, n).astype(np.float32))
    fields.update(overrides)
    return IndexSnapshot(**fields)


def test_index_snapshot_round_trip(tmp_path):
    snap = _snapshot()
    path = tmp_path / "item_index.npz"
    snap.save(path)
    for again in (IndexSnapshot.load(path), IndexSnapshot.from_bytes(snap.to_bytes())):
        assert (again.version, again.created_at) == ("v1", NOW_MS)
        for name in ("item_ids", "embeddings", "categories", "in_stock", "popularity"):
            np.testing.assert_array_equal(getattr(again, name), getattr(snap, name))
        np.testing.assert_array_equal(again.content.to_dense(), snap.content.to_dense())
        assert again.embeddings.dtype == np.float32 and again.in_stock.dtype == bool


@pytest.mark.parametrize("name", ["embeddings", "content", "categories", "in_stock", "popularity"])
def test_index_snapshot_rejects_mismatched_rows(name):
    good = _snapshot()
    short = good.content.to_dense()[:3] if name == "content" else getattr(good, name)[:3]
    with pytest.raises(ValueError, match=f"{name} has 3 rows, item_ids has 4"):
        _snapshot(**{name: short})


def test_index_snapshot_stores_content_sparse(tmp_path):
    dense = np.zeros((4, 6), dtype=np.float32)
    dense[0, [1, 4]], dense[2, 5], dense[3, 0] = [0.6, 0.8], 1.0, 1.0  # row 1 all zeros
    snap = _snapshot(content=dense)
    assert isinstance(snap.content, SparseRows) and snap.content.shape == (4, 6)
    path = tmp_path / "item_index.npz"
    snap.save(path)
    with np.load(path) as z:
        assert "content" not in z.files and int(z["content_dim"]) == 6
        assert z["content_indptr"].tolist() == [0, 2, 2, 3, 4]
        assert z["content_indices"].dtype == np.int32 and z["content_data"].dtype == np.float32
    np.testing.assert_array_equal(IndexSnapshot.load(path).content.to_dense(), dense)


def test_index_snapshot_loads_an_old_dense_snapshot(tmp_path):
    """A snapshot written before content was stored sparse (a dense ``content`` array) still loads."""
    snap = _snapshot()
    dense = snap.content.to_dense()
    path = tmp_path / "item_index.npz"
    np.savez(path, version=np.array(snap.version), created_at=np.array(snap.created_at),
             item_ids=snap.item_ids, embeddings=snap.embeddings, content=dense,
             categories=snap.categories, in_stock=snap.in_stock, popularity=snap.popularity)
    for old in (IndexSnapshot.load(path), IndexSnapshot.from_bytes(path.read_bytes())):
        assert old.version == "v1" and old.content.nnz == np.count_nonzero(dense)
        np.testing.assert_array_equal(old.content.to_dense(), dense)
        np.testing.assert_array_equal(old.embeddings, snap.embeddings)
