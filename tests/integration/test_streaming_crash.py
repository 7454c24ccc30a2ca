"""SIGKILL the streaming pipeline mid-burst, restart it: nothing lost, nothing counted twice.

The read acks a message only once its user document (and dead letter, archive line) is written,
so a killed run's messages come back from Pub/Sub; the per-user dedup (seeded from ``users/{id}``
with its memory of evicted ids) drops what was already counted. History length 5 over 30 users
makes redelivered events arrive older than a full history. The full matrix (paced, burst,
backlog; 3 kills each) is ``make bench-crash``.
"""

from __future__ import annotations

import pytest

from testing import crash
from testing.artifacts import tiny_artifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kill_9_mid_burst_then_restart_loses_nothing_and_counts_nothing_twice(emulators, firestore_client,
                                                                              tmp_path):
    from pipelines.training.artifact import load_towers

    artifact = tiny_artifact(seed=0)
    towers = load_towers(artifact)
    users = [u for u in towers.users_vocab() if u][:30]
    items = [i for i in towers.items_vocab() if i]
    stack = crash.CrashStack(emulators, tmp_path, str(artifact))
    scenario = crash.Scenario("burst", events=1500, kills=1, users=users, items=items, seed=11,
                              pull_max=250)  # killed 0-0.5 s after the first counts: mid-burst
    result = crash.run_scenario(scenario, stack, firestore_client)
    assert result["kills"] == 1 and result["counted_at_kill"][0] < 1500, result  # mid-burst
    assert (result["lost"], result["doubled"], result["histories_differing"]) == (0, 0, 0), (
        result, stack.log())
