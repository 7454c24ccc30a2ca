"""Event files as a data set: ``events.csv`` / ``events.jsonl`` [+ ``items.csv`` / ``items.jsonl``].

The format a user's own system most likely exports; the pipeline's event archive is read the
same way (JSON lines, one file per window), which is how training reads production events.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipelines.data.dataset import DataError, Dataset
from pipelines.data.eventio import apply_tombstones, forget_times, iter_records_jsonl, parse_record
from pipelines.data.eventio import open_text as _open_text
from schemas.catalog import CatalogItem, validate_item
from schemas.errors import InvalidRecord
from schemas.events import MIN_TIMESTAMP_MS, ForgetRequest, ProductEvent, _check_id, validate_event

CSV_EVENT_FIELDS = ("event_id", "event_type", "user_id", "item_id", "timestamp", "session_id")


def _make_item(item_id: str, title: str, category: str, brand: str, price: float, tags: list[str],
               updated_at: int) -> CatalogItem:
    return CatalogItem(item_id=item_id, title=title[:1024], category=category, brand=brand,
                       price=float(price), tags=tuple(tags), in_stock=True, updated_at=updated_at)


def load_events_file(path: str | Path, name: str | None = None, items_path: str | Path | None = None,
                     strict: bool = True) -> Dataset:
    """Events from CSV (header row) or JSON Lines; items from a sibling items file if present.

    CSV columns: ``user_id``, ``item_id``, ``timestamp`` (epoch ms, epoch seconds, or ISO-8601)
    are required; ``event_id`` (default ``f"{name}-{user}-{item}-{ts}"``), ``event_type``
    (default ``view``) and ``session_id`` are optional; other columns go into ``context``.
    Items: ``items.jsonl`` (catalogue-item records) or ``items.csv`` (columns of the catalogue
    item, ``tags`` separated by ``|``); items that appear only in events get minimal records.

    Args:
        path: the events file.
        name: data set name (default: the directory name).
        items_path: items file; default: ``items.jsonl`` or ``items.csv`` next to ``path``.
        strict: raise on the first invalid record; otherwise skip it and list it (line and
            reason) in ``metadata["rejected"]``.

    Raises:
        DataError: naming the file, line and field of an invalid record (when ``strict``).
    """
    path = Path(path)
    return load_event_files([path], name=name or path.resolve().parent.name,
                            items_path=items_path or sibling_items(path), strict=strict)


def load_event_files(paths: Sequence[str | Path], name: str, items_path: str | Path | None = None,
                     strict: bool = True) -> Dataset:
    """Events from several CSV / JSON-lines files (e.g. the pipeline's windowed archive).

    Events are sorted by time; an ``event_id`` seen before (a redelivered or re-archived event)
    is kept once and counted in ``metadata["duplicates"]``. Tombstones (the archive's ``forget``
    lines, in any of the files) drop their user's events at or before the forget time, counted in
    ``metadata["forgotten"]``. See :func:`load_events_file`.
    """
    rejected: list[dict[str, object]] = []
    records: list[ProductEvent | ForgetRequest] = []
    for path in map(Path, paths):
        file_rejected: list[dict[str, object]] = []
        if path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
            records += _events_from_jsonl(path, strict, file_rejected)
        elif path.name.endswith(".csv"):
            records += _events_from_csv(path, name, strict, file_rejected)
        else:
            raise DataError(f"{path}: unknown event file type (expected .csv, .jsonl or .jsonl.gz)")
        rejected += [dict(r, file=str(path)) if len(paths) > 1 else r for r in file_rejected]
    all_events = [r for r in records if isinstance(r, ProductEvent)]
    forgotten = forget_times(records)
    events = apply_tombstones(all_events, forgotten)
    events.sort(key=lambda e: e.timestamp)
    seen: set[str] = set()
    unique = [e for e in events if not (e.event_id in seen or seen.add(e.event_id))]
    items = _load_items(items_path)
    known = {it.item_id for it in items}
    first_seen: dict[str, int] = {}
    for ev in unique:
        first_seen.setdefault(ev.item_id, ev.timestamp)
    items += [_make_item(i, title=f"item {i}", category="", brand="", price=0.0, tags=[],
                         updated_at=ts) for i, ts in first_seen.items() if i not in known]
    return Dataset(name=name, items=items, events=unique,
                   metadata={"rejected": rejected, "duplicates": len(events) - len(unique),
                             "forgotten": len(all_events) - len(events), "forgotten_users": len(forgotten),
                             "source": [str(p) for p in paths] if len(paths) > 1 else str(paths[0])})


def _events_from_jsonl(path: Path, strict: bool,
                       rejected: list[dict[str, object]]) -> list[ProductEvent | ForgetRequest]:
    if strict:
        return list(iter_records_jsonl(path))
    out = []
    with _open_text(path, "r") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(parse_record(json.loads(line)))
            except json.JSONDecodeError as e:
                rejected.append({"line": line_no, "field": "payload", "reason": f"not JSON: {e.msg}"})
            except InvalidRecord as e:
                rejected.append({"line": line_no, **e.to_dict()})
    return out


def _events_from_csv(path: Path, name: str, strict: bool,
                     rejected: list[dict[str, object]]) -> list[ProductEvent]:
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        _require_columns(path, reader.fieldnames, ("user_id", "item_id", "timestamp"))
        extra = [c for c in reader.fieldnames or [] if c not in CSV_EVENT_FIELDS]
        for line_no, row in enumerate(reader, start=2):
            try:
                out.append(_csv_event(row, name, extra))
            except InvalidRecord as e:
                if strict:
                    raise DataError(f"{path}:{line_no}: {e}") from e
                rejected.append({"line": line_no, **e.to_dict()})
    return out


def csv_row_to_event(row: dict[str, str | None], name: str, extra: list[str]) -> ProductEvent:
    """One CSV row (``csv.DictReader``) as a validated event; ``extra`` columns go to ``context``.

    Raises:
        InvalidRecord: naming the offending field.
    """
    return _csv_event(row, name, extra)


def _csv_event(row: dict[str, str | None], name: str, extra: list[str]) -> ProductEvent:
    if None in row:
        raise InvalidRecord("payload", "more fields than the header has")
    ts = _parse_timestamp(row.get("timestamp") or "")
    user, item = row.get("user_id") or "", row.get("item_id") or ""
    _check_id("user_id", user)  # before the ids go into a generated event id
    _check_id("item_id", item)
    record: dict[str, object] = {
        "event_id": row.get("event_id") or f"{name}-{user}-{item}-{ts}",
        "event_type": row.get("event_type") or "view",
        "user_id": user, "item_id": item, "timestamp": ts,
        "session_id": row.get("session_id") or None,
    }
    context = {k: row[k] for k in extra if row.get(k) not in (None, "")}
    if context:
        record["context"] = context
    return validate_event(record)


def _parse_timestamp(text: str) -> int:
    """Epoch milliseconds from epoch ms, epoch seconds (< 1e11) or an ISO-8601 string."""
    text = text.strip()
    if not text:
        raise InvalidRecord("timestamp", "missing")
    try:
        value = float(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as e:
            raise InvalidRecord("timestamp", f"not a number or ISO-8601 time: {text[:40]!r}") from e
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    if not math.isfinite(value):
        raise InvalidRecord("timestamp", f"not finite: {text[:40]!r}")
    return int(value * 1000) if abs(value) < 1e11 else int(value)


def sibling_items(path: Path) -> Path | None:
    for candidate in ("items.jsonl", "items.csv"):
        if (path.parent / candidate).is_file():
            return path.parent / candidate
    return None


def _load_items(path: str | Path | None) -> list[CatalogItem]:
    if path is None:
        return []
    path = Path(path)
    items = []
    if path.name.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    items.append(_item_or_error(path, line_no, lambda line=line: json.loads(line)))
        return items
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        _require_columns(path, reader.fieldnames, ("item_id",))
        for line_no, row in enumerate(reader, start=2):
            items.append(_item_or_error(path, line_no, lambda row=row: _item_record_from_csv(row)))
    return items


def _item_or_error(path: Path, line_no: int, make_record) -> CatalogItem:  # noqa: ANN001
    try:
        return validate_item(make_record())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not JSON: {e.msg}") from e
    except InvalidRecord as e:
        raise DataError(f"{path}:{line_no}: {e}") from e


def _item_record_from_csv(row: dict[str, str | None]) -> dict[str, object]:
    price_text = (row.get("price") or "0").strip()
    try:
        price = float(price_text)
    except ValueError as e:
        raise InvalidRecord("price", f"not a number: {price_text[:40]!r}") from e
    stock = (row.get("in_stock") or "true").strip().lower()
    if stock not in ("true", "false", "1", "0", "yes", "no"):
        raise InvalidRecord("in_stock", f"expected true/false, got {stock[:40]!r}")
    updated = row.get("updated_at") or ""
    return {"item_id": row.get("item_id") or "", "title": row.get("title") or "",
            "category": row.get("category") or "", "brand": row.get("brand") or "", "price": price,
            "tags": [t for t in (row.get("tags") or "").split("|") if t],
            "in_stock": stock in ("true", "1", "yes"),
            "updated_at": _parse_timestamp(updated) if updated.strip() else MIN_TIMESTAMP_MS}


# ----------------------------------------------------------------------------- shared helpers

def _require_columns(path: Path, fieldnames: Iterable[str] | None, required: Iterable[str]) -> None:
    present = set(fieldnames or [])
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} in header "
                        f"{sorted(present)}")
