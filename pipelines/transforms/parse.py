"""Parse and validate Pub/Sub messages; route invalid ones to the dead-letter output.

A dead letter keeps the original payload byte for byte and the original attributes, plus
``dlq_reason``, ``dlq_field`` and ``dlq_source`` (:mod:`schemas.names`), so it can be fixed
and republished. Nothing in here raises on bad input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from pipelines.transforms import activity
from schemas import names
from schemas.catalog import parse_item
from schemas.errors import InvalidRecord
from schemas.events import parse_event

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


class ParseEventFn(beam.DoFn):
    """Message -> ``ProductEvent`` timestamped with its event time, or a dead letter."""

    def __init__(self) -> None:
        self.valid = Metrics.counter(METRICS_NAMESPACE, "events_valid")
        self.invalid = Metrics.counter(METRICS_NAMESPACE, "events_invalid")

    def process(self, message: Any) -> Iterator[Any]:
        activity.touch()
        data, attributes = message_parts(message)
        try:
            event = parse_event(data)
        except InvalidRecord as e:
            self.invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(data, attributes, e, SOURCE_EVENTS))
            return
        self.valid.inc()
        yield TimestampedValue(event, event.timestamp / 1000.0)


class ParseCatalogFn(beam.DoFn):
    """Message -> ``CatalogItem``, or a dead letter."""

    def __init__(self) -> None:
        self.valid = Metrics.counter(METRICS_NAMESPACE, "catalog_valid")
        self.invalid = Metrics.counter(METRICS_NAMESPACE, "catalog_invalid")

    def process(self, message: Any) -> Iterator[Any]:
        activity.touch()
        data, attributes = message_parts(message)
        try:
            item = parse_item(data)
        except InvalidRecord as e:
            self.invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(data, attributes, e, SOURCE_CATALOG))
            return
        self.valid.inc()
        yield item


class ParseEvents(beam.PTransform):
    """Pub/Sub messages -> tagged outputs ``valid`` (``ProductEvent``) and ``dead_letter``."""

    def expand(self, messages: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return messages | "Parse" >> beam.ParDo(ParseEventFn()).with_outputs(DEAD_LETTER, main="valid")


class ParseCatalog(beam.PTransform):
    """Pub/Sub messages -> tagged outputs ``valid`` (``CatalogItem``) and ``dead_letter``."""

    def expand(self, messages: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return messages | "Parse" >> beam.ParDo(ParseCatalogFn()).with_outputs(DEAD_LETTER, main="valid")
