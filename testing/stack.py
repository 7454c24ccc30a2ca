"""Environment for a pipeline subprocess talking to the local emulators.

The tests and bench-stream start ``python -m pipelines.streaming`` the same way, so they share this.
"""

from __future__ import annotations

import os


def pipeline_env(pubsub_host: str, firestore_host: str, project: str) -> dict[str, str]:
    """This process's environment pointed at the emulators, with quiet TensorFlow and unbuffered output."""
    env = dict(os.environ)
    env.update(PUBSUB_EMULATOR_HOST=pubsub_host, FIRESTORE_EMULATOR_HOST=firestore_host,
               GOOGLE_CLOUD_PROJECT=project, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONUNBUFFERED="1")
    return env
