"""Compatibility shim for google-cloud-firestore 2.34.1: ``set`` writes built on the raw protobuf.

``WriteBatch.set`` encodes through proto-plus, the largest CPU cost of the pipeline's user
writes; this builds the identical ``Write`` message directly and adds it with the batch's
private ``_add_write_pbs``. Pinned by ``tests/unit/test_compat_pipelines.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def add_sets(batch: Any, writes: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
    """Add ``batch.set(ref, data)`` for every pair, without proto-plus encoding."""
    batch._add_write_pbs([set_write_pb(ref._document_path, data) for ref, data in writes])


def _fill_value(pb: Any, value: Any) -> None:
    """Set the raw ``Value`` message ``pb`` to ``value`` (the types ``to_document`` produces)."""
    from google.cloud.firestore_v1.vector import Vector
    from google.protobuf import struct_pb2

    if value is None:
        pb.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        pb.boolean_value = value
    elif isinstance(value, int):
        pb.integer_value = value
    elif isinstance(value, float):
        pb.double_value = value
    elif isinstance(value, str):
        pb.string_value = value
    elif isinstance(value, (list, tuple)):
        array = pb.array_value
        array.SetInParent()
        values = array.values
        for v in value:
            _fill_value(values.add(), v)
    elif isinstance(value, Mapping):
        fields_ = pb.map_value
        fields_.SetInParent()
        fields = fields_.fields
        for k, v in value.items():
            _fill_value(fields[k], v)
    elif isinstance(value, Vector):
        _fill_value(pb, value.to_map_value())
    else:
        raise TypeError(f"cannot encode {type(value).__name__} for Firestore")


def set_write_pb(document_path: str, data: Mapping[str, Any]) -> Any:
    """The ``Write`` (proto-plus wrapper) that ``WriteBatch.set(ref, data)`` would add.

    Built on the raw protobuf: the same message (a unit test compares them) at a fraction of the
    client's proto-plus encoding CPU, which dominated writing ``users/*`` (docs/benchmarks.md).
    """
    from google.cloud.firestore_v1.types import write as write_types

    raw = write_types.Write.pb()()
    doc = raw.update
    doc.name = document_path
    fields = doc.fields
    for key, value in data.items():
        _fill_value(fields[key], value)
    return write_types.Write.wrap(raw)
