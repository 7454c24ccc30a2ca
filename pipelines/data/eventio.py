"""Event files in JSON Lines: the pipeline's event archive and the training job's input.

One plain-JSON event per line (unions not wrapped, as ``ProductEvent.to_dict`` gives), UTF-8;
a path ending in ``.gz`` is gzip-compressed. The pipeline's archive also holds tombstones: a
line ``{"kind": "forget", "request_id", "user_id", "timestamp"}`` (``ForgetRequest.to_dict``)
means the user's events at or before ``timestamp`` are forgotten (:func:`apply_tombstones`);
:func:`pipelines.data.load_dataset` applies them, so every reader of the archive honours them.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from pipelines.data.dataset import DataError
from schemas.errors import InvalidRecord
from schemas.events import ForgetRequest, ProductEvent, is_forget, validate_event, validate_forget


def open_text(path: str | Path, mode: str) -> IO[str]:
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def write_events_jsonl(events: Iterable[ProductEvent], path: str | Path) -> int:
    """Write events, one JSON object per line; return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open_text(path, "w") as f:
        for ev in events:
            f.write(json.dumps(ev.to_dict(), ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
            n += 1
    return n


def iter_events_jsonl(path: str | Path) -> Iterator[ProductEvent]:
    """Yield validated events from a JSON Lines file (blank lines and tombstones are skipped:
    :func:`iter_records_jsonl` yields both, :func:`apply_tombstones` applies them).

    Raises:
        DataError: naming the file, line and field of the first invalid record.
    """
    return (r for r in iter_records_jsonl(path) if isinstance(r, ProductEvent))


def parse_record(record: object) -> ProductEvent | ForgetRequest:
    """An archive line's JSON value: a tombstone if its ``kind`` says so, else an event."""
    if isinstance(record, dict) and is_forget(None, record):
        return validate_forget(record)
    return validate_event(record)  # type: ignore[arg-type]


def forget_times(records: Iterable[ProductEvent | ForgetRequest]) -> dict[str, int]:
    """The latest forget time per user among ``records``' tombstones."""
    out: dict[str, int] = {}
    for r in records:
        if isinstance(r, ForgetRequest) and r.timestamp > out.get(r.user_id, 0):
            out[r.user_id] = r.timestamp
    return out


def apply_tombstones(events: Sequence[ProductEvent], forgotten: dict[str, int]) -> list[ProductEvent]:
    """``events`` without those of a forgotten user at or before the user's forget time."""
    if not forgotten:
        return list(events)
    return [e for e in events if e.timestamp > forgotten.get(e.user_id, 0)]


def iter_records_jsonl(path: str | Path) -> Iterator[ProductEvent | ForgetRequest]:
    """Yield validated events and tombstones from a JSON Lines file (blank lines are ignored).

    Raises:
        DataError: naming the file, line and field of the first invalid record.
    """
    with open_text(path, "r") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not JSON: {e.msg}") from e
            try:
                yield parse_record(record)
            except InvalidRecord as e:
                raise DataError(f"{path}:{line_no}: {e}") from e


def read_events_jsonl(path: str | Path) -> list[ProductEvent]:
    """All validated events of a JSON Lines file, in file order."""
    return list(iter_events_jsonl(path))
