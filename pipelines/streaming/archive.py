"""The event archive: accepted events as JSON lines in files per arrival window (local or ``gs://``).

The format is :func:`pipelines.data.write_events_jsonl`'s (one plain-JSON ``ProductEvent`` per
line), so the training job reads the directory for warm-start fine-tuning (it drops an
``event_id`` seen before). Files are cut by *arrival* time (windows of ``window_s``), not event
time, so a late or replayed event is archived too. A forget request is archived as a tombstone
line (``ForgetRequest.to_dict``: ``"kind": "forget"``), which the training reader honours.

Two ways to write, chosen by the runner (:func:`pipelines.streaming.pipeline.build`):

* per bundle (DirectRunner, where the read acks a message once its effects are durable): every
  bundle's events are written before the bundle finishes, so nothing waits in memory for a window
  that a crash would lose. On a local path one file per window and run gets one ``O_APPEND`` write
  per bundle (a single ``write`` call, so a killed process leaves whole lines); elsewhere
  (``gs://``, where objects cannot be appended to) every bundle is its own object. A restarted run
  may archive again the events whose user documents were not yet written when the previous run
  died (at least once); the training reader deduplicates them.
* windowed (Dataflow): fixed windows of arrival time written by ``fileio.WriteToFiles`` when the
  window closes (one file per window and pane); the window's contents are in Dataflow's
  checkpointed state, and Dataflow acks Pub/Sub only after its checkpoint, so nothing is lost, and
  files stay few on GCS.

Names carry the window and a per-run id, so a restart never writes into an earlier run's file.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.streaming.parse import DEAD_LETTER, METRICS_NAMESPACE, failed_record, stage_failures
from schemas.events import ProductEvent

FILE_PREFIX = "events"
FILE_SUFFIX = ".jsonl"


def event_line(event: ProductEvent) -> str:
    """One archive line (no newline), as ``write_events_jsonl`` writes it."""
    return json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))


def batch_lines(batch: Any) -> str:
    """A batch of events (or one event) -> its archive lines joined by newlines (no final newline)."""
    events = batch if isinstance(batch, (tuple, list)) else (batch,)
    return "\n".join(event_line(e) for e in events)


def archive_file_name(window_start_s: int, window_s: int, run_id: str, part: str | None = None) -> str:
    """``events-<start>-<end>-<run>[-<part>].jsonl`` (UTC window bounds); ``part`` names the
    per-bundle objects of stores that cannot append (worker instance and bundle number)."""
    def fmt(t: int) -> str:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%Y%m%dT%H%M%S")

    suffix = f"-{part}" if part is not None else ""
    return (f"{FILE_PREFIX}-{fmt(window_start_s)}-{fmt(window_start_s + window_s)}-{run_id}{suffix}"
            f"{FILE_SUFFIX}")


def archive_file_naming(run_id: str) -> fileio.FileNaming:
    """Windowed files: ``events-<start>-<end>-<run>-p<pane>-<shard>-of-<n>.jsonl`` (UTC bounds)."""

    def name(win: Any, pane: Any, shard_index: int, total_shards: int, compression: Any,
             destination: Any) -> str:
        start = win.start.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
        end = win.end.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
        pane_index = pane.index if pane is not None else 0
        return (f"{FILE_PREFIX}-{start}-{end}-{run_id}-p{pane_index}-"
                f"{shard_index or 0:05d}-of-{total_shards or 1:05d}{FILE_SUFFIX}")

    return name


class AppendArchiveFn(beam.DoFn):
    """Batches of events -> appended to the current arrival window's file when the bundle ends."""

    def __init__(self, path: str, window_s: int, run_id: str) -> None:
        self.path = path
        self.window_s = window_s
        self.run_id = run_id
        self.archived = Metrics.counter(METRICS_NAMESPACE, "events_archived")
        self.bundles = Metrics.counter(METRICS_NAMESPACE, "archive_writes")
        self.failed = stage_failures("archive")

    def setup(self) -> None:
        self._local = FileSystems.get_scheme(self.path) in (None, "file")
        self._parts = itertools.count()
        self._instance = uuid.uuid4().hex[:6]  # workers share the run id
        if self._local:
            os.makedirs(self.path, exist_ok=True)

    def start_bundle(self) -> None:
        self._lines: list[str] = []
        self._events: list[ProductEvent] = []

    def process(self, batch: Any) -> None:
        events = batch if isinstance(batch, (tuple, list)) else (batch,)
        self._lines.append(batch_lines(events))
        self._events.extend(events)

    def finish_bundle(self) -> Iterator[Any]:
        if not self._lines:
            return
        lines, events, self._lines, self._events = self._lines, self._events, [], []
        try:
            self._write(("\n".join(lines) + "\n").encode("utf-8"))
        except OSError as e:  # the events stay counted; the dead letters are their archive copy
            self.failed.inc(len(events))
            for event in events:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, WindowedValue(
                    failed_record(event, "archive", e), 0, (GlobalWindow(),)))
            return
        self.archived.inc(len(events))
        self.bundles.inc()

    def _write(self, data: bytes) -> None:
        start = int(time.time()) // self.window_s * self.window_s
        if self._local:
            name = os.path.join(self.path, archive_file_name(start, self.window_s, self.run_id))
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        else:
            name = FileSystems.join(self.path, archive_file_name(
                start, self.window_s, self.run_id, f"{self._instance}-b{next(self._parts):06d}"))
            with FileSystems.create(name) as f:
                f.write(data)


class ArchiveEvents(beam.PTransform):
    """Batches of events (or single events) -> JSON-lines files under ``path``, one set per
    ``window_s`` of arrival time: written per bundle (``per_bundle``; tagged ``dead_letter``
    output: the events of a failed write) or when the window closes (one ``PCollection`` out)."""

    def __init__(self, path: str, window_s: int = 60, per_bundle: bool = True) -> None:
        super().__init__()
        self.path = path
        self.window_s = window_s
        self.per_bundle = per_bundle
        self.run_id = uuid.uuid4().hex[:8]

    def expand(self, events: beam.PCollection) -> Any:
        if self.per_bundle:
            append = AppendArchiveFn(self.path, self.window_s, self.run_id)
            return events | "WriteFiles" >> beam.ParDo(append).with_outputs(DEAD_LETTER, main="written")
        return (events
                | "ToJsonLines" >> beam.Map(lambda b: window.TimestampedValue(batch_lines(b), time.time()))
                | "FixedWindows" >> beam.WindowInto(
                    window.FixedWindows(self.window_s),
                    trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                    allowed_lateness=self.window_s)
                | "WriteFiles" >> fileio.WriteToFiles(
                    path=self.path, file_naming=archive_file_naming(self.run_id), shards=1,
                    temp_directory=StaticValueProvider(str, self.path.rstrip("/") + "/.tmp")))
