"""Firestore document layout, written down once.

Collections (names in :mod:`schemas.names`):

* ``users/{user_id}``: :class:`UserDoc`, written by the streaming pipeline,
  read by the recommend function. Its ``history`` is ONE string, the JSON array of
  ``[event_id, item_id, event_type, timestamp]`` rows, oldest first (:func:`pack_history`):
  Firestore stores and indexes one value instead of 4 x 50, which cut the emulator's CPU per
  document write by about 75 % and a client's ``get_all`` + decode by about 75 %; documents
  written before (``history`` a list of maps) are still read.
* ``items/{item_id}``: :class:`ItemDoc`, written by the training job (publish)
  and by the pipeline for catalogue updates, read by the recommend function.
* ``models/{version}``: :class:`ModelDoc`; ``models/current``: :class:`CurrentModelDoc`,
  switched by the training job only after all items of a version are written.
* ``stats/trending``: :class:`TrendingDoc`, written by the pipeline.

All times are epoch milliseconds (ints). Embeddings are stored as Firestore
vectors so that ``find_nearest`` can query them; the codecs accept plain lists too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.catalog import CatalogItem

try:  # the Firestore client is optional for code that only reads documents as dicts
    from google.cloud.firestore_v1.vector import Vector
except ImportError:  # pragma: no cover - exercised only without google-cloud-firestore
    Vector = None  # type: ignore[assignment,misc]


def _to_vector(values: Sequence[float] | None) -> Any:
    if values is None:
        return None
    floats = [float(v) for v in values]
    return Vector(floats) if Vector is not None else floats


def _from_vector(value: Any) -> list[float] | None:
    if value is None:
        return None
    return [float(v) for v in (value.to_map_value()["value"] if hasattr(value, "to_map_value")
                               else value)]


@dataclass(frozen=True)
class HistoryEntry:
    """One interaction in a user's recent history."""

    event_id: str
    item_id: str
    event_type: str
    timestamp: int

    def to_document(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "item_id": self.item_id,
                "event_type": self.event_type, "timestamp": self.timestamp}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> HistoryEntry:
        """An entry of the list-of-maps ``history`` written before it was packed."""
        return cls(event_id=str(doc["event_id"]), item_id=str(doc["item_id"]),
                   event_type=str(doc["event_type"]), timestamp=int(doc["timestamp"]))

    def to_row(self) -> list[Any]:
        """``[event_id, item_id, event_type, timestamp]``: one row of a packed history."""
        return [self.event_id, self.item_id, self.event_type, self.timestamp]

    @classmethod
    def from_row(cls, row: Any) -> HistoryEntry:
        if type(row) is list and len(row) == 4 and type(row[0]) is str and type(row[1]) is str \
                and type(row[2]) is str and type(row[3]) is int:
            return cls(*row)  # the stored form: no conversions (a serving request reads ~50 rows)
        if not isinstance(row, list) or len(row) != 4:
            raise ValueError(f"a history row is [event_id, item_id, event_type, timestamp], got {row!r}")
        event_id, item_id, event_type, timestamp = row
        return cls(event_id=str(event_id), item_id=str(item_id), event_type=str(event_type),
                   timestamp=int(timestamp))


def pack_history(entries: Sequence[HistoryEntry]) -> str:
    """The stored form of a history: a compact JSON array of :meth:`HistoryEntry.to_row` rows."""
    return json.dumps([h.to_row() for h in entries], separators=(",", ":"), ensure_ascii=False)


def unpack_history(value: Any) -> tuple[HistoryEntry, ...]:
    """Read a stored ``history``: the packed JSON string, or the older list of maps.

    Raises ``ValueError``/``TypeError``/``KeyError`` for a malformed value.
    """
    if not value:
        return ()
    if isinstance(value, (str, bytes)):
        rows = json.loads(value)
        if not isinstance(rows, list):
            raise ValueError(f"a packed history is a JSON array, got {type(rows).__name__}")
        return tuple(HistoryEntry.from_row(r) for r in rows)
    return tuple(HistoryEntry.from_document(h) for h in value)


MAX_SEEN = 1000  # items kept in users/{id}.seen: the oldest drop out past it


