"""Publish product events (or catalogue items) to Pub/Sub.

    # synthetic events from the seeded generator, as fast as possible
    python -m scripts.publish_events --synthetic --users 500 --items 200 --seed 0 --rate 0
    # a file (JSON lines or CSV), 200 events/s, invalid lines written to rejects.jsonl
    python -m scripts.publish_events --file events.jsonl --rate 200 --rejects rejects.jsonl
    # catalogue items to the catalogue-updates topic
    python -m scripts.publish_events --catalog --synthetic --items 200
    # a real data set's interactions as events (see pipelines.data.load_dataset)
    python -m scripts.publish_events --dataset ml-latest-small --limit 10000

Every record is validated with :mod:`schemas` before it is published; an invalid
record is counted as rejected with its line number, field and reason. Bodies are
plain JSON as ``docs/events.md`` documents them (``to_pubsub_data()``), attributes from
``pubsub_attributes()``. Every publish future is awaited: a failed publish is counted and
reported with its error, so nothing is silently dropped. Works against the emulator (``PUBSUB_EMULATOR_HOST``)
and real Pub/Sub alike; the project comes from ``--project`` or ``GOOGLE_CLOUD_PROJECT``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from google.api_core.exceptions import GoogleAPICallError, RetryError
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher.exceptions import FlowControlLimitError
from google.cloud.pubsub_v1.types import (
    BatchSettings,
    LimitExceededBehavior,
    PublisherOptions,
    PublishFlowControl,
)
from tqdm import tqdm

from schemas import names
from schemas.catalog import CatalogItem, validate_item
from schemas.errors import InvalidRecord
from schemas.events import ProductEvent, validate_event
from scripts.publish_files import Rejected, count_lines, read_file, truncate

MAX_REPORTED_FAILURES = 1000  # individual failures kept in the summary (all are counted)


@dataclass(frozen=True)
class Failure:
    """A valid record whose publish failed."""

    record_id: str
    error: str


@dataclass
class PublishSummary:
    """What a publishing run did. ``published + failed`` = valid records; ``rejected`` = invalid."""

    published: int = 0
    failed: int = 0
    rejected: int = 0
    seconds: float = 0.0
    published_ids: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"published": self.published, "failed": self.failed, "rejected": self.rejected,
                "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s, 1)}

    def format(self) -> str:
        """A short human-readable report (counts, rate, first failures and rejects)."""
        lines = [f"published   {self.published:>9,}",
                 f"failed      {self.failed:>9,}",
                 f"rejected    {self.rejected:>9,}",
                 f"seconds     {self.seconds:>9.2f}",
                 f"events/s    {self.events_per_s:>9,.0f}"]
        lines += [f"FAILED  {f.record_id}: {f.error}" for f in self.failures[:20]]
        lines += [f"REJECTED line {r.line}: {r.field}: {r.reason}" for r in self.rejects[:20]]
        if len(self.rejects) > 20:
            lines.append(f"... and {len(self.rejects) - 20} more rejects")
        return "\n".join(lines)


@dataclass(frozen=True)
class OutMessage:
    """One validated record ready to publish."""

    record_id: str
    data: bytes
    attributes: dict[str, str]


def event_message(event: ProductEvent) -> OutMessage:
    """Re-validate an event and turn it into its Pub/Sub message (raise ``InvalidRecord``)."""
    event = validate_event(event.to_dict())
    return OutMessage(event.event_id, event.to_pubsub_data(), event.pubsub_attributes())


def item_message(item: CatalogItem) -> OutMessage:
    """Re-validate a catalogue item and turn it into its Pub/Sub message."""
    item = validate_item(item.to_dict())
    return OutMessage(item.item_id, item.to_pubsub_data(), {"item_id": item.item_id})


def make_publisher(batch_settings: BatchSettings | None = None,
                   flow_control: PublishFlowControl | None = None) -> pubsub_v1.PublisherClient:
    """A publisher client; flow control blocks (never drops) when too much is in flight."""
    options = PublisherOptions(flow_control=flow_control or PublishFlowControl(
        message_limit=10_000, byte_limit=50 * 1000 * 1000,
        limit_exceeded_behavior=LimitExceededBehavior.BLOCK))
    return pubsub_v1.PublisherClient(batch_settings=batch_settings or BatchSettings(),
                                     publisher_options=options)


class _Tracker:
    """Counts publish outcomes from future callbacks (which run on client threads)."""

    def __init__(self, summary: PublishSummary, bar: tqdm | None, keep_ids: bool) -> None:
        self.summary = summary
        self.bar = bar
        self.keep_ids = keep_ids
        self.pending: dict[Any, str] = {}  # future -> record id
        self.lock = threading.Condition()

    def track(self, record_id: str, future: Any) -> None:
        with self.lock:
            self.pending[future] = record_id
        future.add_done_callback(lambda f: self._done(record_id, f))

    def _done(self, record_id: str, future: Any) -> None:
        error = future.exception()
        with self.lock:
            self.pending.pop(future, None)
            if error is None:
                self.summary.published += 1
                if self.keep_ids:
                    self.summary.published_ids.append(record_id)
            else:
                self._fail(record_id, f"{type(error).__name__}: {error}")
            if self.bar is not None:
                self.bar.update(1)
            self.lock.notify_all()

    def _fail(self, record_id: str, error: str) -> None:
        self.summary.failed += 1
        if len(self.summary.failures) < MAX_REPORTED_FAILURES:
            self.summary.failures.append(Failure(record_id, error))

    def fail_now(self, record_id: str, error: str) -> None:
        with self.lock:
            self._fail(record_id, error)

    def wait(self, timeout_s: float) -> None:
        """Wait for every pending future; count those still pending after ``timeout_s`` as failed."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self.pending and time.monotonic() < deadline:
                self.lock.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            for record_id in self.pending.values():
                self._fail(record_id, f"publish not confirmed within {timeout_s:g} s")
            self.pending.clear()


