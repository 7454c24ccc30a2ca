"""Avro helpers: load a schema file once, validate and (de)serialise with fastavro."""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import ValidationError, validate

from schemas.errors import InvalidRecord

SCHEMA_DIR = Path(__file__).resolve().parent
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_STRING_CHARS = 1024


@cache
def load_schema(file_name: str) -> dict[str, Any]:
    """The parsed Avro schema stored as ``schemas/<file_name>``."""
    with open(SCHEMA_DIR / file_name, encoding="utf-8") as f:
        return fastavro.parse_schema(json.load(f))


def schema_text(file_name: str) -> str:
    """The schema file's text, as given to Pub/Sub and Terraform."""
    return (SCHEMA_DIR / file_name).read_text(encoding="utf-8")


def decode_json_payload(data: bytes | str) -> dict[str, Any]:
    """Bytes from the wire to a JSON object, or ``InvalidRecord`` saying why not."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) > MAX_PAYLOAD_BYTES:
            raise InvalidRecord("payload", f"too large: {len(data)} bytes > {MAX_PAYLOAD_BYTES}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRecord("payload", f"not valid UTF-8 at byte {e.start}") from e
    else:
        text = data
        if len(text.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD_BYTES:
            raise InvalidRecord("payload", f"too large: more than {MAX_PAYLOAD_BYTES} bytes")
    if not text.strip():
        raise InvalidRecord("payload", "empty")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise InvalidRecord("payload", f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidRecord("payload", f"expected a JSON object, got {type(value).__name__}")
    return value


def unwrap_unions(record: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Accept Avro's JSON encoding of unions (``{"string": "x"}``) as well as plain values.

    A one-entry object is read as a wrapped union value only if its key names a non-null branch
    and its value is of that branch (Avro JSON writes null as plain ``null``): a plain map such
    as ``{"null": ""}`` or ``{"map": "x"}`` stays a map.
    """
    out = dict(record)
    for field in schema["fields"]:
        name, ftype = field["name"], field["type"]
        if isinstance(ftype, list) and isinstance(out.get(name), dict) and len(out[name]) == 1:
            (branch, value), = out[name].items()
            branches = {t if isinstance(t, str) else t.get("type"): t for t in ftype}
            if branch != "null" and branch in branches and validate(value, branches[branch],
                                                                     raise_errors=False):
                out[name] = value
    return out


def validate_record(record: dict[str, Any], schema: dict[str, Any]) -> None:
    """Raise ``InvalidRecord`` naming the first field that breaks ``schema``."""
    known = {f["name"] for f in schema["fields"]}
    for key in record:
        if key not in known:
            raise InvalidRecord(_safe_name(key), "unknown field")
    for field in schema["fields"]:
        name = field["name"]
        if name not in record and "default" not in field:
            raise InvalidRecord(name, "missing required field")
        if name in record:
            try:
                validate(record[name], field["type"], raise_errors=True, field=name)
            except ValidationError as e:
                raise InvalidRecord(name, f"wrong type or value: got {_describe(record[name])}, "
                                          f"expected {_type_name(field['type'])}") from e
            except (TypeError, ValueError, AttributeError) as e:
                raise InvalidRecord(name, f"wrong type: got {_describe(record[name])}") from e
            _check_unicode(name, record[name])


def _check_unicode(name: str, value: Any) -> None:
    """Strings must be encodable as UTF-8: a lone surrogate (JSON ``"\\ud800"``) is not,
    and would fail later as a Pub/Sub attribute or a Firestore document id."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRecord(name, f"not valid Unicode: lone surrogate at character {e.start}") from e
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(name, key)
            _check_unicode(name, item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_unicode(name, item)


def to_avro_json(record: dict[str, Any], schema: dict[str, Any]) -> bytes:
    """Avro JSON encoding of one record (unions wrapped), as Pub/Sub schemas expect."""
    buf = io.StringIO()
    fastavro.json_writer(buf, schema, [record])
    return buf.getvalue().strip().encode("utf-8")


def _safe_name(key: Any) -> str:
    text = str(key)
    return text if len(text) <= 64 else text[:61] + "..."


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _type_name(ftype: Any) -> str:
    if isinstance(ftype, list):
        return " or ".join(_type_name(t) for t in ftype)
    if isinstance(ftype, dict):
        if ftype.get("type") == "enum":
            return "one of " + ", ".join(ftype["symbols"])
        if ftype.get("type") == "map":
            return f"map of {_type_name(ftype['values'])}"
        if ftype.get("type") == "array":
            return f"array of {_type_name(ftype['items'])}"
        if "logicalType" in ftype:
            return f"{ftype['type']} ({ftype['logicalType']})"
        return str(ftype.get("type"))
    return str(ftype)
