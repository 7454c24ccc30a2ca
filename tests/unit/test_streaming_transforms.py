"""Unit tests of the streaming pipeline's transforms, on in-memory data (no emulators)."""

from __future__ import annotations

import json
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.data import read_events_jsonl
from pipelines.streaming.archive import (
    AppendArchiveFn,
    archive_file_name,
    archive_file_naming,
    batch_lines,
    event_line,
)
from pipelines.streaming.embed import EmbedUsers, item_docs, user_docs
from pipelines.streaming.firestore_io import MonotonicGuard, _trending_rank
from pipelines.streaming.model_watcher import LoadedModel, ModelWatcher, latest_version_dir
from pipelines.streaming.parse import DEAD_LETTER, ParseCatalog, ParseEvents
from pipelines.streaming.pipeline import RecommenderCore, StreamingConfig, parse_args
from pipelines.streaming.trending import (
    ComputeTrending,
    CountPerSlice,
    ItemCounts,
    ToTrendingDocFn,
    rank_items,
)
from pipelines.streaming.user_state import (
    ACCEPTED,
    ACCEPTED_BATCHES,
    DEDUP_RETENTION_S,
    DUPLICATE,
    TOO_OLD,
    PrefetchSeedsFn,
    Seed,
    UpdateUserState,
    UpdateUserStateFn,
    UserState,
    UserUpdate,
    apply_event,
    apply_events,
    pack_dedup,
    unpack_dedup,
)
from schemas import names
from schemas.catalog import CatalogItem
from schemas.content import ContentEncoder
from schemas.events import ProductEvent, parse_event
from schemas.firestore import CurrentModelDoc, HistoryEntry, TrendingDoc, UserDoc

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms, a whole hour


def ev(event_id: str, user: str = "u1", item: str = "i1", ts: int = T0, kind: str = "view") -> ProductEvent:
    return ProductEvent(event_id=event_id, event_type=kind, user_id=user, item_id=item, timestamp=ts)


def msg(event: ProductEvent) -> PubsubMessage:
    return PubsubMessage(event.to_pubsub_data(), event.pubsub_attributes())


def streaming_pipeline() -> TestPipeline:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(options=options)


class FakeTowers:
    """Deterministic towers: the user vector encodes the ordered history, so order errors show."""

    def __init__(self, version: str, scale: float = 1.0) -> None:
        self.version = version
        self.scale = scale
        self.calls: list[int] = []

    def embed_users(self, user_ids, histories):
        self.calls.append(len(user_ids))
        out = np.zeros((len(user_ids), 4), np.float32)
        for row, hist in enumerate(histories):
            digits = [int(h.lstrip("i")) for h in hist]
            out[row] = [len(hist), sum(digits), sum((i + 1) * d for i, d in enumerate(digits)), self.scale]
        return out

    def embed_items(self, items):
        return np.array([[float(len(i.item_id)), i.price, 0.0, self.scale] for i in items], np.float32)


class StaticModels:
    """A ``ModelSource`` with a fixed model (picklable: the towers are rebuilt per worker)."""

    def __init__(self, version: str | None = "v1") -> None:
        self.version = version

    def watcher(self):
        version = self.version

        class Holder:
            def current(self):
                return LoadedModel(version, FakeTowers(version), None) if version else None

        return Holder()


class MemoryStore:
    def __init__(self, docs: dict[str, UserDoc]) -> None:
        self.docs = docs

    def get(self, user_id: str) -> UserDoc | None:
        return self.docs.get(user_id)


# ---------------------------------------------------------------- parsing and dead letters


def test_parse_routes_invalid_messages_to_dead_letter_with_reason_and_original_payload():
    good = ev("e1")
    bad_json = PubsubMessage(b"{not json", {"origin": "web"})
    missing = PubsubMessage(json.dumps({"event_id": "e2", "event_type": "view"}).encode(), {})
    bad_type = PubsubMessage(json.dumps({**good.to_dict(), "event_id": "e3", "event_type": "click"}).encode(),
                             {"k": "v"})
    with TestPipeline() as p:
        out = p | beam.Create([msg(good), bad_json, missing, bad_type]) | ParseEvents()
        assert_that(out.valid, equal_to([good]), label="valid")
        dead = out[DEAD_LETTER] | beam.Map(lambda m: (m.data, dict(m.attributes)))
        assert_that(dead | beam.Map(lambda d: (d[0], d[1][names.DLQ_FIELD_ATTR], d[1][names.DLQ_SOURCE_ATTR],
                                               d[1].get("origin"), d[1].get("k"))),
                    equal_to([(b"{not json", "payload", "events", "web", None),
                              (missing.data, "user_id", "events", None, None),
                              (bad_type.data, "event_type", "events", None, "v")]), label="dead")
        assert_that(dead | beam.Map(lambda d: bool(d[1][names.DLQ_REASON_ATTR])), equal_to([True] * 3),
                    label="reasons")


