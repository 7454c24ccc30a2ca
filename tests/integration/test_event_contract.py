"""One event contract locally and on Google Cloud, measured on the Pub/Sub emulator.

The same events are published to the local stack's topics and to topics configured as
terraform/pubsub.tf declares them (schema settings read from the file and applied to the
emulator); each must get the same outcome at publish, and the pipeline's parse step
(``parse_event`` / ``parse_item``) the same verdict: accepted, or dead-lettered naming the field.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from schemas import names
from schemas.catalog import parse_item
from schemas.errors import InvalidRecord
from schemas.events import parse_event
from scripts import local_stack
from scripts.local_stack import TopicSpec
from tests.conftest import pull_all
from tests.unit.test_event_contract import terraform_topics

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"

NOW_MS = int(time.time() * 1000)
BASE = {"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1", "timestamp": NOW_MS}
ITEM = {"item_id": "i1", "title": "Red shoe", "category": "shoes", "brand": "acme", "price": 19.5,
        "tags": ["red"], "in_stock": True, "updated_at": NOW_MS}

# name: (payload, the pipeline's verdict: None = accepted, else the field it dead-letters)
EVENTS = {
    "minimal": (BASE, None),
    "plain optional fields": ({**BASE, "session_id": "s1", "context": {"page": "home"}}, None),
    "explicit nulls": ({**BASE, "session_id": None, "context": None, "recommendation_id": None}, None),
    "Avro JSON (wrapped unions)": ({**BASE, "session_id": {"string": "s1"},
                                    "context": {"map": {"page": "home"}}, "recommendation_id": None}, None),
    "extra field": ({**BASE, "referrer": "x"}, "referrer"),
    "unknown event_type": ({**BASE, "event_type": "click"}, "event_type"),
    "missing user_id": ({k: v for k, v in BASE.items() if k != "user_id"}, "user_id"),
    "NUL in item_id": ({**BASE, "item_id": "i\x00"}, "item_id"),
    "not JSON": ("{not json", "payload"),
}
ITEMS = {
    "item": (ITEM, None),
    "item with extra field": ({**ITEM, "colour": "red"}, "colour"),
    "item with negative price": ({**ITEM, "price": -1.0}, "price"),
    "item without title": ({k: v for k, v in ITEM.items() if k != "title"}, "title"),
}


def _data(payload) -> bytes:
    return (payload if isinstance(payload, str) else json.dumps(payload)).encode()


def _verdict(parse, data: bytes) -> str | None:
    try:
        parse(data)
        return None
    except InvalidRecord as e:
        return e.field


def _publish(publisher, topic: str, cases: dict) -> dict[str, str]:
    from google.api_core.exceptions import GoogleAPICallError

    out = {}
    for name, (payload, _) in cases.items():
        try:
            publisher.publish(topic, _data(payload), case=name).result(timeout=30)
            out[name] = "published"
        except GoogleAPICallError as e:
            out[name] = f"refused ({e.message})"
    return out


def _measure(emulators, topic_path: str, cases: dict, parse) -> dict[str, tuple[str, str | None]]:
    """Per case: the publish outcome and, when delivered, the pipeline's verdict."""
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    sub = subscriber.subscription_path(emulators.project, f"contract-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=sub, topic=topic_path, ack_deadline_seconds=30)
    try:
        published = _publish(publisher, topic_path, cases)
        delivered = pull_all(sub, expected=sum(v == "published" for v in published.values()))
        verdicts = {m.attributes["case"]: _verdict(parse, m.data) for m in delivered}
        assert set(verdicts) == {n for n, v in published.items() if v == "published"}
        return {n: (published[n], verdicts.get(n, "never delivered")) for n in cases}
    finally:
        subscriber.delete_subscription(subscription=sub)
        subscriber.close()


@pytest.mark.parametrize(("topic", "cases", "parse"), [
    (names.EVENTS_TOPIC, EVENTS, parse_event), (names.CATALOG_TOPIC, ITEMS, parse_item)])
def test_local_stack_and_terraform_topic_give_the_same_outcome(emulators, topic, cases, parse):
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    local = publisher.topic_path(emulators.project, topic)  # created by local_stack.start
    as_terraform = local_stack.create_topic(publisher, emulators.project, terraform_topics()[topic],
                                            topic_id=f"tf-{topic}-{uuid.uuid4().hex[:6]}")
    got_local = _measure(emulators, local, cases, parse)
    got_terraform = _measure(emulators, as_terraform, cases, parse)
    print(json.dumps({"local": got_local, "terraform": got_terraform}, indent=1))
    assert got_local == got_terraform
    want = {name: ("published", field) for name, (_, field) in cases.items()}
    assert got_local == want  # every message reaches the pipeline, which judges it


def test_an_avro_binding_would_refuse_the_minimal_event(emulators):
    """Why no topic is bound (measured): under product_event.avsc with JSON encoding the emulator
    accepts only Avro JSON with every union spelled out."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    spec = TopicSpec(names.EVENTS_TOPIC, names.EVENTS_SUBSCRIPTION, "product_event.avsc", "AVRO", "JSON")
    topic = local_stack.create_topic(publisher, emulators.project, spec,
                                     topic_id=f"avro-{uuid.uuid4().hex[:6]}")
    got = {n: v.split(" ")[0] for n, v in _publish(publisher, topic, EVENTS).items()}
    accepted = {n for n, v in got.items() if v == "published"}
    assert accepted == {"explicit nulls", "Avro JSON (wrapped unions)"}, got


def _doc_block(lang: str, contains: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    [block] = [b for b in blocks if contains in b]
    return block


def test_the_documented_examples_publish_to_the_local_stack(emulators):
    """docs/events.md, copy-pasted: the gcloud command (with the emulator settings it gives) and
    the Python snippet each publish an event the pipeline accepts."""
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(emulators.project, names.EVENTS_TOPIC)
    sub = subscriber.subscription_path(emulators.project, f"docs-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=30)
    try:
        env_block = _doc_block("bash", "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB")
        script = "\n".join([*(line for line in env_block.splitlines() if not line.startswith("source ")),
                            _doc_block("bash", "gcloud pubsub topics publish")])
        env = {**os.environ, **emulators.client_env()}
        done = subprocess.run(["bash", "-euc", script], env=env, capture_output=True, text=True,
                              timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        exec(_doc_block("python", "pubsub_v1.PublisherClient()"), {})  # noqa: S102 - our own doc
        got = pull_all(sub, expected=2)
    finally:
        subscriber.delete_subscription(subscription=sub)
        subscriber.close()
    assert len(got) == 2
    for message in got:
        event = parse_event(message.data)
        assert (event.event_id, event.user_id) == ("e-1", "u-1")
        assert dict(message.attributes) == event.pubsub_attributes()
