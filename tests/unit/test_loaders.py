"""Loaders on small hand-made fixture files (tests/fixtures/data/), and JSONL event files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.data import (
    DataError,
    generate_synthetic,
    load_dataset,
    load_events_file,
    load_movielens_100k,
    load_movielens_latest_small,
    load_user_item_lines,
    read_events_jsonl,
    write_events_jsonl,
)
from schemas.catalog import validate_item
from schemas.events import MIN_TIMESTAMP_MS, validate_event

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "data"


def _all_valid(ds) -> None:
    for ev in list(ds.events) + list(ds.test_events or []):
        assert validate_event(ev.to_dict()) == ev
        assert "/" not in ev.event_id
    for it in ds.items:
        assert validate_item(it.to_dict()) == it
    ts = [e.timestamp for e in ds.events]
    assert ts == sorted(ts)
    assert {e.item_id for e in ds.events} <= {it.item_id for it in ds.items}


def test_movielens_100k() -> None:
    ds = load_movielens_100k(FIXTURES / "ml-100k")
    _all_valid(ds)
    assert len(ds.events) == 5 and all(e.event_type == "view" for e in ds.events)
    items = ds.item_by_id()
    toy = items["10"]
    assert toy.category == "Animation" and toy.brand == "1990s"
    assert toy.tags == ("Animation", "Children's", "Comedy")
    assert items["20"].brand == "1940s" and items["20"].tags == ("Drama", "Romance", "War")
    assert items["30"].brand == "1980s"  # no release date: the year comes from the title
    # 1997-98 data is shifted forward by whole weeks past 2000-01-01, keeping the gaps.
    shift = ds.metadata["timestamp_shift_ms"]
    assert shift > 0 and shift % (7 * 86_400_000) == 0
    by_id = {(e.user_id, e.item_id): e.timestamp for e in ds.events}
    assert by_id[("1", "10")] == 881250949 * 1000 + shift
    assert by_id[("1", "20")] - by_id[("1", "10")] == 1000
    assert min(by_id.values()) >= MIN_TIMESTAMP_MS
    assert ds.events[0].event_id == f"ml-100k-3-30-{878887116 * 1000 + shift}"


def test_movielens_latest_small() -> None:
    ds = load_movielens_latest_small(FIXTURES / "ml-latest-small")
    _all_valid(ds)
    assert [(e.user_id, e.item_id) for e in ds.events] == [("1", "3"), ("1", "1"), ("7", "3"),
                                                           ("2", "1"), ("2", "50")]
    assert ds.events[0].timestamp == 964981247000
    items = ds.item_by_id()
    assert set(items) == {"1", "3", "50"}  # only items that appear in ratings
    assert items["50"].title == "Usual Suspects, The (1995)"
    assert items["50"].category == "Crime" and items["50"].tags == ("Crime", "Mystery", "Thriller")
    assert items["3"].updated_at == 964981247000  # first time the item was seen


def test_user_item_lines_with_test_split() -> None:
    ds = load_user_item_lines(FIXTURES / "lines" / "train.txt", FIXTURES / "lines" / "test.txt")
    _all_valid(ds)
    train = ds.interactions()
    test = ds.test_interactions()
    assert len(train) == 6 and len(test) == 4
    assert train.user_ids is test.user_ids and train.item_ids is test.item_ids
    assert "3" in train.user_ids  # a user only in test.txt
    pairs = {(train.user_ids[u], train.item_ids[i]) for u, i in zip(test.user_idx, test.item_idx)}
    assert pairs == {("0", "3"), ("1", "0"), ("1", "4"), ("3", "5")}
    # Synthesised times: one minute per position; test items come after the user's train items.
    t = {(e.user_id, e.item_id): e.timestamp for e in list(ds.events) + list(ds.test_events)}
    assert t[("0", "1")] - t[("0", "0")] == 60_000
    assert t[("0", "3")] == t[("0", "2")] + 60_000
    assert t[("1", "0")] == t[("1", "3")] + 60_000


def test_events_csv_with_items() -> None:
    ds = load_events_file(FIXTURES / "events-csv" / "events.csv")
    _all_valid(ds)
    ev = {(e.user_id, e.item_id): e for e in ds.events}
    assert ev[("alice", "sku-2")].timestamp == 1_700_000_060_000  # seconds -> ms
    assert ev[("alice", "sku-2")].event_type == "add_to_cart"
    assert ev[("bob", "sku-1")].timestamp == 1_700_000_100_000  # ISO-8601
    assert ev[("alice", "sku-1")].context == {"source": "web"}
    assert ev[("alice", "sku-1")].session_id == "s1"
    assert ev[("bob", "sku-1")].event_id == "events-csv-bob-sku-1-1700000100000"
    items = ds.item_by_id()
    assert items["sku-1"].tags == ("red", "shoe") and items["sku-2"].in_stock is False
    assert "sku-3" in items  # catalogue items without events are kept
    assert items["sku-9"].category == ""  # only in events: a minimal item


def test_events_jsonl_accepts_avro_json_and_plain_json() -> None:
    ds = load_dataset(str(FIXTURES / "events-jsonl"))
    _all_valid(ds)
    assert [e.event_id for e in ds.events] == ["e0", "e1", "e2"]
    assert ds.events[2].session_id == "s1" and ds.events[2].context == {"page": "home"}
    assert ds.item_by_id()["a"].category == "books"


def test_invalid_csv_row_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1700000000000\nu/2,i1,1700000000000\n"
                    "u3,i2,yesterday\n")
    with pytest.raises(DataError, match=r"events.csv:3: user_id: must not contain '/'"):
        load_events_file(path)
    ds = load_events_file(path, strict=False)
    assert len(ds.events) == 1
    assert [(r["line"], r["field"]) for r in ds.metadata["rejected"]] == [(3, "user_id"), (4, "timestamp")]


def test_missing_columns_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("user,item\nu1,i1\n")
    with pytest.raises(DataError, match="missing column"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match="neither a known data set"):
        load_dataset("no-such-data-set")
    with pytest.raises(DataError, match="not found"):
        load_dataset("gowalla", data_dir=str(tmp_path))


def test_named_data_set_from_data_dir(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "ml-latest-small").mkdir(parents=True)
    for name in ("ratings.csv", "movies.csv"):
        (root / "ml-latest-small" / name).write_bytes((FIXTURES / "ml-latest-small" / name).read_bytes())
    ds = load_dataset("ml-latest-small", data_dir=str(root))
    assert ds.name == "ml-latest-small" and len(ds.events) == 5


def test_autodetect_every_fixture_format() -> None:
    for sub, n in (("ml-100k", 5), ("ml-latest-small", 5), ("lines", 6), ("events-csv", 4)):
        assert len(load_dataset(str(FIXTURES / sub)).events) == n


def test_jsonl_round_trip(tmp_path: Path) -> None:
    ds = generate_synthetic(n_users=20, n_items=50, seed=3)
    for name in ("events.jsonl", "events.jsonl.gz"):
        path = tmp_path / "archive" / name
        assert write_events_jsonl(ds.events, path) == len(ds.events)
        assert read_events_jsonl(path) == list(ds.events)


def test_jsonl_bad_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"event_id":"a","event_type":"view","user_id":"u","item_id":"i",'
                    '"timestamp":1700000000000}\n{"event_id":"b","event_type":"click","user_id":"u",'
                    '"item_id":"i","timestamp":1700000000000}\nnot json\n')
    with pytest.raises(DataError, match=r"e.jsonl:2: event_type"):
        read_events_jsonl(path)
    ds = load_events_file(path, strict=False)
    assert len(ds.events) == 1
    assert [r["line"] for r in ds.metadata["rejected"]] == [2, 3]


def test_lazy_events_match_columns() -> None:
    ds = load_user_item_lines(FIXTURES / "lines" / "train.txt")
    inter = ds.interactions()
    assert len(ds.events) == len(inter) == 6
    assert ds.events[-1] == list(ds.events)[-1]
    assert [e.item_id for e in ds.events[1:3]] == [inter.item_ids[i] for i in inter.item_idx[1:3]]
    assert np.all(np.diff(inter.timestamps) >= 0)
    with pytest.raises(IndexError):
        ds.events[6]


def test_archive_directory_of_jsonl_files(tmp_path: Path) -> None:
    ds = generate_synthetic(n_users=10, n_items=40, seed=4)
    events = list(ds.events)
    half = len(events) // 2
    archive = tmp_path / "archive"
    write_events_jsonl(events[:half], archive / "2024" / "events-a-00000-of-00001.jsonl")
    # A redelivered event archived twice, and a compressed window file.
    write_events_jsonl(events[half - 1:], archive / "2024" / "events-b-00000-of-00001.jsonl.gz")
    loaded = load_dataset(str(archive))
    assert list(loaded.events) == events
    assert loaded.metadata["duplicates"] == 1
    assert loaded.name == "archive"