def with_seen(seen: tuple[str, ...], items: Iterable[str], limit: int = MAX_SEEN) -> tuple[str, ...]:
    """``seen`` with ``items`` moved to (or added at) the newest end; distinct, at most ``limit``."""
    merged = dict.fromkeys(seen)
    for item in items:
        merged.pop(item, None)
        merged[item] = None
    out = tuple(merged)
    return out[-limit:] if len(out) > limit else out


@dataclass(frozen=True)
class UserDoc:
    """``users/{user_id}``: the user's fresh embedding and recent history (oldest first).

    Stored with ``history`` packed into one JSON string (:func:`pack_history`).
    """

    user_id: str
    history: tuple[HistoryEntry, ...]
    last_event_id: str
    last_event_ts: int
    updated_at: int
    model_version: str | None = None
    embedding: tuple[float, ...] | None = None
    event_count: int = 0
    # Optional: ids of items the user interacted with before the ``history`` window (distinct,
    # newest last, at most ``MAX_SEEN``; stored as one JSON string like ``history``).
    # ``exclude_seen`` excludes history and seen; empty in documents written without it.
    seen: tuple[str, ...] = ()

    def to_document(self) -> dict[str, Any]:
        doc = {
            "user_id": self.user_id,
            "history": pack_history(self.history),
            "last_event_id": self.last_event_id,
            "last_event_ts": self.last_event_ts,
            "updated_at": self.updated_at,
            "model_version": self.model_version,
            "embedding": _to_vector(self.embedding),
            "event_count": self.event_count,
        }
        if self.seen:
            doc["seen"] = json.dumps(list(self.seen), separators=(",", ":"), ensure_ascii=False)
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> UserDoc:
        emb = _from_vector(doc.get("embedding"))
        return cls(
            user_id=str(doc["user_id"]),
            history=unpack_history(doc.get("history")),
            last_event_id=str(doc.get("last_event_id") or ""),
            last_event_ts=int(doc.get("last_event_ts") or 0),
            updated_at=int(doc.get("updated_at") or 0),
            model_version=doc.get("model_version"),
            embedding=tuple(emb) if emb is not None else None,
            event_count=int(doc.get("event_count") or 0),
            seen=_unpack_ids(doc.get("seen")),
        )


def _unpack_ids(value: Any) -> tuple[str, ...]:
    """A stored id list: the packed JSON string, or a plain list."""
    if not value:
        return ()
    ids = json.loads(value) if isinstance(value, (str, bytes)) else value
    if not isinstance(ids, list):
        raise ValueError(f"seen is a JSON array of ids, got {type(ids).__name__}")
    return tuple(str(i) for i in ids)


@dataclass(frozen=True)
class ItemDoc:
    """``items/{item_id}``: catalogue attributes plus the model's vectors for this item."""

    item: CatalogItem
    embedding: tuple[float, ...] | None = None
    content_vector: tuple[float, ...] | None = None
    model_version: str | None = None
    popularity: float = 0.0
    # epoch ms when this document was (re)written; serving polls items newer than its snapshot
    indexed_at: int = 0

    @property
    def item_id(self) -> str:
        return self.item.item_id

    def to_document(self) -> dict[str, Any]:
        doc = self.item.to_dict()
        doc.update({
            "embedding": _to_vector(self.embedding),
            "content_vector": list(self.content_vector) if self.content_vector is not None else None,
            "model_version": self.model_version,
            "popularity": float(self.popularity),
            "indexed_at": int(self.indexed_at),
        })
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ItemDoc:
        item = CatalogItem(
            item_id=str(doc["item_id"]), title=str(doc.get("title", "")),
            category=str(doc.get("category", "")), brand=str(doc.get("brand", "")),
            price=float(doc.get("price", 0.0)), tags=tuple(doc.get("tags") or ()),
            in_stock=bool(doc.get("in_stock", True)), updated_at=int(doc.get("updated_at") or 0))
        emb = _from_vector(doc.get("embedding"))
        content = doc.get("content_vector")
        return cls(item=item, embedding=tuple(emb) if emb is not None else None,
                   content_vector=tuple(float(v) for v in content) if content is not None else None,
                   model_version=doc.get("model_version"),
                   popularity=float(doc.get("popularity") or 0.0),
                   indexed_at=int(doc.get("indexed_at") or 0))


