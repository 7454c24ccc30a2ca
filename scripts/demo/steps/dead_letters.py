"""Drain the dead-letter subscription and count the messages by the field blamed.

Every invalid message sent straight to Pub/Sub must end up here, with a reason.
"""

from __future__ import annotations

import time

from schemas import names
from scripts.demo.console import wait_until


def drain_dead_letters(project: str, expected: int, timeout_s: float,
                       reasons: dict[str, int]) -> int:
    """Pull until ``expected`` dead letters arrived (then once more); count them into ``reasons``."""
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(project, names.DEAD_LETTER_SUBSCRIPTION)
    seen = 0

    def pull() -> bool:
        nonlocal seen
        resp = sub.pull(subscription=path, max_messages=500, timeout=5)
        for m in resp.received_messages:
            reason = m.message.attributes.get(names.DLQ_FIELD_ATTR, "?")
            reasons[reason] = reasons.get(reason, 0) + 1
        if resp.received_messages:
            sub.acknowledge(subscription=path, ack_ids=[m.ack_id for m in resp.received_messages])
        seen += len(resp.received_messages)
        return seen >= expected

    wait_until("the dead letters", pull, timeout_s, interval_s=0.5)
    time.sleep(1.0)
    pull()
    sub.close()
    return seen