def test_parse_catalog_dead_letters_bad_items():
    item = CatalogItem("new1", "T", "books", "acme", 9.5, ("a",), True, T0)
    bad = PubsubMessage(json.dumps({**item.to_dict(), "price": -1}).encode(), {})
    with TestPipeline() as p:
        out = p | beam.Create([PubsubMessage(item.to_pubsub_data(), {}), bad]) | ParseCatalog()
        assert_that(out.valid, equal_to([item]), label="valid")
        assert_that(out[DEAD_LETTER] | beam.Map(lambda m: (m.attributes[names.DLQ_FIELD_ATTR],
                                                           m.attributes[names.DLQ_SOURCE_ATTR])),
                    equal_to([("price", "catalog")]), label="dead")


# ---------------------------------------------------------------- per-user state (pure)


def test_history_is_ordered_by_event_time_even_when_events_arrive_out_of_order():
    state = UserState("u1")
    for e in [ev("a", ts=T0 + 30), ev("b", ts=T0 + 10), ev("c", ts=T0 + 20)]:
        state, outcome = apply_event(state, e, history_length=5)
        assert outcome == ACCEPTED
    assert [h.event_id for h in state.history] == ["b", "c", "a"]
    assert state.event_count == 3
    assert (state.last_event_id, state.last_event_ts) == ("c", T0 + 20)


def test_history_is_bounded_and_late_events_are_counted_once_into_the_memory():
    state = UserState("u1")
    for i in range(5):
        state, _ = apply_event(state, ev(f"e{i}", ts=T0 + i * 10), history_length=3, now_s=100)
    assert [h.event_id for h in state.history] == ["e2", "e3", "e4"]
    assert state.event_count == 5 and [r[2] for r in state.recent] == ["e0", "e1"]
    # older than the full history but never seen (e.g. redelivered after newer events): counted
    late, outcome = apply_event(state, ev("late", ts=T0 + 5), history_length=3, now_s=100)
    assert outcome == ACCEPTED and late.event_count == 6 and late.history == state.history
    assert apply_event(late, ev("late", ts=T0 + 5), history_length=3, now_s=100)[1] == DUPLICATE
    # an out-of-order event newer than the oldest kept one is inserted; the oldest falls out
    state, outcome = apply_event(state, ev("mid", ts=T0 + 25), history_length=3, now_s=100)
    assert outcome == ACCEPTED
    assert [h.event_id for h in state.history] == ["mid", "e3", "e4"]


def test_forgotten_ids_raise_the_floor_below_which_unknown_events_are_too_old():
    state = UserState("u1")
    for i in range(5):
        state, _ = apply_event(state, ev(f"e{i}", ts=T0 + i * 10), history_length=3, now_s=100)
    # retention over: e0, e1 are forgotten, the floor is the highest of them
    later, outcome = apply_event(state, ev("e5", ts=T0 + 50), 3, now_s=100 + DEDUP_RETENTION_S + 1)
    assert outcome == ACCEPTED and later.floor == (T0 + 10, "e1")
    assert [r[2] for r in later.recent] == ["e2"]  # evicted by e5, remembered
    for e, expected in [(ev("e0", ts=T0), TOO_OLD), (ev("a", ts=T0 + 10), TOO_OLD),
                        (ev("e2", ts=T0 + 20), DUPLICATE), (ev("y", ts=T0 + 15), ACCEPTED)]:
        assert apply_event(later, e, 3, now_s=200)[1] == expected, e.event_id
    # at most max_recent ids are kept: the oldest counted are forgotten first
    capped, _ = apply_events(UserState("u2"), [ev(f"c{i}", "u2", ts=T0 + i) for i in range(6)], 1,
                             now_s=100, max_recent=2)
    assert [r[2] for r in capped.recent] == ["c3", "c4"] and capped.floor == (T0 + 2, "c2")


@settings(max_examples=200, deadline=None)
@given(history_length=st.integers(1, 4),
       times=st.lists(st.integers(0, 30), min_size=1, max_size=15),
       order=st.randoms(use_true_random=False))
