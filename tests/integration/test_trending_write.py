"""stats/trending writes on the Firestore emulator: contention never fails the pipeline."""

from __future__ import annotations

import pytest

from pipelines.streaming import firestore_io
from pipelines.streaming.firestore_io import FirestoreSettings, WriteTrendingFn
from schemas import names
from schemas.firestore import TrendingDoc, TrendingEntry


def _doc(window_end: int) -> TrendingDoc:
    return TrendingDoc(items=(TrendingEntry.from_document({"item_id": "i1", "views": 3}),),
                       window_start=window_end - 60_000, window_end=window_end, updated_at=window_end)


def test_contention_leaves_the_list_to_the_next_pane(emulators, firestore_client):
    WriteTrendingFn._last_written.clear()
    fn = WriteTrendingFn(FirestoreSettings(project=emulators.project))
    fn.setup()
    ref = firestore_client.collection(names.STATS).document(names.TRENDING_DOC)
    holder = firestore_client.transaction()  # another worker's transaction holds the document
    holder._begin()
    ref.get(transaction=holder)
    try:
        fn.start_bundle()
        fn.process(_doc(1_000_000))
        fn.finish_bundle()  # must not raise: the bundle (and the pipeline) goes on
        assert not ref.get().exists
    finally:
        holder._rollback()

    fn.start_bundle()
    fn.process(_doc(1_000_000))
    fn.finish_bundle()
    assert ref.get().to_dict()["window_end"] == 1_000_000


def test_exhausted_commit_attempts_are_a_write_failure(emulators, firestore_client, monkeypatch):
    from google.api_core import exceptions
    from google.cloud.firestore_v1.transaction import Transaction

    WriteTrendingFn._last_written.clear()
    fn = WriteTrendingFn(FirestoreSettings(project=emulators.project))
    fn.setup()
    commits = []

    def aborted_commit(self):  # the answer to a commit that lost to a concurrent one
        commits.append(1)
        rollback(self)
        raise exceptions.Aborted("contention")

    rollback = Transaction._rollback

    def rollback_once(self):  # the client rolls back again after its last attempt
        if self.in_progress:
            rollback(self)

    monkeypatch.setattr(Transaction, "_commit", aborted_commit)
    monkeypatch.setattr(Transaction, "_rollback", rollback_once)
    monkeypatch.setattr(firestore_io, "TRENDING_TRANSACTION_ATTEMPTS", 3)
    fn.start_bundle()
    fn.process(_doc(1_500_000))
    fn.finish_bundle()
    assert len(commits) == 3
    assert not firestore_client.collection(names.STATS).document(names.TRENDING_DOC).get().exists


def test_a_non_contention_error_is_not_swallowed(emulators, firestore_client, monkeypatch):
    from google.cloud.firestore_v1.transaction import Transaction

    WriteTrendingFn._last_written.clear()
    fn = WriteTrendingFn(FirestoreSettings(project=emulators.project))
    fn.setup()

    def broken(self):
        raise ValueError("a bug, not contention")

    monkeypatch.setattr(Transaction, "_commit", broken)
    fn.start_bundle()
    fn.process(_doc(2_000_000))
    with pytest.raises(ValueError, match="a bug"):
        fn.finish_bundle()
