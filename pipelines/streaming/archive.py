"""The event archive: accepted events as JSON lines in windowed files (local or ``gs://``).

The format is :func:`pipelines.data.write_events_jsonl`'s (one plain-JSON ``ProductEvent`` per
line), so the training job reads the directory for warm-start fine-tuning. Files are cut by
*arrival* time (fixed windows of ``window_s``), not event time, so a late or replayed event is
archived too instead of being dropped as late data. Names carry the window, a per-run id and
the pane index, so a restart or a late pane never overwrites an earlier file.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms import trigger, window

from schemas.events import ProductEvent

FILE_PREFIX = "events"
FILE_SUFFIX = ".jsonl"


def event_line(event: ProductEvent) -> str:
    """One archive line (no newline), as ``write_events_jsonl`` writes it."""
    return json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))


def batch_lines(batch: Any) -> str:
    """A batch of events (or one event) -> its archive lines joined by newlines: the file sink
    ends each element with a newline, so the files read exactly as with one line per element."""
    events = batch if isinstance(batch, (tuple, list)) else (batch,)
    return "\n".join(event_line(e) for e in events)


def archive_file_naming(run_id: str) -> fileio.FileNaming:
    """``events-<start>-<end>-<run>-p<pane>-<shard>-of-<n>.jsonl`` (UTC ISO window bounds)."""

    def name(win: Any, pane: Any, shard_index: int, total_shards: int, compression: Any,
             destination: Any) -> str:
        start = win.start.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
        end = win.end.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
        pane_index = pane.index if pane is not None else 0
        return (f"{FILE_PREFIX}-{start}-{end}-{run_id}-p{pane_index}-"
                f"{shard_index or 0:05d}-of-{total_shards or 1:05d}{FILE_SUFFIX}")

    return name


class ArchiveEvents(beam.PTransform):
    """Batches of events (or single events) -> JSON-lines files under ``path``, one set per
    ``window_s`` of arrival time. A batch becomes one element (its lines joined), so the file
    writing costs per bundle, not per event."""

    def __init__(self, path: str, window_s: int = 60) -> None:
        super().__init__()
        self.path = path
        self.window_s = window_s
        self.run_id = uuid.uuid4().hex[:8]

    def expand(self, events: beam.PCollection) -> beam.PCollection:
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