def test_redelivery_in_any_order_counts_every_event_exactly_once(history_length, times, order):
    """Each event delivered once or twice, in any order, over bundles (with a restart in the
    middle: seeded from the stored document and its packed memory): counted exactly once."""
    events = [ev(f"e{i}", ts=T0 + t) for i, t in enumerate(times)]
    deliveries = events + [e for e in events if order.random() < 0.5]
    order.shuffle(deliveries)
    cut = order.randrange(len(deliveries) + 1)
    state, _ = apply_events(UserState("u1"), deliveries[:cut], history_length, now_s=100)
    doc = UserDoc("u1", state.history, state.last_event_id, state.last_event_ts, 0,
                  event_count=state.event_count)
    restarted = UserState.from_doc(doc, pack_dedup(state), history_length)
    state, _ = apply_events(restarted, deliveries[cut:], history_length, now_s=110)
    assert state.event_count == len(events)
    assert [h.event_id for h in state.history] == [
        e.event_id for e in sorted(events, key=lambda e: (e.timestamp, e.event_id))[-history_length:]]


def test_a_document_without_memory_seeds_the_floor_at_its_full_history():
    doc = UserDoc(user_id="u1", history=tuple(HistoryEntry(f"e{i}", "i1", "view", T0 + i) for i in range(3)),
                  last_event_id="e2", last_event_ts=T0 + 2, updated_at=0, event_count=9)
    legacy = UserState.from_doc(doc, None, history_length=3)
    assert legacy.floor == (T0, "e0")
    assert apply_event(legacy, ev("gone", ts=T0 - 5), 3)[1] == TOO_OLD  # maybe evicted: not counted
    assert UserState.from_doc(doc, None, history_length=5).floor is None  # never evicted anything
    assert unpack_dedup(pack_dedup(legacy)) == ((), (T0, "e0"))


def test_duplicates_and_replays_of_evicted_events_are_not_counted_twice():
    state = UserState("u1")
    events = [ev(f"e{i}", ts=T0 + i) for i in range(6)]
    for e in events:
        state, _ = apply_event(state, e, history_length=3, now_s=100)
    for e in events:  # a full replay: kept ones and remembered evicted ones are duplicates
        replayed, outcome = apply_event(state, e, history_length=3, now_s=100)
        assert outcome == DUPLICATE
        assert replayed == state
    for e in events:  # long after: forgotten ones are below the floor
        assert apply_event(state, e, 3, now_s=1000)[0].event_count == 6
    assert state.event_count == 6


def test_state_seeded_from_a_stored_doc_continues_counting_and_dedups():
    doc = UserDoc(user_id="u1", history=(HistoryEntry("e1", "i1", "view", T0 + 1),
                                         HistoryEntry("e0", "i0", "view", T0)),
                  last_event_id="e1", last_event_ts=T0 + 1, updated_at=0, event_count=7)
    state = UserState.from_doc(doc)
    assert [h.event_id for h in state.history] == ["e0", "e1"]
    assert apply_event(state, ev("e1", ts=T0 + 1), 50)[1] == DUPLICATE
    state, outcome = apply_event(state, ev("e2", ts=T0 + 2), 50)
    assert outcome == ACCEPTED and state.event_count == 8


# ---------------------------------------------------------------- per-user state (stateful DoFn)


def test_stateful_dedup_with_test_stream_and_seeding():
    seed = UserDoc(user_id="u2", history=(HistoryEntry("old", "i9", "view", T0 - 1000),), last_event_id="old",
                   last_event_ts=T0 - 1000, updated_at=0, event_count=4)
    stream = (TestStream()
              .add_elements([TimestampedValue(ev("a1", "u1", "i1", T0 + 2), (T0 + 2) / 1000),
                             TimestampedValue(ev("a2", "u1", "i2", T0 + 1), (T0 + 1) / 1000),
                             TimestampedValue(ev("old", "u2", "i9", T0 - 1000), (T0 - 1000) / 1000)])
              .advance_processing_time(1)
              .add_elements([TimestampedValue(ev("a1", "u1", "i1", T0 + 2), (T0 + 2) / 1000),
                             TimestampedValue(ev("b1", "u2", "i3", T0 + 5), (T0 + 5) / 1000)])
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        out = p | stream | UpdateUserState(history_length=10, store=MemoryStore({"u2": seed}),
                                           write_interval_s=0)
        # one state per user and bundle: u1's two events of the first bundle give one state
        assert_that(out["states"] | beam.Map(lambda u: (u.state.user_id, u.state.event_count,
                                                        tuple(u.state.item_ids), len(u.events))),
                    equal_to([("u1", 2, ("i2", "i1"), 2), ("u2", 5, ("i9", "i3"), 1)]),
                    label="states")
        assert_that(out[ACCEPTED_BATCHES] | beam.FlatMap(lambda b: [e.event_id for e in b]),
                    equal_to(["a1", "a2", "b1"]),
                    label="accepted")


@settings(max_examples=300, deadline=None)
@given(history_length=st.integers(1, 5),
       seed_events=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 20)), max_size=6),
       events=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 20)), max_size=12))
