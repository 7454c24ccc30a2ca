"""Event files in JSON Lines: the pipeline's event archive and the training job's input.

One plain-JSON event per line (unions not wrapped, as ``ProductEvent.to_dict`` gives), UTF-8;
a path ending in ``.gz`` is gzip-compressed.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from pipelines.data.dataset import DataError
from schemas.errors import InvalidRecord
from schemas.events import ProductEvent, validate_event


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
    """Yield validated events from a JSON Lines file (blank lines are ignored).

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
                yield validate_event(record)
            except InvalidRecord as e:
                raise DataError(f"{path}:{line_no}: {e}") from e


def read_events_jsonl(path: str | Path) -> list[ProductEvent]:
    """All validated events of a JSON Lines file, in file order."""
    return list(iter_events_jsonl(path))
