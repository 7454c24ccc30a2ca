"""The product event contract (``product_event.avsc``): parse, validate, encode.

On Pub/Sub an event travels as a plain JSON object (``docs/events.md``): the five required
fields, and ``session_id`` / ``context`` only when set (or as ``null``). Avro's JSON encoding of
the optional fields (``{"session_id": {"string": "s1"}}``) is accepted as well. The topics carry
no Pub/Sub schema, locally or on Google Cloud: the emulator and Pub/Sub refuse a minimal event
under the Avro binding, so the pipeline validates every message with :func:`parse_event` and
dead-letters the invalid ones with the reason. Ids follow :mod:`schemas.ids`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas._avro import (
    MAX_STRING_CHARS,
    decode_json_payload,
    load_schema,
    schema_text,
    unwrap_unions,
    validate_record,
)
from schemas.errors import InvalidRecord
from schemas.ids import MAX_ID_CHARS, check_id, control_character
from schemas.names import FORGET_KIND, KIND_ATTR

SCHEMA_FILE = "product_event.avsc"
EVENT_TYPES = ("view", "add_to_cart", "purchase")
MAX_CONTEXT_ENTRIES = 32
# Events are accepted from 2000-01-01 up to one day in the future (clock skew).
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class ProductEvent:
    """A validated product event."""

    event_id: str
    event_type: str
    user_id: str
    item_id: str
    timestamp: int
    session_id: str | None = None
    context: dict[str, str] | None = field(default=None, compare=True)
    recommendation_id: str | None = None  # the served list it followed from (schemas.experiments)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (unions not wrapped), in schema order; ``recommendation_id`` only if set."""
        # explicit rather than dataclasses.asdict (a recursive deep copy): the pipeline archives
        # every accepted event, and asdict was 4% of its worker thread's time under a backlog
        d = {"event_id": self.event_id, "event_type": self.event_type, "user_id": self.user_id,
             "item_id": self.item_id, "timestamp": self.timestamp, "session_id": self.session_id,
             "context": dict(self.context) if self.context is not None else None}
        if self.recommendation_id is not None:  # added later: absent, old archive lines stay as they were
            d["recommendation_id"] = self.recommendation_id
        return d

    def to_pubsub_data(self) -> bytes:
        """The Pub/Sub message body: plain JSON, optional fields only when set (``docs/events.md``)."""
        body = {k: v for k, v in self.to_dict().items() if v is not None}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def pubsub_attributes(self) -> dict[str, str]:
        """Message attributes: let subscribers filter without parsing the body."""
        return {"event_id": self.event_id, "event_type": self.event_type, "user_id": self.user_id}


def event_schema() -> dict[str, Any]:
    """The parsed Avro schema of a product event."""
    return load_schema(SCHEMA_FILE)


def event_schema_text() -> str:
    """The Avro schema file's text, as Terraform and Pub/Sub read it."""
    return schema_text(SCHEMA_FILE)