def test_apply_events_equals_apply_event_one_by_one(history_length, seed_events, events):
    """Ids from a small pool and colliding timestamps: duplicates, evictions and too-old events."""
    def as_events(pairs):
        return [ev(f"e{i}", item=f"i{i}", ts=T0 + t) for i, t in pairs]

    start = UserState("u1")
    for e in as_events(seed_events):
        start, _ = apply_event(start, e, history_length, now_s=100)
    expected, outcomes = start, []
    for e in as_events(events):
        expected, outcome = apply_event(expected, e, history_length, now_s=100)
        outcomes.append(outcome)
    assert apply_events(start, as_events(events), history_length, now_s=100) == (expected, outcomes)


class FakeState:
    """A ``ReadModifyWriteState`` for calling the state DoFn directly; counts reads and writes."""

    def __init__(self) -> None:
        self.value, self.reads, self.writes = None, 0, 0

    def read(self):
        self.reads += 1
        return self.value

    def write(self, value) -> None:
        self.writes += 1
        self.value = value


class FakeTimer:
    def __init__(self) -> None:
        self.set_to: list = []

    def set(self, ts) -> None:
        self.set_to.append(ts)


def run_state_fn(fn: UpdateUserStateFn, state: FakeState, user: str, events, seed=None, emitted=None,
                 flush=None):
    """(states emitted, accepted event ids) of a bundle with one grouped element (a fresh
    coalescing state unless ``emitted`` is given: the state is emitted at once)."""
    fn.start_bundle()
    updates = list(fn.process((user, (tuple(events), seed)), state=state,
                              emitted=emitted if emitted is not None else FakeState(),
                              flush=flush if flush is not None else FakeTimer()))
    assert all(isinstance(u, UserUpdate) for u in updates)
    states = [u.state for u in updates]
    batches = list(fn.finish_bundle())
    assert len(batches) <= 1 and all(b.tag == ACCEPTED_BATCHES for b in batches)
    accepted = [e.event_id for b in batches for e in b.value.value]
    if batches:  # timestamped with the batch's earliest event
        batch = batches[0].value
        assert batch.timestamp == Timestamp.of(min(e.timestamp for e in batch.value) / 1000)
    return states, accepted


def test_prefetch_groups_a_bundles_events_per_user_in_arrival_order():
    fn = PrefetchSeedsFn(store=None)
    fn.start_bundle()
    events = [ev("a1", "u1", ts=T0 + 5), ev("b1", "u2", ts=T0 + 1), ev("a2", "u1", ts=T0 + 3)]
    for e in events:
        fn.process(e, timestamp=Timestamp.of(e.timestamp / 1000))
    out = list(fn.finish_bundle())
    assert [(wv.value[0], [e.event_id for e in wv.value[1][0]]) for wv in out] == [
        ("u1", ["a1", "a2"]), ("u2", ["b1"])]
    # the group's timestamp is its earliest event's, so it never holds the watermark too late
    assert out[0].timestamp == Timestamp.of((T0 + 3) / 1000)


def test_state_step_writes_one_state_per_user_and_bundle_with_the_newest_event():
    fn = UpdateUserStateFn(history_length=3, store=None)
    state = FakeState()
    bundle = [ev("e1", ts=T0 + 1, item="i1"), ev("e3", ts=T0 + 3, item="i3"), ev("e2", ts=T0 + 2, item="i2"),
              ev("e1", ts=T0 + 1, item="i1")]  # the last one is a duplicate inside the bundle
    states, accepted = run_state_fn(fn, state, "u1", bundle)
    assert accepted == ["e1", "e3", "e2"]
    assert len(states) == 1 and (state.reads, state.writes) == (1, 1)
    only = states[0]
    assert (only.event_count, only.last_event_id, only.item_ids) == (3, "e2", ["i1", "i2", "i3"])
    assert only == state.value
    # the same state as applying the events one by one
    one_by_one = UserState("u1")
    for e in bundle:
        one_by_one, _ = apply_event(one_by_one, e, 3)
    assert only == one_by_one


def test_state_step_replay_of_old_events_emits_nothing_and_keeps_newer_state():
    fn = UpdateUserStateFn(history_length=2, store=None)
    state = FakeState()
    run_state_fn(fn, state, "u1", [ev("e1", ts=T0 + 1), ev("e2", ts=T0 + 2), ev("e3", ts=T0 + 3)])
    newest = state.value
    assert (newest.event_count, newest.last_event_id) == (3, "e3")
    # a replay of the whole stream (e1 was evicted: too old; e2, e3 are duplicates)
    states, accepted = run_state_fn(fn, state, "u1",
                                    [ev("e1", ts=T0 + 1), ev("e2", ts=T0 + 2), ev("e3", ts=T0 + 3)])
    assert (states, accepted) == ([], [])
    assert state.value == newest and state.writes == 1
    # a newer event in a bundle with replays: one state, only the new event counted
    states, accepted = run_state_fn(fn, state, "u1", [ev("e2", ts=T0 + 2), ev("e4", ts=T0 + 4)])
    assert accepted == ["e4"] and [(s.event_count, s.last_event_id) for s in states] == [(4, "e4")]


