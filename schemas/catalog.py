"""The catalogue item contract (``catalog_item.avsc``): parse, validate, encode.

``item_id`` follows the id contract (:mod:`schemas.ids`). On Pub/Sub an item is a plain JSON
object with every field (the schema has no optional field, so this is also its Avro JSON form).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from schemas._avro import (
    MAX_STRING_CHARS,
    decode_json_payload,
    load_schema,
    schema_text,
    to_avro_json,
    validate_record,
)
from schemas.errors import InvalidRecord
from schemas.ids import check_id

SCHEMA_FILE = "catalog_item.avsc"
MAX_TAGS = 64


@dataclass(frozen=True)
class CatalogItem:
    """A validated catalogue item."""

    item_id: str
    title: str
    category: str
    brand: str
    price: float
    tags: tuple[str, ...]
    in_stock: bool
    updated_at: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d

    def to_pubsub_data(self) -> bytes:
        return to_avro_json(self.to_dict(), catalog_schema())


def catalog_schema() -> dict[str, Any]:
    return load_schema(SCHEMA_FILE)


def catalog_schema_text() -> str:
    return schema_text(SCHEMA_FILE)


def validate_item(record: Mapping[str, Any]) -> CatalogItem:
    """Validate a decoded JSON object; return the item or raise ``InvalidRecord``."""
    if not isinstance(record, Mapping):
        raise InvalidRecord("payload", f"expected a JSON object, got {type(record).__name__}")
    rec = dict(record)
    if isinstance(rec.get("price"), int) and not isinstance(rec.get("price"), bool):
        rec["price"] = float(rec["price"])
    validate_record(rec, catalog_schema())
    check_id("item_id", rec["item_id"])
    for name in ("title", "category", "brand"):
        if len(rec[name]) > MAX_STRING_CHARS:
            raise InvalidRecord(name, f"longer than {MAX_STRING_CHARS} characters")
    if not math.isfinite(rec["price"]) or rec["price"] < 0:
        raise InvalidRecord("price", f"must be a finite number >= 0, got {rec['price']!r}")
    if len(rec["tags"]) > MAX_TAGS:
        raise InvalidRecord("tags", f"more than {MAX_TAGS} tags")
    if any(len(t) > MAX_STRING_CHARS for t in rec["tags"]):
        raise InvalidRecord("tags", f"a tag is longer than {MAX_STRING_CHARS} characters")
    return CatalogItem(item_id=rec["item_id"], title=rec["title"], category=rec["category"],
                       brand=rec["brand"], price=float(rec["price"]), tags=tuple(rec["tags"]),
                       in_stock=rec["in_stock"], updated_at=int(rec["updated_at"]))


def parse_item(data: bytes | str) -> CatalogItem:
    """Parse a catalogue-update message body; raise ``InvalidRecord``."""
    return validate_item(decode_json_payload(data))