class _Pacer:
    """Steady pacing: message ``i`` is sent no earlier than ``start + i / rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def wait_turn(self) -> None:
        if self.rate > 0:
            delay = self.start + self.sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.sent += 1


def publish_messages(records: Iterable[OutMessage | Rejected], topic_path: str, *, rate: float = 0.0,
                     batch_settings: BatchSettings | None = None, progress: bool = False,
                     publisher: pubsub_v1.PublisherClient | None = None, total: int | None = None,
                     confirm_timeout_s: float = 120.0, keep_ids: bool = True,
                     on_reject: Callable[[Rejected], None] | None = None) -> PublishSummary:
    """Publish prepared messages, count rejects passed along, await every future.

    Args:
        records: messages to publish, interleaved with already-rejected records to count.
        topic_path: ``projects/<p>/topics/<t>``.
        rate: target messages per second (steady pacing); ``0`` publishes as fast as possible.
        batch_settings: client batching (ignored when ``publisher`` is given).
        progress: show a tqdm bar on stderr.
        publisher: an existing client to use (it is not stopped); default: a new one.
        total: expected number of records, for the progress bar.
        confirm_timeout_s: how long to wait for outstanding publishes at the end.
        keep_ids: record the ids of published messages in the summary.
        on_reject: called with each rejected record (e.g. to write a rejects file).
    """
    own_client = publisher is None
    client = publisher or make_publisher(batch_settings)
    summary = PublishSummary()
    bar = tqdm(total=total, unit="msg", file=sys.stderr, disable=not progress, mininterval=0.5)
    tracker = _Tracker(summary, bar, keep_ids)
    pacer = _Pacer(rate)
    start = time.monotonic()
    try:
        for record in records:
            if isinstance(record, Rejected):
                summary.rejected += 1
                summary.rejects.append(record)
                if on_reject is not None:
                    on_reject(record)
                bar.update(1)
                continue
            pacer.wait_turn()
            try:
                future = client.publish(topic_path, record.data, **record.attributes)
            except (GoogleAPICallError, RetryError, FlowControlLimitError, RuntimeError, ValueError) as e:
                tracker.fail_now(record.record_id, f"{type(e).__name__}: {e}")
                continue
            tracker.track(record.record_id, future)
        tracker.wait(confirm_timeout_s)
    finally:
        summary.seconds = time.monotonic() - start
        bar.close()
        if own_client:
            client.stop()
    return summary


def _validated(records: Iterable[ProductEvent | CatalogItem | Rejected],
               to_message: Callable[[Any], OutMessage]) -> Iterator[OutMessage | Rejected]:
    for position, record in enumerate(records, start=1):
        if isinstance(record, Rejected):
            yield record
            continue
        try:
            yield to_message(record)
        except InvalidRecord as e:
            yield Rejected(position, e.field, e.reason, truncate(repr(record)))


def publish_events(events: Iterable[ProductEvent | Rejected], topic_path: str, *, rate: float = 0.0,
                   batch_settings: BatchSettings | None = None, progress: bool = False,
                   **kwargs: Any) -> PublishSummary:
    """Validate and publish product events; see :func:`publish_messages` for the options.

    ``Rejected`` entries in ``events`` (e.g. invalid file lines) are counted, not published.
    """
    return publish_messages(_validated(events, event_message), topic_path, rate=rate,
                            batch_settings=batch_settings, progress=progress, **kwargs)


def publish_catalog(items: Iterable[CatalogItem | Rejected], topic_path: str, *, rate: float = 0.0,
                    batch_settings: BatchSettings | None = None, progress: bool = False,
                    **kwargs: Any) -> PublishSummary:
    """Validate and publish catalogue items (attribute ``item_id``)."""
    return publish_messages(_validated(items, item_message), topic_path, rate=rate,
                            batch_settings=batch_settings, progress=progress, **kwargs)


# ---------------------------------------------------------------------------- file sources


# ---------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class PublishConfig:
    """Settings of one command-line run, from flags and environment."""

    project: str
    topic_path: str
    rate: float
    batch_settings: BatchSettings
    flow_control: PublishFlowControl
    progress: bool


def topic_path_for(topic: str, project: str) -> str:
    """A full topic path from a name or a path."""
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="use pipelines.data.generate_synthetic")
    src.add_argument("--file", type=Path, help="events .jsonl[.gz] or .csv (items: .jsonl)")
    src.add_argument("--dataset", help="a data set name or path for pipelines.data.load_dataset "
                                       "(e.g. ml-latest-small; $DATA_DIR or ../shared/data)")
    p.add_argument("--catalog", action="store_true",
                   help="publish catalogue items to the catalogue-updates topic instead of events")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--events-per-user", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="publish at most this many records (0: all)")
    p.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", names.DEFAULT_PROJECT))
    p.add_argument("--topic", default=None,
                   help=f"topic name or path [unset: $EVENTS_TOPIC or {names.EVENTS_TOPIC}; "
                        f"with --catalog $CATALOG_TOPIC or {names.CATALOG_TOPIC}]")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second; 0 = as fast as possible")
    p.add_argument("--max-messages", type=int, default=BatchSettings().max_messages)
    p.add_argument("--max-bytes", type=int, default=BatchSettings().max_bytes)
    p.add_argument("--max-latency", type=float, default=BatchSettings().max_latency, help="seconds")
    p.add_argument("--max-in-flight", type=int, default=10_000,
                   help="flow control: block when this many messages await confirmation")
    p.add_argument("--rejects", type=Path, default=None, help="write rejected records here (JSON lines)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> PublishConfig:
    if args.rate < 0:
        raise ValueError("--rate must be >= 0")
    if args.max_messages < 1 or args.max_bytes < 1 or args.max_latency < 0 or args.max_in_flight < 1:
        raise ValueError("batch and flow-control settings must be positive")
    default_topic = (os.environ.get("CATALOG_TOPIC", names.CATALOG_TOPIC) if args.catalog
                     else os.environ.get("EVENTS_TOPIC", names.EVENTS_TOPIC))
    return PublishConfig(
        project=args.project,
        topic_path=topic_path_for(args.topic or default_topic, args.project),
        rate=args.rate,
        batch_settings=BatchSettings(max_bytes=args.max_bytes, max_latency=args.max_latency,
                                     max_messages=args.max_messages),
        flow_control=PublishFlowControl(message_limit=args.max_in_flight,
                                        byte_limit=max(args.max_bytes * 10, 10 * 1000 * 1000),
                                        limit_exceeded_behavior=LimitExceededBehavior.BLOCK),
        progress=not args.no_progress)


def dataset_records(args: argparse.Namespace) -> Sequence[Any]:
    """Items or events from the seeded synthetic generator or a named/loaded data set."""
    from pipelines.data import generate_synthetic, load_dataset

    if args.synthetic:
        data = generate_synthetic(n_users=args.users, n_items=args.items,
                                  mean_events_per_user=args.events_per_user, seed=args.seed)
    else:
        data = load_dataset(args.dataset)
    return data.items if args.catalog else data.events


def _limited(records: Iterable[Any], limit: int) -> Iterator[Any]:
    for i, record in enumerate(records):
        if limit and i >= limit:
            return
        yield record


def _reject_writer(out: TextIO | None) -> Callable[[Rejected], None] | None:
    if out is None:
        return None
    return lambda r: out.write(json.dumps(r.to_dict()) + "\n")


def run(args: argparse.Namespace) -> PublishSummary:
    """Publish what the flags ask for and return the summary."""
    config = config_from_args(args)
    if args.synthetic or args.dataset:
        records: Iterable[Any] = dataset_records(args)
        total = len(records)  # type: ignore[arg-type]
    else:
        records = read_file(args.file, catalog=args.catalog)
        total = count_lines(args.file)
    if args.limit:
        total = min(total, args.limit)
    publisher = make_publisher(config.batch_settings, config.flow_control)
    out = open(args.rejects, "w", encoding="utf-8") if args.rejects else None
    try:
        publish = publish_catalog if args.catalog else publish_events
        return publish(_limited(records, args.limit), config.topic_path, rate=config.rate,
                       progress=config.progress, publisher=publisher, total=total,
                       keep_ids=False, on_reject=_reject_writer(out))
    finally:
        publisher.stop()
        if out is not None:
            out.close()


def main(argv: list[str] | None = None) -> int:
    """Exit code 0: all valid records published; 1: some publishes failed; 2: bad usage."""
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