def test_state_step_remembers_the_seed_on_first_sight_even_if_nothing_is_accepted():
    seed = UserDoc(user_id="u2", history=(HistoryEntry("old", "i9", "view", T0),), last_event_id="old",
                   last_event_ts=T0, updated_at=0, event_count=4)
    fn = UpdateUserStateFn(history_length=5, store=None)
    state = FakeState()
    assert run_state_fn(fn, state, "u2", [ev("old", "u2", "i9", T0)], Seed(seed)) == ([], [])
    assert state.value.event_count == 4 and state.writes == 1


# ---------------------------------------------------------------- embeddings


def test_user_docs_equal_towers_applied_to_history():
    history = (HistoryEntry("e1", "i3", "view", T0), HistoryEntry("e2", "i5", "view", T0 + 1))
    states = [UserState("u1", history, 2, "e2", T0 + 1)]
    towers = FakeTowers("v7")
    docs = user_docs(states, LoadedModel("v7", towers, None))
    assert docs[0].model_version == "v7"
    np.testing.assert_allclose(docs[0].embedding, FakeTowers("v7").embed_users(["u1"], [["i3", "i5"]])[0])
    assert (docs[0].event_count, docs[0].last_event_id, docs[0].history) == (2, "e2", states[0].history)
    no_model = user_docs(states, None)
    assert no_model[0].embedding is None and no_model[0].model_version is None


def test_item_docs_carry_embedding_content_vector_and_index_time():
    item = CatalogItem("new1", "T", "books", "acme", 9.5, ("a",), True, T0)
    encoder = ContentEncoder.fit([item])
    before = int(time.time() * 1000)
    doc = item_docs([item], LoadedModel("v2", FakeTowers("v2"), encoder))[0]
    assert doc.model_version == "v2" and doc.indexed_at >= before
    np.testing.assert_allclose(doc.embedding, FakeTowers("v2").embed_items([item])[0])
    np.testing.assert_allclose(doc.content_vector, encoder.encode(item))


@pytest.mark.parametrize("inference", ["bundle", "runinference"])
def test_embed_users_keeps_latest_state_per_user(inference):
    s1 = UserState("u1", (HistoryEntry("e1", "i1", "view", T0),), 1, "e1", T0)
    s2 = UserState("u1", s1.history + (HistoryEntry("e2", "i2", "view", T0 + 1),), 2, "e2", T0 + 1)
    s3 = UserState("u2", (HistoryEntry("e3", "i4", "view", T0),), 1, "e3", T0)
    with TestPipeline() as p:
        out = p | beam.Create([s1, s2, s3]) | EmbedUsers(StaticModels("v1"), inference)
        docs = out["docs"] | beam.Map(lambda w: w.doc)
        assert_that(docs | beam.Filter(lambda d: d.model_version == "v1"),
                    latest_per_user_equal_to([("u1", 2, ("i1", "i2"), (2.0, 3.0, 5.0, 1.0)),
                                              ("u2", 1, ("i4",), (1.0, 4.0, 4.0, 1.0))]))


# ---------------------------------------------------------------- model hot reload


def test_model_watcher_swaps_on_new_version_and_keeps_old_on_failure(tmp_path):
    current = {"doc": CurrentModelDoc("v1", "uri1", "idx", 0)}
    loads = []

    def loader(uri: str) -> LoadedModel:
        loads.append(uri)
        if uri == "broken":
            raise OSError("artefact missing")
        return LoadedModel(uri.replace("uri", "v"), FakeTowers(uri), None)

    watcher = ModelWatcher(lambda: current["doc"], loader, refresh_seconds=0.05)
    watcher.start()
    try:
        assert watcher.current().version == "v1"
        assert watcher.check_now() is False  # unchanged: no reload
        current["doc"] = CurrentModelDoc("v2", "uri2", "idx", 1)
        deadline = time.monotonic() + 5
        while watcher.current().version != "v2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.current().version == "v2"
        current["doc"] = CurrentModelDoc("v3", "broken", "idx", 2)
        time.sleep(0.3)
        assert watcher.current().version == "v2"  # the old model keeps serving
        assert loads.count("uri1") == 1 and loads.count("uri2") == 1
    finally:
        watcher.stop()


