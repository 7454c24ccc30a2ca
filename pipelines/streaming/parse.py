"""Parse and validate Pub/Sub messages; route invalid ones to the dead-letter output.

A dead letter keeps the original payload byte for byte and the original attributes, plus
``dlq_reason``, ``dlq_field`` and ``dlq_source`` (:mod:`schemas.names`), so it can be fixed
and republished. Nothing in here raises on bad input.

The later stages route what they fail on the same way (:func:`failed_record`): the record
re-encoded as it was published (the canonical JSON of the event or item), ``dlq_reason``
``"<stage>: <error>"`` and ``dlq_field`` naming the stage, so an operator can republish it once
the cause is fixed (the per-user dedup drops whatever was counted meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from schemas import names
from schemas.catalog import parse_item
from schemas.errors import InvalidRecord
from schemas.events import is_forget, parse_event, parse_forget

DEAD_LETTER = "dead_letter"
SOURCE_EVENTS = "events"
SOURCE_CATALOG = "catalog"
METRICS_NAMESPACE = "streaming"
# Pub/Sub limits an attribute value to 1024 bytes.
MAX_ATTR_CHARS = 1000


def message_parts(message: Any) -> tuple[bytes, dict[str, str]]:
    """The payload and attributes of a ``PubsubMessage`` or of raw bytes (no attributes)."""
    if isinstance(message, PubsubMessage):
        return message.data or b"", dict(message.attributes or {})
    if isinstance(message, str):
        return message.encode("utf-8"), {}
    return bytes(message), {}


def dead_letter(data: bytes, attributes: Mapping[str, str], error: InvalidRecord,
                source: str) -> PubsubMessage:
    """The dead-letter message: original payload and attributes, plus why it was rejected."""
    attrs = dict(attributes)
    attrs[names.DLQ_REASON_ATTR] = error.reason[:MAX_ATTR_CHARS]
    attrs[names.DLQ_FIELD_ATTR] = error.field[:MAX_ATTR_CHARS]
    attrs[names.DLQ_SOURCE_ATTR] = source
    return PubsubMessage(data=data, attributes=attrs)


def failed_record(record: Any, stage: str, error: BaseException) -> PubsubMessage:
    """The dead letter of an event or catalogue item that a stage after parsing failed on."""
    source = SOURCE_EVENTS if hasattr(record, "event_id") else SOURCE_CATALOG
    attributes = record.pubsub_attributes() if hasattr(record, "pubsub_attributes") else {}
    reason = f"{stage}: {type(error).__name__}: {error}"
    return dead_letter(record.to_pubsub_data(), attributes, InvalidRecord(stage, reason), source)


def stage_failures(stage: str) -> Any:
    """The counter of records a stage sent to the dead-letter topic (``<stage>_failed``)."""
    return Metrics.counter(METRICS_NAMESPACE, f"{stage}_failed")


class ParseFn(beam.DoFn):
    """Message -> a validated record (via ``parse``), or a dead letter tagged with ``source``.

    Valid and invalid messages are counted as ``<counter_prefix>_valid`` / ``_invalid``.
    """

    def __init__(self, parse: Callable[[bytes], Any], source: str, counter_prefix: str) -> None:
        self.parse = parse
        self.source = source
        self.valid = Metrics.counter(METRICS_NAMESPACE, f"{counter_prefix}_valid")
        self.invalid = Metrics.counter(METRICS_NAMESPACE, f"{counter_prefix}_invalid")

    def process(self, message: Any) -> Iterator[Any]:
        data, attributes = message_parts(message)
        try:
            record = self.parse(data)
        except InvalidRecord as e:
            self.invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(data, attributes, e, self.source))
            return
        self.valid.inc()
        yield self.emit(record)

    def emit(self, record: Any) -> Any:
        return record


class ParseEventFn(ParseFn):
    """Message -> ``ProductEvent`` (or ``ForgetRequest``, attribute ``kind=forget``) timestamped
    with its event time, or a dead letter."""

    def __init__(self) -> None:
        super().__init__(parse_event, SOURCE_EVENTS, "events")
        self.forgets = Metrics.counter(METRICS_NAMESPACE, "forget_requests")

    def process(self, message: Any) -> Iterator[Any]:
        data, attributes = message_parts(message)
        if not is_forget(attributes):
            yield from super().process(message)
            return
        try:
            request = parse_forget(data)
        except InvalidRecord as e:
            self.invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(data, attributes, e, self.source))
            return
        self.forgets.inc()
        yield self.emit(request)

    def emit(self, event: Any) -> Any:
        return TimestampedValue(event, event.timestamp / 1000.0)


class ParseCatalogFn(ParseFn):
    """Message -> ``CatalogItem``, or a dead letter."""

    def __init__(self) -> None:
        super().__init__(parse_item, SOURCE_CATALOG, "catalog")


class ParseEvents(beam.PTransform):
    """Pub/Sub messages -> tagged outputs ``valid`` (``ProductEvent``) and ``dead_letter``."""

    def expand(self, messages: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return messages | "Parse" >> beam.ParDo(ParseEventFn()).with_outputs(DEAD_LETTER, main="valid")


class ParseCatalog(beam.PTransform):
    """Pub/Sub messages -> tagged outputs ``valid`` (``CatalogItem``) and ``dead_letter``."""

    def expand(self, messages: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return messages | "Parse" >> beam.ParDo(ParseCatalogFn()).with_outputs(DEAD_LETTER, main="valid")
