"""The Dataflow path builds offline: same pipeline code, DataflowRunner flags, ``--dry_run``.

``--dry_run=True`` makes Beam translate the pipeline into a Dataflow job (including building the
``--setup_file`` sdist) and stop before submitting it; ``--no_auth`` keeps it off the network.
"""

from __future__ import annotations

import socket

import pytest
from apache_beam.runners.runner import PipelineState

from pipelines.streaming import pipeline as streaming

DATAFLOW_ARGS = [
    "--runner=DataflowRunner", "--dry_run=True", "--no_auth", "--project=test-project",
    "--region=europe-west1", "--temp_location=gs://test-bucket/tmp",
    "--staging_location=gs://test-bucket/staging", "--sdk_location=container",
    "--setup_file=./setup.py", "--job_name=recsys-streaming-dry-run",
    "--model-dir=gs://test-bucket/models", "--archive-dir=gs://test-bucket/events",
]


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if building the job tries to open a non-local connection."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1") and not str(host).startswith("/"):
            raise AssertionError(f"dry run tried to reach {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.mark.slow
def test_dataflow_job_builds_without_submitting(no_network, monkeypatch):
    monkeypatch.chdir(streaming.__file__.rsplit("/pipelines/", 1)[0])
    result = streaming.run(DATAFLOW_ARGS, save_main_session=False)
    assert result.state == PipelineState.DONE
    job = result.job
    assert job.proto.name == "recsys-streaming-dry-run"
    assert job.proto.type.name == "JOB_TYPE_STREAMING"
    labels = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for step in ("ReadEvents", "ReadCatalog", "Core/ParseEvents/Parse",
                 "Core/UpdateUserState/DedupAndUpdateHistory", "Core/EmbedUsers/EmbedBundle",
                 "Core/Trending/SumWindow", "WriteDeadLetters", "WriteUsers", "WriteItems",
                 "WriteTrending", "Archive/WriteFiles"):
        assert any(label == step or label.startswith(step + "/") for label in labels), step
    # the workers get this package through --setup_file
    assert any("setup.py" in str(o) for o in job.options.get_all_options().values())


def test_project_and_subscriptions_come_from_flags(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    config, options = streaming.parse_args(["--events-subscription", "ev-sub",
                                            "--dead-letter-topic", "projects/p2/topics/dlq"])
    assert config.project == "env-project"
    assert config.events_subscription == "projects/env-project/subscriptions/ev-sub"
    assert config.dead_letter_topic == "projects/p2/topics/dlq"
    config, _ = streaming.parse_args(["--project", "flag-project"])
    assert config.catalog_subscription == "projects/flag-project/subscriptions/catalog-updates-pipeline"
    with pytest.raises(SystemExit):
        streaming.parse_args(["--trending-window-seconds", "100", "--trending-period-seconds", "60"])
