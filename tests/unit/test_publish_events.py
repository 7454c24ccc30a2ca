"""The publisher's pacing, accounting and file reading, with a fake Pub/Sub client."""

from __future__ import annotations

import concurrent.futures
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.api_core.exceptions import ServiceUnavailable

from schemas.events import ProductEvent
from scripts import publish_events as pe

NOW_MS = int(time.time() * 1000)


def events(n: int) -> list[ProductEvent]:
    return [ProductEvent(f"e{i}", "view", f"u{i}", f"i{i}", NOW_MS - i) for i in range(n)]


@dataclass
class FakePublisher:
    """Completes futures at once; ``fail_ids`` fail, ``hang_ids`` never complete, ``raise_ids`` raise."""

    fail_ids: set[str] = field(default_factory=set)
    hang_ids: set[str] = field(default_factory=set)
    raise_ids: set[str] = field(default_factory=set)
    sent: list[tuple[float, bytes, dict[str, str]]] = field(default_factory=list)

    def publish(self, topic: str, data: bytes, **attrs: str) -> concurrent.futures.Future:
        if attrs["event_id"] in self.raise_ids:
            raise RuntimeError("publisher stopped")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.sent.append((time.monotonic(), data, attrs))
        if attrs["event_id"] in self.fail_ids:
            future.set_exception(ServiceUnavailable("try later"))
        elif attrs["event_id"] not in self.hang_ids:
            future.set_result("id")
        return future


def test_everything_valid_is_published_and_counted():
    pub = FakePublisher()
    evs = events(25)
    summary = pe.publish_events(evs, "projects/p/topics/t", publisher=pub)
    assert (summary.published, summary.failed, summary.rejected) == (25, 0, 0)
    assert summary.published_ids == [e.event_id for e in evs]
    assert [d for _, d, _ in pub.sent] == [e.to_pubsub_data() for e in evs]
    assert [a for _, _, a in pub.sent] == [e.pubsub_attributes() for e in evs]
    assert summary.events_per_s > 0 and summary.to_dict()["published"] == 25


def test_steady_pacing_at_the_target_rate():
    pub = FakePublisher()
    start = time.monotonic()
    summary = pe.publish_events(events(41), "t", publisher=pub, rate=200)
    elapsed = time.monotonic() - start
    assert summary.published == 41
    assert 0.19 <= elapsed < 1.0  # 40 intervals of 5 ms
    gaps = [b[0] - a[0] for a, b in zip(pub.sent, pub.sent[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 200, abs=0.002)


def test_failures_are_counted_with_their_errors():
    pub = FakePublisher(fail_ids={"e1", "e3"}, raise_ids={"e4"})
    summary = pe.publish_events(events(6), "t", publisher=pub)
    assert (summary.published, summary.failed) == (3, 3)
    errors = {f.record_id: f.error for f in summary.failures}
    assert errors["e1"] == "ServiceUnavailable: 503 try later"
    assert errors["e4"] == "RuntimeError: publisher stopped"
    assert "FAILED  e1: ServiceUnavailable" in summary.format()


def test_unconfirmed_publishes_count_as_failed_after_the_timeout():
    pub = FakePublisher(hang_ids={"e2"})
    start = time.monotonic()
    summary = pe.publish_events(events(4), "t", publisher=pub, confirm_timeout_s=0.3)
    assert time.monotonic() - start < 2
    assert (summary.published, summary.failed) == (3, 1)
    assert summary.failures == [pe.Failure("e2", "publish not confirmed within 0.3 s")]


def test_invalid_events_and_passed_rejects_are_counted_not_published():
    pub = FakePublisher()
    seen: list[pe.Rejected] = []
    bad = ProductEvent("b1", "view", "u/1", "i", NOW_MS)
    passed = pe.Rejected(7, "payload", "not JSON", "{")
    summary = pe.publish_events([events(1)[0], bad, passed], "t", publisher=pub, on_reject=seen.append)
    assert (summary.published, summary.rejected) == (1, 2)
    assert [(r.line, r.field) for r in summary.rejects] == [(2, "user_id"), (7, "payload")]
    assert seen == summary.rejects
    assert [a["event_id"] for _, _, a in pub.sent] == ["e0"]


def test_jsonl_reader_keeps_line_numbers(tmp_path: Path):
    path = tmp_path / "e.jsonl"
    good = events(2)
    path.write_bytes(json.dumps(good[0].to_dict()).encode() + b"\n\n\xc3\x28\n"
                     + good[1].to_pubsub_data() + b"\r\n")
    out = list(pe.read_file(path))
    assert out[0] == good[0] and out[2] == good[1]
    assert out[1] == pe.Rejected(3, "payload", "not valid UTF-8 at byte 0", "\ufffd(")


def test_csv_needs_its_required_columns(tmp_path: Path):
    path = tmp_path / "e.csv"
    path.write_text("user,item_id,timestamp\nu1,i1,1\n")
    with pytest.raises(ValueError, match="lacks column\\(s\\) user_id"):
        list(pe.read_file(path))


def test_unknown_file_type_and_csv_catalogue_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown file type"):
        pe.read_file(tmp_path / "e.parquet")
    with pytest.raises(ValueError, match="catalogue items are read from JSON lines"):
        pe.read_file(tmp_path / "items.csv", catalog=True)


def test_gzip_jsonl(tmp_path: Path):
    import gzip

    path = tmp_path / "e.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(e.to_pubsub_data() for e in events(3)))
    assert list(pe.read_file(path)) == events(3)
    assert pe.count_lines(path) == 3


@pytest.mark.parametrize("argv, message", [
    (["--file", "x.jsonl", "--rate", "-1"], "--rate must be >= 0"),
    (["--file", "x.jsonl", "--max-messages", "0"], "must be positive"),
    (["--file", "/nonexistent/x.jsonl"], "No such file"),
])
def test_bad_usage_exits_2_with_a_message(argv, message, capsys):
    assert pe.main(argv + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_topic_resolution(monkeypatch):
    args = pe.build_parser().parse_args(["--synthetic", "--project", "p1"])
    monkeypatch.delenv("EVENTS_TOPIC", raising=False)
    assert pe.config_from_args(args).topic_path == "projects/p1/topics/product-events"
    monkeypatch.setenv("CATALOG_TOPIC", "items-feed")
    args = pe.build_parser().parse_args(["--synthetic", "--catalog", "--project", "p1"])
    assert pe.config_from_args(args).topic_path == "projects/p1/topics/items-feed"
    assert pe.topic_path_for("projects/x/topics/y", "p1") == "projects/x/topics/y"
