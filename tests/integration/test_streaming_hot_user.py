"""A hot user (200 events/s): its document is written at most once a second, every event counted.

The state step coalesces a user's writes (``--user-write-interval-seconds``, default 1): the
events that arrive within a second of the last write wait in keyed state for a processing-time
timer. The 30-second figure comes from ``make bench-crash`` (``--hot-user-seconds 30``).
"""

from __future__ import annotations

import os

import pytest

from testing.artifacts import tiny_artifact
from testing.crash import CrashStack
from testing.hot_user import run_hot_user

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_user_at_200_events_per_second_is_written_at_most_once_a_second(emulators, firestore_client,
                                                                           tmp_path):
    from pipelines.training.artifact import load_towers

    artifact = tiny_artifact(seed=0)
    towers = load_towers(artifact)
    user = [u for u in towers.users_vocab() if u][0]
    item = [i for i in towers.items_vocab() if i][0]
    stack = CrashStack(emulators, tmp_path, str(artifact), history_length=50)
    seconds = float(os.environ.get("HOT_USER_SECONDS", 4))
    result = run_hot_user(stack, firestore_client, user, item, rate=200, seconds=seconds)
    print(result)
    assert result["counted"] == result["published"], (result, stack.log())
    assert seconds - 1 <= result["writes"] <= seconds + 2, result  # about once a second
    # emissions are >= 1 s apart; commit times add the write latency's jitter (0.85-0.93 s at
    # load 6-9, 0.57 s once at load 16); without coalescing they would be a bundle apart (~10 ms)
    assert result["min_gap_s"] >= 0.5, result
