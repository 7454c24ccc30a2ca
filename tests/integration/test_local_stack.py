"""The local stack on the real emulators."""

from __future__ import annotations

import pytest

from schemas import names
from scripts import local_stack
from tests.conftest import pull_all

pytestmark = pytest.mark.integration


def test_emulators_healthy_and_resources_created(emulators):
    from google.cloud import pubsub_v1

    assert local_stack.emulator_healthy(emulators.pubsub_host)
    assert local_stack.emulator_healthy(emulators.firestore_host)
    publisher = pubsub_v1.PublisherClient()
    topics = {t.name.rsplit("/", 1)[-1]
              for t in publisher.list_topics(request={"project": f"projects/{emulators.project}"})}
    assert {names.EVENTS_TOPIC, names.DEAD_LETTER_TOPIC, names.CATALOG_TOPIC} <= topics


def test_topics_carry_the_schema_binding_terraform_declares(emulators):
    """local_stack.TOPICS equals terraform/pubsub.tf (tests/unit/test_event_contract.py): no schema."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for spec in local_stack.TOPICS:
        topic = publisher.get_topic(topic=publisher.topic_path(emulators.project, spec.topic))
        assert topic.schema_settings.schema == "" and spec.schema_file is None, spec


def test_start_is_idempotent_for_resources(emulators):
    assert local_stack.create_pubsub_resources(emulators) == local_stack.create_pubsub_resources(emulators)


def test_round_trip_through_pubsub(emulators, pubsub_topic):
    from google.cloud import pubsub_v1

    topic, sub = pubsub_topic
    publisher = pubsub_v1.PublisherClient()
    publisher.publish(topic, b"hello", k="v").result(timeout=10)
    msgs = pull_all(sub, expected=1)
    assert [(m.data, dict(m.attributes)) for m in msgs] == [(b"hello", {"k": "v"})]


def test_firestore_write_read(firestore_client):
    firestore_client.collection("t").document("d").set({"x": 1})
    assert firestore_client.collection("t").document("d").get().to_dict() == {"x": 1}


def test_port_in_use_gives_clear_error(emulators, tmp_path):
    cfg = local_stack.StackConfig(pubsub_port=emulators.pubsub_port, firestore_port=1)
    with pytest.raises(local_stack.StackError, match="already in use"):
        local_stack.start_emulator("pubsub", cfg, tmp_path)


def test_missing_gcloud_is_explained(monkeypatch):
    monkeypatch.setattr(local_stack.shutil, "which", lambda name: None)
    with pytest.raises(local_stack.StackError, match="Google Cloud SDK"):
        local_stack.check_prerequisites()
