"""Shared fixtures. Emulator fixtures use scripts.local_stack and FAIL when an emulator
cannot start: an integration test never skips silently."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from schemas import names  # noqa: E402
from scripts import local_stack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Test emulators run on their own ports so a developer's `make stack-start` does not clash.
TEST_PUBSUB_PORT = int(os.environ.get("TEST_PUBSUB_PORT", 18085))
TEST_FIRESTORE_PORT = int(os.environ.get("TEST_FIRESTORE_PORT", 18086))


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_stack.StackConfig]:
    """Both emulators, started once per test session, stopped at the end.

    Sets PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT for the
    process so every client in the tests talks to them.
    """
    config = local_stack.StackConfig(pubsub_port=TEST_PUBSUB_PORT,
                                     firestore_port=TEST_FIRESTORE_PORT)
    state_dir = tmp_path_factory.mktemp("stack")
    try:
        state = local_stack.start(config, state_dir=state_dir)
    except local_stack.StackError as e:
        pytest.fail(f"cannot start the emulators: {e}", pytrace=False)
    old = {k: os.environ.get(k) for k in config.client_env()}
    os.environ.update(config.client_env())
    try:
        yield config
    finally:
        local_stack.stop_state(state)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def firestore_client(emulators: local_stack.StackConfig):
    """A Firestore client on an emulator emptied before the test."""
    from google.cloud import firestore

    local_stack.clear_firestore(emulators)
    client = firestore.Client(project=emulators.project)
    yield client
    client.close()


@pytest.fixture
def pubsub_topic(emulators: local_stack.StackConfig):
    """A fresh topic + subscription pair: (topic_path, subscription_path)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    suffix = uuid.uuid4().hex[:8]
    topic = publisher.topic_path(emulators.project, f"test-topic-{suffix}")
    sub = subscriber.subscription_path(emulators.project, f"test-sub-{suffix}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=30)
    yield topic, sub
    subscriber.delete_subscription(subscription=sub)
    publisher.delete_topic(topic=topic)
    subscriber.close()


def pull_all(subscription: str, expected: int | None = None, timeout_s: float = 15.0) -> list:
    """Pull and ack messages until ``expected`` arrived or the subscription stays empty."""
    import time

    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    out = []
    deadline = time.monotonic() + timeout_s
    empty_rounds = 0
    while time.monotonic() < deadline:
        resp = subscriber.pull(subscription=subscription, max_messages=1000, timeout=5)
        if resp.received_messages:
            empty_rounds = 0
            out.extend(m.message for m in resp.received_messages)
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[m.ack_id for m in resp.received_messages])
            if expected is not None and len(out) >= expected:
                break
        else:
            empty_rounds += 1
            if expected is None and empty_rounds >= 2:
                break
    subscriber.close()
    return out


__all__ = ["pull_all", "names"]