def test_model_watcher_falls_back_to_newest_version_in_model_dir(tmp_path):
    for version in ("v20260101-000000-aaaaaa", "v20260102-000000-bbbbbb"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "metadata.json").write_text("{}")
    assert latest_version_dir(str(tmp_path)).endswith("v20260102-000000-bbbbbb")
    watcher = ModelWatcher(lambda: None, lambda uri: LoadedModel(uri[-6:], None, None),
                           fallback_uri=str(tmp_path))
    assert watcher.check_now() is True
    assert watcher.current().version == "bbbbbb"


# ---------------------------------------------------------------- idempotent writes


def _doc(user: str, count: int) -> UserDoc:
    return UserDoc(user_id=user, history=(), last_event_id=f"e{count}", last_event_ts=count, updated_at=0,
                   event_count=count)


def test_monotonic_guard_skips_stale_docs_and_serialises_a_user():
    guard = MonotonicGuard()
    fresh = guard.claim([_doc("u1", 2), _doc("u1", 3), _doc("u2", 1)])
    assert sorted((d.user_id, d.event_count) for d in fresh) == [("u1", 3), ("u2", 1)]
    order = []

    def second_writer():
        docs = guard.claim([_doc("u1", 2), _doc("u1", 4)])  # waits: u1 is in flight
        order.append(("claimed", [d.event_count for d in docs]))
        guard.release(docs, committed=True)

    t = threading.Thread(target=second_writer)
    t.start()
    time.sleep(0.2)
    order.append(("released-first", None))
    guard.release(fresh, committed=True)
    t.join(5)
    assert order == [("released-first", None), ("claimed", [4])]
    assert guard.claim([_doc("u1", 4), _doc("u2", 1)]) == []  # replays of written states


def test_trending_rank_prefers_newer_window_then_later_pane():
    old = TrendingDoc(items=(), window_start=0, window_end=60_000, updated_at=0).to_document()
    assert _trending_rank(old) < _trending_rank(TrendingDoc(rank_items(ItemCounts({"a": [1, 0, 0]}), 5),
                                                            0, 120_000, 0))
    small = TrendingDoc(rank_items(ItemCounts({"a": [1, 0, 0]}), 5), 0, 60_000, 0)
    big = TrendingDoc(rank_items(ItemCounts({"a": [2, 0, 0]}), 5), 0, 60_000, 0)
    assert _trending_rank(small) < _trending_rank(big)


# ---------------------------------------------------------------- trending


def test_rank_items_weights_purchases_and_breaks_ties_by_id():
    counts = ItemCounts({"a": [3, 0, 0], "b": [0, 0, 1], "c": [1, 1, 0], "d": [3, 0, 0]})
    ranked = rank_items(counts, top_k=3)
    assert [(e.item_id, e.score) for e in ranked] == [("b", 5.0), ("c", 4.0), ("a", 3.0)]


def test_only_the_window_holding_the_newest_events_is_current():
    fn = ToTrendingDocFn(period_s=60, top_k=5)
    from apache_beam.transforms.window import IntervalWindow

    counts = ItemCounts({"a": [1, 0, 0]}, max_ts=T0 + 90_000)
    current = IntervalWindow((T0 + 120_000 - 3_600_000) / 1000, (T0 + 120_000) / 1000)
    later = IntervalWindow((T0 + 180_000 - 3_600_000) / 1000, (T0 + 180_000) / 1000)
    assert [d.window_end for d in fn.process(counts, current)] == [T0 + 120_000]
    assert list(fn.process(counts, later)) == []


def _tev(event_id: str, item: str, ts: int, kind: str = "view") -> TimestampedValue:
    return TimestampedValue(ev(event_id, "u", item, ts, kind), ts / 1000)


def _batch(*timestamped: TimestampedValue) -> list[TimestampedValue]:
    """One batch of events as the state step emits it: a tuple, timestamped with the earliest."""
    return [TimestampedValue(tuple(t.value for t in timestamped), min(t.timestamp for t in timestamped))]


