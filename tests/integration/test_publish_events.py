"""The publisher against the real Pub/Sub emulator: what is published arrives intact,
invalid records are rejected with their reasons, failures are counted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipelines.data import generate_synthetic
from schemas.catalog import parse_item
from schemas.events import ProductEvent, parse_event
from scripts import publish_events as pe
from tests.conftest import pull_all

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)


def by_id(messages) -> dict[str, tuple[bytes, dict[str, str]]]:
    out = {}
    for m in messages:
        out[m.attributes["event_id"]] = (m.data, dict(m.attributes))
    assert len(out) == len(messages), "a message arrived twice"
    return out


def test_generated_events_arrive_intact(pubsub_topic):
    topic, sub = pubsub_topic
    events = list(generate_synthetic(n_users=20, n_items=40, mean_events_per_user=5, seed=3).events)
    summary = pe.publish_events(events, topic, batch_settings=pe.BatchSettings(max_messages=50))
    assert (summary.published, summary.failed, summary.rejected) == (len(events), 0, 0)
    assert sorted(summary.published_ids) == sorted(e.event_id for e in events)
    received = by_id(pull_all(sub, expected=len(events)))
    assert set(received) == {e.event_id for e in events}
    for e in events:
        data, attrs = received[e.event_id]
        assert data == e.to_pubsub_data()
        assert attrs == e.pubsub_attributes()
        assert parse_event(data) == e


def _event(i: int, **kw) -> dict:
    rec = {"event_id": f"f{i}", "event_type": "add_to_cart", "user_id": f"u{i}", "item_id": f"i{i}",
           "timestamp": NOW_MS - i}
    rec.update(kw)
    return rec


def test_file_with_invalid_lines_via_command_line(pubsub_topic, tmp_path: Path, capsys):
    topic, sub = pubsub_topic
    valid = [_event(1), _event(2, session_id={"string": "s2"}), _event(3, context={"ab": "x"})]
    lines = [json.dumps(valid[0]).encode(),
             b"{not json",                                           # line 2
             json.dumps(valid[1]).encode(),
             b"",                                                    # blank: skipped, not rejected
             json.dumps(_event(9, event_type="click")).encode(),     # line 5
             b'{"event_id": "\xff\xfe"}',                            # line 6: not UTF-8
             json.dumps({k: v for k, v in _event(7).items() if k != "user_id"}).encode(),  # line 7
             json.dumps(valid[2]).encode(),
             json.dumps(_event(8, timestamp=NOW_MS + 10 * 24 * 3600 * 1000)).encode()]  # line 9
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.jsonl"

    code = pe.main(["--file", str(path), "--topic", topic, "--rejects", str(rejects), "--json",
                    "--no-progress", "--max-messages", "2"])

    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["published"], summary["failed"], summary["rejected"]) == (3, 0, 5)
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejected] == [
        (2, "payload"), (5, "event_type"), (6, "payload"), (7, "user_id"), (9, "timestamp")]
    reasons = [r["reason"] for r in rejected]
    assert reasons[0].startswith("not JSON")
    assert "one of view, add_to_cart, purchase" in reasons[1]
    bad_byte = lines[5].index(0xFF)
    assert reasons[2] == f"not valid UTF-8 at byte {bad_byte}"
    assert reasons[3] == "missing required field"
    assert "in the future" in reasons[4]
    assert rejected[1]["raw"] == lines[4].decode()
    received = by_id(pull_all(sub, expected=3))
    assert set(received) == {"f1", "f2", "f3"}
    for rec in valid:
        expected = parse_event(json.dumps(rec))
        assert received[rec["event_id"]] == (expected.to_pubsub_data(), expected.pubsub_attributes())


def test_csv_file_with_invalid_lines(pubsub_topic, tmp_path: Path):
    topic, sub = pubsub_topic
    path = tmp_path / "shop" / "events.csv"
    path.parent.mkdir()
    path.write_bytes(
        b"event_id,event_type,user_id,item_id,timestamp,session_id,page\n"
        + f"c1,view,u1,i1,{NOW_MS},s1,home\n".encode()       # line 2: page -> context
        + f"c2,purchase,u2,i2,{NOW_MS},,\n".encode()           # line 3
        + b"c3,view,u3,i3,soon,,\n"                   # line 4: bad timestamp
        + f"c4,view,u/4,i4,{NOW_MS},,\n".encode()              # line 5: '/' in id
        + f"c5,view,u5,i5,{NOW_MS}\n".encode()                 # line 6: too few columns
        + b"c6,view,u\xe96,i6,1,,\n"                           # line 7: Latin-1 byte
        + f",,u7,i7,{NOW_MS // 1000},,\n".encode())            # line 8: defaults, epoch seconds
    records = list(pe.read_file(path))
    rejects = [r for r in records if isinstance(r, pe.Rejected)]
    assert [(r.line, r.field) for r in rejects] == [(4, "timestamp"), (5, "user_id"), (6, "payload"),
                                                   (7, "payload")]
    summary = pe.publish_events(records, topic)
    assert (summary.published, summary.failed, summary.rejected) == (3, 0, 4)
    expected_ids = {"c1", "c2", f"shop-u7-i7-{NOW_MS // 1000 * 1000}"}
    received = by_id(pull_all(sub, expected=3))
    assert set(received) == expected_ids
    c1 = parse_event(received["c1"][0])
    assert (c1.session_id, c1.context) == ("s1", {"page": "home"})
    assert parse_event(received["c2"][0]).event_type == "purchase"


def test_catalog_items_arrive_intact(pubsub_topic):
    topic, sub = pubsub_topic
    items = generate_synthetic(n_users=5, n_items=30, seed=1).items
    summary = pe.publish_catalog(items, topic)
    assert (summary.published, summary.failed, summary.rejected) == (30, 0, 0)
    msgs = pull_all(sub, expected=30)
    received = {m.attributes["item_id"]: m.data for m in msgs}
    assert len(msgs) == 30 and set(received) == {it.item_id for it in items}
    for it in items:
        assert received[it.item_id] == it.to_pubsub_data()
        assert parse_item(received[it.item_id]) == it


def test_invalid_event_objects_are_rejected_not_published(pubsub_topic):
    topic, sub = pubsub_topic
    good = ProductEvent("g1", "view", "u1", "i1", NOW_MS)
    bad = ProductEvent("g2", "like", "u1", "i1", NOW_MS)  # constructed without validation
    summary = pe.publish_events([good, bad], topic)
    assert (summary.published, summary.rejected) == (1, 1)
    assert (summary.rejects[0].line, summary.rejects[0].field) == (2, "event_type")
    assert [m.attributes["event_id"] for m in pull_all(sub, expected=1)] == ["g1"]


def test_publishing_to_a_missing_topic_counts_every_failure(emulators, capsys):
    topic = f"projects/{emulators.project}/topics/no-such-topic"
    events = [ProductEvent(f"m{i}", "view", "u", "i", NOW_MS) for i in range(5)]
    summary = pe.publish_events(events, topic, confirm_timeout_s=30)
    assert (summary.published, summary.failed) == (0, 5)
    assert sorted(f.record_id for f in summary.failures) == [f"m{i}" for i in range(5)]
    assert all("NotFound" in f.error for f in summary.failures)
    assert "FAILED  m" in summary.format()


def test_command_line_exit_code_on_failures(emulators, tmp_path: Path, capsys):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(_event(1)) + "\n")
    code = pe.main(["--file", str(path), "--topic", "no-such-topic", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "failed              1" in out and "NotFound" in out
