"""The id contract: what an event, user or item id may be, on the write and the read path.

One rule, used by every path that accepts an id:

* ingest and the pipeline (``schemas.events.validate_event``, ``schemas.catalog.validate_item``)
  reject a bad id as ``InvalidRecord`` (the pipeline dead-letters it with the reason);
* the recommend function (``recommender.params.check_id``) answers 400 naming the parameter;
* ``functions/recommend/openapi.yaml`` states the same limits (a unit test compares them).

An id is valid when it is

* a string of 1 to :data:`MAX_ID_CHARS` characters, not only whitespace;
* free of control characters (Unicode category ``Cc``: NUL, ``\\n``, DEL, C1 ...): they cannot be
  typed in a query string, break logs and Pub/Sub attributes, and a stored id that no request can
  name is an item nobody can be served;
* valid Unicode (no lone surrogate);
* a usable Firestore document id: no ``/``, not ``.`` or ``..``, not ``__...__`` (reserved).

Why 256 characters: every id must fit every place it is written. At most 4 UTF-8 bytes a
character, 256 characters are at most 1,024 bytes: within Firestore's 1,500-byte document-id
limit (``users/{user_id}``, ``items/{item_id}``) and exactly Pub/Sub's 1,024-byte limit on an
attribute value (``event_id`` and ``user_id`` travel as attributes). Percent-encoded in a GET
query string (at most 12 characters per character) a 256-character id is at most 3,072
characters, so a request naming it stays within a 4 KiB request line, the smallest limit common
HTTP servers default to (functions-framework lifts gunicorn's 4,094 altogether): the function
can be asked about any stored id. Ingest accepted 256 characters before this contract existed; keeping the
limit means no stored user or item becomes unreachable.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from schemas.errors import InvalidRecord

MIN_ID_CHARS = 1
MAX_ID_CHARS = 256
MAX_ID_UTF8_BYTES = 4 * MAX_ID_CHARS  # what MAX_ID_CHARS can take as UTF-8, at most

__all__ = ["MAX_ID_CHARS", "MAX_ID_UTF8_BYTES", "MIN_ID_CHARS", "check_id", "control_character",
           "id_problem"]


def control_character(value: str) -> int | None:
    """The index of the first control character (category ``Cc``) in ``value``, or None."""
    for i, c in enumerate(value):
        if unicodedata.category(c) == "Cc":
            return i
    return None


def id_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid id (a reason to show the caller), or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"longer than {MAX_ID_CHARS} characters"
    if (i := control_character(value)) is not None:
        return f"must not contain control characters (U+{ord(value[i]):04X} at character {i})"
    for i, c in enumerate(value):
        if 0xD800 <= ord(c) <= 0xDFFF:
            return f"not valid Unicode: lone surrogate at character {i}"
    if "/" in value or value in (".", "..") or (len(value) >= 4 and value.startswith("__")
                                                and value.endswith("__")):
        return ("must not contain '/', be '.' or '..', or match '__...__' "
                "(it is used as a Firestore document id)")
    return None


def check_id(field: str, value: Any) -> str:
    """``value`` if it is a valid id; otherwise raise ``InvalidRecord(field, reason)``."""
    if (problem := id_problem(value)) is not None:
        raise InvalidRecord(field, problem)
    return value
