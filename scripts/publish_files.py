"""Records to publish, read from files: JSON lines (events or catalogue items) and CSV events.

Each invalid line becomes a :class:`Rejected` with its line number, field and reason, so a
publishing run reports every line it skipped instead of stopping at the first.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from schemas.catalog import parse_item
from schemas.errors import InvalidRecord
from schemas.events import ProductEvent, parse_event

CSV_REQUIRED = ("user_id", "item_id", "timestamp")
MAX_RAW_CHARS = 2000  # of an invalid line kept in the rejects file


@dataclass(frozen=True)
class Rejected:
    """A record that failed validation and was not published."""

    line: int  # 1-based line in the source file, or 1-based position in an iterable
    field: str
    reason: str
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def truncate(text: str) -> str:
    """``text`` cut to ``MAX_RAW_CHARS`` (with an ellipsis) for a rejects file."""
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + "..."


def _open_binary(path: str | Path) -> BinaryIO:
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")  # type: ignore[return-value]


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines of a file as bytes (so one bad byte sequence only spoils its own line)."""
    with _open_binary(path) as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line_no, line


def read_jsonl(path: str | Path, parse: Callable[[bytes], Any] = parse_event) -> Iterator[Any]:
    """Each line parsed with ``parse`` (event or item), or ``Rejected`` with line and reason."""
    for line_no, line in _raw_lines(Path(path)):
        try:
            yield parse(line)
        except InvalidRecord as e:
            yield Rejected(line_no, e.field, e.reason, truncate(line.decode("utf-8", "replace")))


def read_events_csv(path: str | Path) -> Iterator[ProductEvent | Rejected]:
    """Events from a CSV file with a header, one record per line, in the format of
    :func:`pipelines.data.load_events_file`: ``user_id``, ``item_id``, ``timestamp`` required;
    ``event_id``, ``event_type``, ``session_id`` optional; other columns go into ``context``.

    Raises:
        ValueError: the header lacks a required column.
    """
    from pipelines.data.event_files import CSV_EVENT_FIELDS, csv_row_to_event

    path = Path(path)
    name = path.resolve().parent.name  # event ids default to f"{name}-{user}-{item}-{ts}", as the loader
    lines = _raw_lines(path)
    first = next(lines, None)
    if first is None:
        return
    header = [h.strip() for h in next(csv.reader([first[1].decode("utf-8", "replace")]))]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}: CSV header lacks column(s) {', '.join(missing)} "
                         f"(required: {', '.join(CSV_REQUIRED)})")
    extra = [c for c in header if c not in CSV_EVENT_FIELDS]
    for line_no, line in lines:
        raw = line.decode("utf-8", "replace")
        try:
            values = next(csv.reader([line.decode("utf-8")]))
            if len(values) != len(header):
                raise InvalidRecord("payload", f"expected {len(header)} columns, got {len(values)}")
            yield csv_row_to_event(dict(zip(header, values)), name, extra)
        except UnicodeDecodeError as e:
            yield Rejected(line_no, "payload", f"not valid UTF-8 at byte {e.start}", truncate(raw))
        except InvalidRecord as e:
            yield Rejected(line_no, e.field, e.reason, truncate(raw))


def read_file(path: str | Path, catalog: bool = False) -> Iterator[Any]:
    """Events (or catalogue items) from ``.jsonl``/``.json``/``.ndjson`` (optionally ``.gz``)
    or ``.csv`` (events only)."""
    suffix = Path(str(path).removesuffix(".gz")).suffix.lower()
    if suffix == ".csv":
        if catalog:
            raise ValueError("catalogue items are read from JSON lines, not CSV")
        return read_events_csv(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return read_jsonl(path, parse_item if catalog else parse_event)
    raise ValueError(f"{path}: unknown file type {suffix!r} (use .jsonl or .csv)")


def count_lines(path: str | Path) -> int:
    with _open_binary(path) as f:
        return sum(1 for line in f if line.strip())