@pytest.mark.parametrize("batched", [False, True], ids=["events", "batches"])
def test_trending_sliding_windows_with_early_and_late_firings(batched):
    """Window size 4 min, period 1 min: the pane for the window ending after the newest event."""
    group = _batch if batched else (lambda *t: list(t))
    stream = (TestStream()
              .advance_watermark_to(T0 / 1000)
              .add_elements(group(_tev("1", "a", T0 + 1_000), _tev("2", "b", T0 + 2_000, "purchase"),
                                  _tev("3", "a", T0 + 3_000)))
              .advance_processing_time(5)  # early firings
              .add_elements(group(_tev("4", "c", T0 + 61_000), _tev("5", "c", T0 + 62_000, "add_to_cart")))
              .advance_watermark_to((T0 + 120_000) / 1000)
              .advance_processing_time(5)
              .add_elements(group(_tev("late", "a", T0 + 30_000)))  # late but within allowed lateness
              .advance_processing_time(5)
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        docs = (p | stream
                | ComputeTrending(size_s=240, period_s=60, top_k=3, early_firing_s=1, allowed_lateness_s=600)
                | "Rewindow" >> beam.WindowInto(GlobalWindows()))
        summary = docs | beam.Map(lambda d: (d.window_end - T0,
                                             tuple((e.item_id, e.views, e.add_to_cart, e.purchases)
                                                   for e in d.items)))
        assert_that(summary, newest_pane_and_windows_match, label="panes")


def newest_pane_and_windows_match(panes: list) -> None:
    # the newest pane of the window ending at T0+120s holds all events, the late one included
    current = [items for end, items in panes if end == 120_000]
    newest = max(current, key=lambda items: sum(sum(x[1:]) for x in items))
    assert newest == (("b", 0, 0, 1), ("c", 1, 1, 0), ("a", 3, 0, 0)), newest
    # windows whose last minute holds no event (e.g. ending at T0+180s) are never written
    assert {end for end, _ in panes} == {60_000, 120_000}, panes


def test_count_per_slice_splits_a_batch_into_its_slices():
    batch = (ev("1", item="a", ts=T0 + 59_000), ev("2", item="b", ts=T0 + 61_000),
             ev("3", item="a", ts=T0 + 1_000, kind="purchase"), ev("4", item="b", ts=T0 + 62_000))
    out = sorted(CountPerSlice(period_s=60).process(batch), key=lambda tv: tv.timestamp)
    assert [(tv.timestamp, tv.value.counts) for tv in out] == [
        (Timestamp.of((T0 + 59_000) / 1000), {"a": [1, 0, 1]}),
        (Timestamp.of((T0 + 62_000) / 1000), {"b": [2, 0, 0]})]
    assert [tv.value.max_ts for tv in out] == [T0 + 59_000, T0 + 62_000]
    single = list(CountPerSlice(period_s=60).process(ev("5", item="c", ts=T0)))
    assert [(tv.timestamp, tv.value.counts) for tv in single] == [(Timestamp.of(T0 / 1000), {"c": [1, 0, 0]})]


# ---------------------------------------------------------------- archive


def test_archive_lines_are_readable_by_the_training_reader(tmp_path):
    events = [ev("e1"), ProductEvent("e2", "purchase", "u2", "i2", T0 + 1, "s1", {"k": "v"})]
    path = tmp_path / "events-x.jsonl"
    path.write_text("".join(event_line(e) + "\n" for e in events), encoding="utf-8")
    assert read_events_jsonl(path) == events


def test_archive_batch_lines_read_back_as_the_batch(tmp_path):
    batch = (ev("e1"), ProductEvent("e2", "purchase", "u2", "i2", T0 + 1, "s1", {"k": "v"}), ev("e3", "u3"))
    path = tmp_path / "events-y.jsonl"
    # what the text sink writes for two elements: each followed by a newline
    path.write_text(batch_lines(batch) + "\n" + batch_lines(ev("e4")) + "\n", encoding="utf-8")
    assert read_events_jsonl(path) == [*batch, ev("e4")]


def test_archive_file_names_are_unique_per_run_and_part():
    a = archive_file_name(T0 // 1000, 60, "run1")
    assert a == "events-20260101T000000-20260101T000100-run1.jsonl"
    assert archive_file_name(T0 // 1000, 60, "run2") != a
    assert archive_file_name(T0 // 1000, 60, "run1", "w1-b000001") != a


def test_windowed_archive_file_names_are_unique_per_run_and_pane():
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

    win = IntervalWindow(T0 / 1000, T0 / 1000 + 60)
    pane = PaneInfo(True, True, PaneInfoTiming.ON_TIME, 0, 0)
    late = PaneInfo(False, True, PaneInfoTiming.LATE, 1, 1)
    a = archive_file_naming("run1")(win, pane, 0, 1, None, None)
    assert a == "events-20260101T000000-20260101T000100-run1-p0-00000-of-00001.jsonl"
    assert archive_file_naming("run2")(win, pane, 0, 1, None, None) != a
    assert archive_file_naming("run1")(win, late, 0, 1, None, None) != a


def test_archive_appends_every_bundle_to_its_window_file_before_the_bundle_ends(tmp_path):
    fn = AppendArchiveFn(str(tmp_path / "arch"), 3600, "run1")
    fn.setup()
    for batch in [(ev("e1"), ev("e2")), (ev("e3"),)]:
        fn.start_bundle()
        fn.process(batch)
        assert list(fn.finish_bundle()) == []  # written, nothing dead-lettered
    files = list((tmp_path / "arch").glob("*.jsonl"))
    assert len(files) == 1 and [e.event_id for e in read_events_jsonl(files[0])] == ["e1", "e2", "e3"]


def test_archive_write_failure_dead_letters_the_events(tmp_path):
    blocker = tmp_path / "arch"
    fn = AppendArchiveFn(str(blocker), 60, "run1")
    fn.setup()
    blocker.rmdir()
    blocker.write_text("not a directory")  # every append now fails with an OSError
    fn.start_bundle()
    fn.process((ev("e1"), ev("e2")))
    out = list(fn.finish_bundle())
    assert [o.tag for o in out] == [DEAD_LETTER, DEAD_LETTER]
    message = out[0].value.value
    assert parse_event(message.data) == ev("e1")
    assert message.attributes[names.DLQ_REASON_ATTR].startswith("archive: ")


# ---------------------------------------------------------------- whole core, in memory


def latest_per_user_equal_to(expected: list):
    def match(docs: list) -> None:
        latest: dict = {}
        for d in docs:
            if d.user_id not in latest or d.event_count > latest[d.user_id].event_count:
                latest[d.user_id] = d
        got = sorted((d.user_id, d.event_count, tuple(h.item_id for h in d.history), d.embedding)
                     for d in latest.values())
        assert got == sorted(expected), got

    return match


def test_core_end_to_end_with_test_stream():
    config, _ = parse_args(["--history-length", "3", "--trending-window-seconds", "120",
                            "--trending-period-seconds", "60", "--trending-early-firing-seconds", "1",
                            "--user-write-interval-seconds", "0"])
    assert isinstance(config, StreamingConfig)
    events = [ev(f"e{i}", f"u{i % 2}", f"i{i}", T0 + i * 1000) for i in range(6)]
    item = CatalogItem("new1", "T", "books", "acme", 3.0, (), True, T0)
    stream = (TestStream()
              .add_elements([msg(e) for e in events[:4]] + [PubsubMessage(b"[]", {})], tag="events")
              .add_elements([PubsubMessage(item.to_pubsub_data(), {}), PubsubMessage(b"{}", {})],
                            tag="catalog")
              .advance_processing_time(2)
              .add_elements([msg(e) for e in events[4:]] + [msg(events[0])], tag="events")
              .advance_watermark_to_infinity(tag="events")
              .advance_watermark_to_infinity(tag="catalog"))
    with streaming_pipeline() as p:
        out = p | stream | RecommenderCore(config, StaticModels("v1"), MemoryStore({}))
        assert_that(out["user_docs"] | beam.Map(lambda w: w.doc),
                    latest_per_user_equal_to([("u0", 3, ("i0", "i2", "i4"), (3.0, 6.0, 16.0, 1.0)),
                                              ("u1", 3, ("i1", "i3", "i5"), (3.0, 9.0, 22.0, 1.0))]),
                    label="users")
        assert_that(out["item_docs"] | beam.Map(lambda d: (d.item_id, d.model_version)),
                    equal_to([("new1", "v1")]), label="items")
        assert_that(out["dead_letters"] | beam.Map(lambda m: m.attributes[names.DLQ_SOURCE_ATTR]),
                    equal_to(["events", "catalog"]), label="dead")
        assert_that(out["accepted_batches"] | beam.FlatMap(lambda b: [e.event_id for e in b]),
                    equal_to([e.event_id for e in events]), label="accepted")


def test_items_leaving_the_history_window_are_remembered_as_seen():
    from pipelines.streaming.user_state import UserState, apply_events
    from schemas.firestore import with_seen

    events = [ProductEvent(f"e{i}", "view", "u1", f"i{i % 4}", T0 + i) for i in range(6)]
    state, outcomes = apply_events(UserState("u1"), events, history_length=2, now_s=0)
    assert outcomes == ["accepted"] * 6
    assert [h.item_id for h in state.history] == ["i0", "i1"]  # events 4 and 5
    assert state.seen == ("i0", "i1", "i2", "i3")  # e0..e3 left the window, in order, distinct
    older = ProductEvent("old", "view", "u1", "i9", T0 - 1)  # counted, never in the full history
    state, _ = apply_events(state, [older], history_length=2, now_s=0)
    assert state.seen[-1] == "i9"
    assert with_seen(("a", "b", "c"), ["a", "d"], limit=3) == ("c", "a", "d")
    doc = UserDoc("u1", state.history, state.last_event_id, state.last_event_ts, 0, None, None,
                  state.event_count, seen=state.seen)
    assert UserDoc.from_document(doc.to_document()).seen == state.seen