def validate_event(record: Mapping[str, Any]) -> ProductEvent:
    """Validate a decoded JSON object; return the event or raise ``InvalidRecord``."""
    if not isinstance(record, Mapping):
        raise InvalidRecord("payload", f"expected a JSON object, got {type(record).__name__}")
    schema = event_schema()
    rec = unwrap_unions(dict(record), schema)
    validate_record(rec, schema)
    for name in ("event_id", "user_id", "item_id"):
        _check_id(name, rec[name])
    ts = rec["timestamp"]
    if isinstance(ts, bool):
        raise InvalidRecord("timestamp", "wrong type: got bool, expected epoch milliseconds")
    now_ms = int(time.time() * 1000)
    if ts < MIN_TIMESTAMP_MS:
        raise InvalidRecord("timestamp", f"{ts} is before 2000-01-01 (epoch milliseconds expected)")
    if ts > now_ms + MAX_FUTURE_SKEW_MS:
        raise InvalidRecord("timestamp", f"{ts} is more than a day in the future")
    session_id = rec.get("session_id")
    if session_id is not None:
        if len(session_id) > MAX_ID_CHARS:
            raise InvalidRecord("session_id", f"longer than {MAX_ID_CHARS} characters")
        if control_character(session_id) is not None:
            raise InvalidRecord("session_id", "must not contain control characters")
    recommendation_id = rec.get("recommendation_id")
    if recommendation_id is not None:
        _check_id("recommendation_id", recommendation_id)
    context = rec.get("context")
    if context is not None:
        if len(context) > MAX_CONTEXT_ENTRIES:
            raise InvalidRecord("context", f"more than {MAX_CONTEXT_ENTRIES} entries")
        for key, value in context.items():
            if not key:  # Avro allows it, but fastavro's JSON encoder fails on an empty map key
                raise InvalidRecord("context", "keys must not be empty")
            if len(key) > MAX_ID_CHARS or len(value) > MAX_STRING_CHARS:
                raise InvalidRecord("context", "key or value too long")
    return ProductEvent(
        event_id=rec["event_id"], event_type=rec["event_type"], user_id=rec["user_id"],
        item_id=rec["item_id"], timestamp=int(ts), session_id=session_id,
        context=dict(context) if context is not None else None, recommendation_id=recommendation_id)


def parse_event(data: bytes | str) -> ProductEvent:
    """Parse a Pub/Sub message body (Avro JSON or plain JSON); raise ``InvalidRecord``."""
    return validate_event(decode_json_payload(data))


def _check_id(name: str, value: str) -> None:
    """The id contract (:func:`schemas.ids.check_id`); kept for the loaders that import it."""
    check_id(name, value)


@dataclass(frozen=True)
class ForgetRequest:
    """A control message on the events topic: forget ``user_id``'s events up to ``timestamp``.

    Published with the attribute ``kind=forget`` (``schemas.names``) and a body that is not a
    valid product event (no ``event_id``, ``event_type`` or ``item_id``), so a reader that does
    not know the kind dead-letters it instead of counting it. ``request_id`` is the key that makes
    a redelivered request a no-op; ``timestamp`` (epoch ms, when the request was accepted) is the
    forget time: the user's events at or before it are gone for good.
    """

    request_id: str
    user_id: str
    timestamp: int

    @property
    def event_id(self) -> str:  # dead-letter routing and logs name it like an event
        return self.request_id

    def to_dict(self) -> dict[str, Any]:
        """The body and the archive's tombstone line."""
        return {"kind": FORGET_KIND, "request_id": self.request_id, "user_id": self.user_id,
                "timestamp": self.timestamp}

    def to_pubsub_data(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def pubsub_attributes(self) -> dict[str, str]:
        return {KIND_ATTR: FORGET_KIND, "user_id": self.user_id, "request_id": self.request_id}


def is_forget(attributes: Mapping[str, str] | None, record: Mapping[str, Any] | None = None) -> bool:
    """A message (by its attributes) or an archive line (by its ``kind``) is a forget request."""
    if attributes and attributes.get(KIND_ATTR) == FORGET_KIND:
        return True
    return isinstance(record, Mapping) and record.get("kind") == FORGET_KIND


def validate_forget(record: Mapping[str, Any]) -> ForgetRequest:
    """Validate a decoded forget body or tombstone line; raise ``InvalidRecord``."""
    if not isinstance(record, Mapping):
        raise InvalidRecord("payload", f"expected a JSON object, got {type(record).__name__}")
    for name in ("request_id", "user_id"):
        _check_id(name, record.get(name))
    ts = record.get("timestamp")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < MIN_TIMESTAMP_MS:
        raise InvalidRecord("timestamp", "expected epoch milliseconds after 2000-01-01")
    return ForgetRequest(request_id=record["request_id"], user_id=record["user_id"], timestamp=ts)


def parse_forget(data: bytes | str) -> ForgetRequest:
    """Parse a forget message body; raise ``InvalidRecord``."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRecord("payload", f"not JSON: {e}") from e
    return validate_forget(record)
