"""Contract tests of the pipeline's compatibility shims: each fails loudly when the pinned
dependency it patches changes, instead of the shim misbehaving quietly."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest

from pipelines.compat import beam_direct_pubsub, firestore_writes
from schemas.firestore import HistoryEntry, UserDoc

T0 = 1_700_000_000_000


def _source(obj: object) -> str:
    return inspect.getsource(obj)


def test_beam_is_the_version_the_direct_runner_shim_patches():
    assert version("apache-beam") == "2.77.0", "re-check pipelines/compat/beam_direct_pubsub.py"


def test_beam_direct_runner_internals_the_shim_uses_exist():
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.runners.direct import executor, transform_evaluator
    from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub  # noqa: F401

    evaluator = transform_evaluator._PubSubReadEvaluator
    assert list(inspect.signature(evaluator._read_from_pubsub).parameters) == ["self", "timestamp_attribute"]
    assert hasattr(evaluator, "_get_subscriber_client")
    assert "self._sub_name" in _source(evaluator)
    assert list(inspect.signature(executor._ExecutorService.__init__).parameters) == ["self", "num_workers"]
    assert "self.queue" in _source(executor._ExecutorService.__init__)
    assert list(inspect.signature(executor.TransformExecutor.call).parameters) == ["self", "state_sampler"]
    init = _source(executor.TransformExecutor.__init__)
    for attribute in ("self._applied_ptransform", "self._input_bundle", "self._fired_timers"):
        assert attribute in init
    assert hasattr(PubsubMessage, "_from_message")
    # the ack rule: the read's bundle is built in finish_bundle, which calls _read_from_pubsub
    assert list(inspect.signature(evaluator.finish_bundle).parameters) == ["self"]
    assert "self._read_from_pubsub(" in _source(evaluator.finish_bundle)
    assert "evaluation_context" in _source(evaluator.__init__)
    from apache_beam.runners.direct import evaluation_context, watermark_manager

    ctx_init = _source(evaluation_context.EvaluationContext.__init__)
    assert "self._watermark_manager" in ctx_init and "self._transform_keyed_states" in ctx_init
    assert "self._transform_to_watermarks" in _source(watermark_manager.WatermarkManager.__init__)
    tw_init = _source(watermark_manager._TransformWatermarks.__init__)
    assert "self._pending" in tw_init and "self._fired_timers" in tw_init
    # keyed states hold user timers as {window: {(name, domain, tag): timestamp}}
    from apache_beam.transforms.trigger import InMemoryUnmergedState

    assert "self.timers[window][(name, time_domain, dynamic_timer_tag)] = timestamp" in _source(
        InMemoryUnmergedState.set_timer)
    assert issubclass(evaluation_context.DirectUnmergedState, InMemoryUnmergedState)
    # a user timer is keyed "user/<TimerSpec.name>" and TimerSpec prefixes the given name "ts-"
    from apache_beam.runners.direct import direct_userstate
    from apache_beam.transforms.userstate import TimerSpec

    assert "timer_name = 'user/%s' % timer_spec.name" in _source(direct_userstate)
    from apache_beam.transforms.timeutil import TimeDomain

    assert TimerSpec("x", TimeDomain.REAL_TIME).name == "ts-x"
    # one worker thread runs every bundle and the read: "nothing else runs while we read"
    assert executor._ExecutorServiceParallelExecutor.NUM_WORKERS == 1
    from google.cloud import pubsub_v1

    assert hasattr(pubsub_v1.SubscriberClient, "modify_ack_deadline")


def test_install_and_uninstall_patch_and_restore_the_runner():
    from apache_beam.runners.direct import executor, transform_evaluator

    original_read = transform_evaluator._PubSubReadEvaluator._read_from_pubsub
    original_finish = transform_evaluator._PubSubReadEvaluator.finish_bundle
    original_call = executor.TransformExecutor.call
    beam_direct_pubsub.install(max_messages=7)
    try:
        assert transform_evaluator._PubSubReadEvaluator._read_from_pubsub is not original_read
        assert transform_evaluator._PubSubReadEvaluator.finish_bundle is not original_finish
        assert executor.TransformExecutor.call is not original_call
    finally:
        beam_direct_pubsub.uninstall()
    assert transform_evaluator._PubSubReadEvaluator._read_from_pubsub is original_read
    assert transform_evaluator._PubSubReadEvaluator.finish_bundle is original_finish
    assert executor.TransformExecutor.call is original_call
    assert not beam_direct_pubsub.is_draining()


def test_non_barrier_timers_hold_no_acks_and_every_other_user_timer_does():
    from types import SimpleNamespace

    from apache_beam.transforms.timeutil import TimeDomain
    from apache_beam.transforms.userstate import TimerSpec

    ttl = TimerSpec(beam_direct_pubsub.non_barrier_timer("ttl"), TimeDomain.REAL_TIME)
    flush = TimerSpec("flush", TimeDomain.REAL_TIME)
    assert beam_direct_pubsub.non_barrier_timer(ttl.name.removeprefix("ts-")) == ttl.name.removeprefix("ts-")
    class Step:  # an applied transform: hashable, with a full_label
        full_label = "Join"

    step = Step()
    keyed = {"k": SimpleNamespace(timers={"w": {(f"user/{ttl.name}", "REAL_TIME", ""): 9.0,
                                               (f"user/{flush.name}", "REAL_TIME", ""): 1.0}})}
    ctx = SimpleNamespace(_ack_timer_steps=[step], _transform_keyed_states={step: keyed})
    barrier = ("Join", "k", "w", f"user/{flush.name}", "", 1.0)
    assert beam_direct_pubsub._user_timers(ctx) == frozenset({barrier})


def test_firestore_is_the_version_the_write_shim_builds_for():
    assert version("google-cloud-firestore") == "2.34.1", "re-check pipelines/compat/firestore_writes.py"
    from google.cloud.firestore_v1 import base_document, batch

    assert list(inspect.signature(batch.WriteBatch._add_write_pbs).parameters) == ["self", "write_pbs"]
    assert isinstance(base_document.BaseDocumentReference._document_path, property)


def test_set_write_pb_is_the_write_the_client_builds():
    from google.cloud.firestore_v1 import _helpers

    history = tuple(HistoryEntry(f"e{i}", f"i{i}", "view", T0 + i) for i in range(50))
    embedding = tuple(float(i) / 7 for i in range(16))
    docs = [UserDoc("u1", history, "e49", T0 + 49, T0 + 100, "v3", embedding, 51),
            UserDoc("u2", (), "", 0, 0, None, None, 0)]
    path = "projects/p/databases/(default)/documents/users/"
    for doc in docs:
        data = doc.to_document()
        assert isinstance(data["history"], str)  # the packed history: one string value
        # every value type the encoder takes (user documents no longer hold maps in arrays)
        data["flags"] = {"ok": True, "n": [1, 2.5, None], "rows": [{"k": "v", "t": T0}]}
        expected = _helpers.pbs_for_set_no_merge(path + doc.user_id, data)
        assert len(expected) == 1
        assert firestore_writes.set_write_pb(path + doc.user_id, data)._pb == expected[0]._pb
    with pytest.raises(TypeError):
        firestore_writes.set_write_pb(path + "u3", {"when": object()})