@dataclass(frozen=True)
class ModelDoc:
    """``models/{version}``: one trained model version.

    ``status`` is ``"publishing"`` while its items are being written and ``"ready"`` after.
    ``artifact_uri`` is the artefact directory (local path or ``gs://``); ``index_uri`` the
    item-index snapshot inside it (see :mod:`schemas.index_snapshot`). ``serving_defaults``
    (optional): the version's measured ``alpha`` / ``min_pool`` / ``alpha_by_history``
    (:class:`scoring.rank.ScoringDefaults`); absent in documents written before it existed.
    """

    version: str
    status: str
    created_at: int
    artifact_uri: str
    index_uri: str
    dim: int
    item_count: int
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    serving_defaults: dict[str, Any] | None = None

    def to_document(self) -> dict[str, Any]:
        doc = {"version": self.version, "status": self.status, "created_at": self.created_at,
               "artifact_uri": self.artifact_uri, "index_uri": self.index_uri, "dim": self.dim,
               "item_count": self.item_count, "params": dict(self.params),
               "metrics": dict(self.metrics), "parent_version": self.parent_version}
        if self.serving_defaults:
            doc["serving_defaults"] = dict(self.serving_defaults)
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ModelDoc:
        return cls(version=str(doc["version"]), status=str(doc["status"]),
                   created_at=int(doc["created_at"]), artifact_uri=str(doc["artifact_uri"]),
                   index_uri=str(doc["index_uri"]), dim=int(doc["dim"]),
                   item_count=int(doc["item_count"]), params=dict(doc.get("params") or {}),
                   metrics=dict(doc.get("metrics") or {}),
                   parent_version=doc.get("parent_version"),
                   serving_defaults=dict(doc["serving_defaults"]) if doc.get("serving_defaults") else None)


@dataclass(frozen=True)
class CurrentModelDoc:
    """``models/current``: which version serves now (``serving_defaults`` as in :class:`ModelDoc`)."""

    version: str
    artifact_uri: str
    index_uri: str
    switched_at: int
    serving_defaults: dict[str, Any] | None = None

    def to_document(self) -> dict[str, Any]:
        doc = {"version": self.version, "artifact_uri": self.artifact_uri,
               "index_uri": self.index_uri, "switched_at": self.switched_at}
        if self.serving_defaults:
            doc["serving_defaults"] = dict(self.serving_defaults)
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> CurrentModelDoc:
        return cls(version=str(doc["version"]), artifact_uri=str(doc["artifact_uri"]),
                   index_uri=str(doc["index_uri"]), switched_at=int(doc["switched_at"]),
                   serving_defaults=dict(doc["serving_defaults"]) if doc.get("serving_defaults") else None)


@dataclass(frozen=True)
class TrendingEntry:
    item_id: str
    views: int
    add_to_cart: int
    purchases: int
    score: float

    def to_document(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "views": self.views, "add_to_cart": self.add_to_cart,
                "purchases": self.purchases, "score": self.score}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> TrendingEntry:
        return cls(item_id=str(doc["item_id"]), views=int(doc.get("views", 0)),
                   add_to_cart=int(doc.get("add_to_cart", 0)),
                   purchases=int(doc.get("purchases", 0)), score=float(doc.get("score", 0.0)))


@dataclass(frozen=True)
class TrendingDoc:
    """``stats/trending``: items ranked by score in the latest sliding window."""

    items: tuple[TrendingEntry, ...]
    window_start: int
    window_end: int
    updated_at: int

    def to_document(self) -> dict[str, Any]:
        return {"items": [e.to_document() for e in self.items], "window_start": self.window_start,
                "window_end": self.window_end, "updated_at": self.updated_at}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> TrendingDoc:
        return cls(items=tuple(TrendingEntry.from_document(e) for e in doc.get("items") or ()),
                   window_start=int(doc.get("window_start") or 0),
                   window_end=int(doc.get("window_end") or 0),
                   updated_at=int(doc.get("updated_at") or 0))
