"""Attribution of events to served lists: the join, the per-arm aggregation, the documents."""

from __future__ import annotations

import random

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from google.api_core import exceptions

from pipelines.compat import beam_direct_pubsub
from pipelines.streaming.attribution import (
    DEAD_LETTER,
    DEDUP_RETENTION_S,
    EVENT,
    PERSIST,
    SERVED,
    AggregateArmsFn,
    Attribute,
    Contribution,
    JoinServedFn,
    JoinState,
    PendingWrite,
    StoredExperiment,
    apply_contributions,
    arm_order,
    count_id,
    join,
    pack_counted,
    unpack_counted,
)
from pipelines.streaming.experiment_io import DEDUP_DOC, stats_documents
from schemas.events import ProductEvent
from schemas.experiments import SUMMARY_DOC, ArmCounts, ServedRecord, arm_figures

T0 = 1_767_225_600_000


def served(rid: str = "r1", items=("a", "b", "c"), experiment: str | None = "exp", arm: str | None = "ctl",
           ts: int = T0) -> ServedRecord:
    return ServedRecord(recommendation_id=rid, timestamp=ts, items=tuple(items), experiment=experiment,
                        arm=arm)


def totals(contributions) -> ArmCounts:
    out = ArmCounts()
    for c in contributions:
        out = out.plus(c.counts)
    return out


# ----------------------------------------------------------------------------- the join


def test_events_after_their_served_record_count_per_list_and_item():
    state, out, waiting = join(JoinState(), served=served())
    assert waiting == () and totals(out) == ArmCounts(served=1, shown=3)
    state, out, _ = join(state, events=[("b", "view"), ("b", "add_to_cart"), ("c", "purchase")])
    assert totals(out) == ArmCounts(clicks=1, carts=1, purchases=1, click_positions=(0, 1))
    assert {c.key for c in out} == {("r1", "b", "view"), ("r1", "b", "add_to_cart"), ("r1", "c", "purchase")}


def test_a_second_view_of_the_same_item_and_items_not_in_the_list_count_nothing():
    state, _, _ = join(JoinState(), served=served())
    state, out, _ = join(state, events=[("a", "view")])
    assert totals(out) == ArmCounts(clicks=1, click_positions=(1,))
    state, out, _ = join(state, events=[("a", "view"), ("zz", "view"), ("zz", "purchase"), ("a", "view")])
    assert out == []


def test_events_before_their_served_record_wait_and_count_when_it_arrives():
    state, out, waiting = join(JoinState(), events=[("c", "view"), ("c", "view"), ("x", "view")])
    assert out == [] and waiting == (("c", "view"), ("x", "view"))
    assert state.pending == (("c", "view"), ("x", "view"))
    state, out, _ = join(state, served=served())
    assert totals(out) == ArmCounts(served=1, shown=3, clicks=1, click_positions=(0, 0, 1))
    assert state.pending == ()


def test_a_duplicate_served_record_counts_nothing():
    state, _, _ = join(JoinState(), served=served())
    state2, out, _ = join(state, served=served())
    assert out == [] and state2 == state


def test_lists_without_an_experiment_count_nothing():
    state, out, _ = join(JoinState(), served=served(experiment=None, arm=None))
    assert out == []
    _, out, waiting = join(state, events=[("a", "view"), ("b", "purchase")])
    assert out == [] and waiting == ()  # nothing waits: the served record is known


# ----------------------------------------------------------------------------- the keyed DoFns


class FakeState:
    def __init__(self, value=None) -> None:
        self.value = value

    def read(self):
        return self.value

    def write(self, value) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class FakeTimer:
    def __init__(self) -> None:
        self.at = None

    def set(self, ts) -> None:
        self.at = float(ts.micros) / 1e6


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def split(outputs):
    main, tagged = [], {}
    for o in outputs:
        if isinstance(o, beam.pvalue.TaggedOutput):
            tagged.setdefault(o.tag, []).append(o.value)
        else:
            main.append(o)
    return main, tagged


class PendingStore:
    def __init__(self, pending=None, fail: bool = False, served_records=()) -> None:
        self.data = dict(pending or {})
        self.records = {r.recommendation_id: r for r in served_records}
        self.reads: list[str] = []
        self.fail = fail

    def served(self, rid):
        self.reads.append(f"served:{rid}")
        return self.records.get(rid)

    def pending(self, rid):
        self.reads.append(rid)
        if self.fail:
            raise exceptions.ServiceUnavailable("down")
        return self.data.get(rid, ())

    def experiment(self, experiment_id):
        return StoredExperiment(arms={})


def test_the_join_state_expires_after_the_ttl_and_its_waiting_events_are_deleted():
    clock = Clock(1_000.0)
    fn = JoinServedFn(None, ttl_s=1800, clock=clock)
    fn.setup()
    state, timer = FakeState(), FakeTimer()
    main, tagged = split(fn.process(("r1", (EVENT, ("a", "view"))), state, timer))
    assert main == [] and tagged[PERSIST] == [PendingWrite("r1", (("a", "view"),))]
    assert timer.at == 2_800.0  # the TTL runs from the first sight of the id
    assert timer.at and beam_direct_pubsub._is_non_barrier("user/" + JoinServedFn.EXPIRE.name)
    clock.now = 2_800.0
    main, tagged = split(fn.expire_state("r1", state))
    assert state.value is None and tagged[PERSIST] == [PendingWrite("r1", delete=True)]
    # after expiry the id is new: its served record counts and nothing old is attributed
    main, tagged = split(fn.process(("r1", (SERVED, served())), state, timer))
    assert totals(main) == ArmCounts(served=1, shown=3) and tagged[PERSIST] == [served()]
    assert timer.at == 2_800.0 + 1800


def test_served_record_matches_waiting_events_whose_document_stays_until_the_ttl():
    fn = JoinServedFn(None, clock=Clock())
    fn.setup()
    state, timer = FakeState(), FakeTimer()
    list(fn.process(("r1", (EVENT, ("b", "view"))), state, timer))
    main, tagged = split(fn.process(("r1", (SERVED, served())), state, timer))
    assert totals(main) == ArmCounts(served=1, shown=3, clicks=1, click_positions=(0, 1))
    # the served record is stored; the waiting events' document stays (a crash before the counts
    # are committed redelivers the served record, which must find them again)
    assert tagged[PERSIST] == [served()] and state.value.stored_pending
    main, tagged = split(fn.process(("r1", (SERVED, served())), state, timer))
    assert main == [] and tagged == {}
    _, tagged = split(fn.expire_state("r1", state))
    assert tagged[PERSIST] == [PendingWrite("r1", delete=True)]


def test_a_served_record_from_before_start_reads_the_events_persisted_by_the_previous_run():
    clock = Clock(T0 / 1000 + 600)
    store = PendingStore({"old": (("a", "view"), ("c", "purchase"))})
    fn = JoinServedFn(store, clock=clock)
    fn.setup()
    main, tagged = split(fn.process(("old", (SERVED, served("old", ts=T0))), FakeState(), FakeTimer()))
    assert totals(main) == ArmCounts(served=1, shown=3, clicks=1, purchases=1, click_positions=(1,))
    assert tagged[PERSIST] == [served("old", ts=T0)]
    # a list answered after start cannot have events from before it: no read
    main, _ = split(fn.process(("new", (SERVED, served("new", ts=int(clock.now * 1000) + 120_000))),
                               FakeState(), FakeTimer()))
    assert store.reads == ["old"] and totals(main) == ArmCounts(served=1, shown=3)


def test_an_event_of_a_list_served_before_a_restart_uses_the_stored_served_record():
    clock = Clock(T0 / 1000 + 60)
    store = PendingStore(served_records=[served("r1"), served("ancient", ts=T0 - 3_600_000)])
    fn = JoinServedFn(store, ttl_s=1800, clock=clock)
    fn.setup()
    state = FakeState()
    main, tagged = split(fn.process(("r1", (EVENT, ("b", "view"))), state, FakeTimer()))
    # the served count is not repeated: the previous run counted it
    assert totals(main) == ArmCounts(clicks=1, click_positions=(0, 1)) and tagged == {}
    # its message redelivered: counted again here, dropped by the aggregator's memory
    main, _ = split(fn.process(("r1", (SERVED, served("r1"))), state, FakeTimer()))
    assert totals(main) == ArmCounts(served=1, shown=3)
    main, _ = split(fn.process(("r1", (SERVED, served("r1"))), state, FakeTimer()))
    assert main == []
    # a stored record older than the TTL is over; after the first TTL since start nothing is read
    main, tagged = split(fn.process(("ancient", (EVENT, ("a", "view"))), FakeState(), FakeTimer()))
    assert main == [] and tagged[PERSIST] == [PendingWrite("ancient", (("a", "view"),))]
    clock.now += 1801
    store.reads.clear()
    list(fn.process(("r1", (EVENT, ("a", "view"))), FakeState(), FakeTimer()))
    assert store.reads == []


def test_a_failed_pending_read_dead_letters_the_served_record():
    fn = JoinServedFn(PendingStore(fail=True), clock=Clock(T0 / 1000 + 10))
    fn.setup()
    state = FakeState()
    main, tagged = split(fn.process(("r1", (SERVED, served())), state, FakeTimer()))
    assert main == [] and len(tagged[DEAD_LETTER]) == 1
    letter = tagged[DEAD_LETTER][0]
    assert letter.attributes["dlq_source"] == "served" and b'"recommendation_id":"r1"' in letter.data
    assert state.value.served is None  # republished, it counts


def contribution(rid: str, arm: str = "ctl", item: str = "", kind: str = "", **counts) -> Contribution:
    return Contribution("exp", arm, (rid, item, kind), ArmCounts(**counts))


class ExperimentStore:
    def __init__(self, stored: StoredExperiment | None = None, failures: int = 0) -> None:
        self.stored, self.failures, self.reads = stored, failures, 0

    def pending(self, rid):
        return ()

    def experiment(self, experiment_id):
        self.reads += 1
        if self.failures:
            self.failures -= 1
            raise exceptions.DeadlineExceeded("slow")
        return self.stored or StoredExperiment(arms={})


def test_aggregate_writes_at_once_then_coalesces_until_the_interval_is_over():
    clock = Clock(100.0)
    fn = AggregateArmsFn(ExperimentStore(), write_interval_s=1.0, clock=clock)
    stats, buffer, timer = FakeState(), FakeState(), FakeTimer()
    [first] = fn.process(("exp", contribution("r1", served=1, shown=3)), stats, buffer, timer)
    assert first.arms == (("ctl", ArmCounts(served=1, shown=3)),) and timer.at is None
    clock.now = 100.2
    assert list(fn.process(("exp", contribution("r1", item="a", kind="view", clicks=1)), stats, buffer,
                           timer)) == []
    assert list(fn.process(("exp", contribution("r2", arm="new", served=1, shown=2)), stats, buffer,
                           timer)) == []
    assert timer.at == 101.0
    clock.now = 101.0
    [second] = fn.flush_coalesced("exp", stats, buffer, timer)
    assert dict(second.arms) == {"ctl": ArmCounts(served=1, shown=3, clicks=1),
                                 "new": ArmCounts(served=1, shown=2)}
    assert second.seq == first.seq + 1 and [a for a, _ in second.arms] == ["ctl", "new"]


def test_aggregate_seeds_from_the_stored_documents_and_drops_what_was_counted_before_a_crash():
    stored = StoredExperiment(arms={"b": ArmCounts(served=5, shown=15)},
                              counted=((95.0, count_id(("r1", "", ""))),), order=("b", "a"))
    fn = AggregateArmsFn(ExperimentStore(stored), write_interval_s=0.0, clock=Clock(100.0))
    stats, buffer, timer = FakeState(), FakeState(), FakeTimer()
    again = contribution("r1", arm="b", served=1, shown=3)  # counted before the crash
    assert list(fn.process(("exp", again), stats, buffer, timer)) == []
    [write] = fn.process(("exp", contribution("r2", arm="a", served=1, shown=3)), stats, buffer, timer)
    assert write.arms == (("b", ArmCounts(served=5, shown=15)), ("a", ArmCounts(served=1, shown=3)))
    assert [k for _, k in write.counted] == [count_id(("r1", "", "")), count_id(("r2", "", ""))]


def test_aggregate_retries_a_failed_seed_read_and_keeps_the_contributions():
    clock = Clock(100.0)
    store = ExperimentStore(failures=1)
    fn = AggregateArmsFn(store, write_interval_s=1.0, clock=clock)
    stats, buffer, timer = FakeState(), FakeState(), FakeTimer()
    assert list(fn.process(("exp", contribution("r1", served=1, shown=3)), stats, buffer, timer)) == []
    assert timer.at == 101.0 and buffer.value.timer_set  # a barrier: its messages wait
    clock.now = 101.0
    [write] = fn.flush_coalesced("exp", stats, buffer, timer)
    assert write.arms == (("ctl", ArmCounts(served=1, shown=3)),) and store.reads == 2


def test_the_dedup_memory_is_bounded_by_age_and_count():
    stored = StoredExperiment(arms={}, counted=((0.0, count_id(("old", "", ""))),
                                                (50.0, count_id(("kept", "", "")))))
    now = 50.0 + DEDUP_RETENTION_S - 1
    state, dropped = apply_contributions(stored, [contribution(f"r{i}", served=1) for i in range(5)]
                                         + [contribution("old", served=1), contribution("kept", served=1)],
                                         now, max_counted=4)
    assert dropped == 1  # "kept" is remembered; "old" was forgotten (so counts again)
    assert [k for _, k in state.counted] == [count_id((r, "", "")) for r in ("r2", "r3", "r4", "old")]
    assert len(pack_counted(state.counted)) < 4 * 40
    assert state.arms["ctl"].served == 6
    assert unpack_counted(pack_counted(state.counted)) == state.counted


def test_arm_order_is_the_experiments_then_names():
    assert arm_order({"b", "z", "a"}, ("z", "b")) == ["z", "b", "a"]
    assert arm_order({"b", "a"}, None) == ["a", "b"]


def test_stats_documents_hold_figures_summary_with_the_control_first_and_the_memory():
    from pipelines.streaming.attribution import ExperimentWrite

    write = ExperimentWrite("exp", (("ctl", ArmCounts(served=10, shown=100, clicks=5)),
                                    ("new", ArmCounts(served=10, shown=100, clicks=15))),
                            ((1.0, count_id(("r1", "", ""))),), 3, T0)
    docs = stats_documents(write)
    assert docs["ctl"] == {**arm_figures(ArmCounts(served=10, shown=100, clicks=5)), "updated_at": T0}
    assert docs[SUMMARY_DOC]["control"] == "ctl" and docs[SUMMARY_DOC]["arms"] == ["ctl", "new"]
    assert docs[SUMMARY_DOC]["comparisons"][0]["arm"] == "new"
    assert abs(docs[SUMMARY_DOC]["comparisons"][0]["ctr_diff"] - 0.10) < 1e-12
    assert unpack_counted(docs[DEDUP_DOC]["counted"]) == write.counted


# ----------------------------------------------------------------------------- streaming


def test_attribute_transform_joins_served_records_and_events_in_any_order():
    def ev(eid, item, kind, rid):
        return ProductEvent(eid, kind, "u1", item, T0, recommendation_id=rid)

    stream = (TestStream()
              .add_elements([TimestampedValue(("events", ev("e1", "b", "view", "r1")), T0 / 1000)])
              .add_elements([TimestampedValue(("served", served("r1")), T0 / 1000),
                             TimestampedValue(("served", served("r2", arm="new")), T0 / 1000),
                             TimestampedValue(("served", served("r1")), T0 / 1000)])
              .add_elements([TimestampedValue(("events", e), T0 / 1000) for e in (
                  ev("e2", "a", "view", "r2"), ev("e3", "a", "view", "r2"), ev("e4", "q", "view", "r2"),
                  ev("e5", "a", "purchase", None))])
              .advance_processing_time(5)
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        tagged = p | stream
        inputs = {"served": tagged | "S" >> beam.Filter(lambda t: t[0] == "served") | "SV" >> beam.Values(),
                  "events": tagged | "E" >> beam.Filter(lambda t: t[0] == "events") | "EV" >> beam.Values()}
        out = inputs | Attribute(None, write_interval_s=0.0)
        want = {"ctl": ArmCounts(served=1, shown=3, clicks=1, click_positions=(0, 1)),
                "new": ArmCounts(served=1, shown=3, clicks=1, click_positions=(1,))}

        def newest_counts(writes):
            newest = max(writes, key=lambda w: w.seq)
            assert {w.experiment_id for w in writes} == {"exp"} and dict(newest.arms) == want, writes

        assert_that(out["writes"], newest_counts,
                    label="counts")
        assert_that(out[PERSIST],
                    equal_to([PendingWrite("r1", (("b", "view"),)),
                              served("r1"), served("r2", arm="new")]),
                    label="pending")


# ----------------------------------------------------------------------------- known rates


def test_simulated_click_rates_per_arm_are_recovered_within_their_intervals():
    rng = random.Random(19)
    rates = {"control": 0.05, "treatment": 0.15}
    items = [f"i{k}" for k in range(10)]
    states: dict[str, JoinState] = {}
    contributions: list[Contribution] = []
    for n in range(3000):
        arm = "control" if n % 2 == 0 else "treatment"
        rid = f"r{n}"
        clicks = [(i, "view") for i in items if rng.random() < rates[arm]]
        early, late = clicks[: len(clicks) // 2], clicks[len(clicks) // 2:]
        state, out, _ = join(JoinState(), events=early)  # some events overtake their list
        state, out2, _ = join(state, served=ServedRecord(rid, T0, tuple(items), experiment="exp", arm=arm))
        state, out3, _ = join(state, events=late + clicks)  # and every click is redelivered once
        states[rid] = state
        contributions += out + out2 + out3
    stored, dropped = apply_contributions(StoredExperiment(arms={}), contributions, 0.0, max_counted=10**6)
    assert dropped == 0
    figures = {arm: arm_figures(c) for arm, c in stored.arms.items()}
    for arm, p in rates.items():
        lo, hi = figures[arm]["ctr_ci95"]
        print(arm, figures[arm]["clicks"], figures[arm]["shown"], round(figures[arm]["ctr"], 4), (lo, hi))
        assert figures[arm]["shown"] == 15_000 and lo <= p <= hi
    from schemas.experiments import compare_arms

    comparison = compare_arms([("control", stored.arms["control"]), ("treatment", stored.arms["treatment"])])
    assert comparison["control"] == "control"
    assert comparison["comparisons"][0]["ctr_p_value"] < 1e-10
    assert abs(comparison["comparisons"][0]["ctr_diff"] - 0.10) < 0.02


# ----------------------------------------------------------------------------- edges


def test_invalid_served_records_go_to_the_dead_letters_with_the_reason():
    from apache_beam.io.gcp.pubsub import PubsubMessage

    from pipelines.streaming.attribution import ParseServed

    good = served("ok")
    messages = [PubsubMessage(good.to_pubsub_data(), good.pubsub_attributes()),
                PubsubMessage(b"{not json", {"k": "v"}),
                PubsubMessage(b'{"recommendation_id": "r", "timestamp": 1, "items": [], "experiment": "e"}',
                              {})]
    with TestPipeline() as p:
        out = p | beam.Create(messages) | ParseServed()
        assert_that(out.valid | beam.Map(lambda r: r.recommendation_id), equal_to(["ok"]), label="valid")
        why = out[DEAD_LETTER] | beam.Map(lambda m: (m.attributes["dlq_source"], m.attributes["dlq_field"],
                                                     m.attributes.get("k")))
        assert_that(why,
                    equal_to([("served", "payload", "v"), ("served", "arm", None)]), label="dead")


def test_served_subscription_flag_defaults_to_the_contract_and_empty_disables_attribution():
    from pipelines.streaming.pipeline import parse_args
    from schemas import names

    config, _ = parse_args(["--project", "p"])
    assert config.served_subscription == f"projects/p/subscriptions/{names.SERVED_SUBSCRIPTION}"
    assert config.attribution_ttl_s == 1800 and config.experiment_write_interval_s == 1.0
    config, _ = parse_args(["--project", "p", "--served-subscription", "", "--attribution-ttl-seconds", "60"])
    assert config.served_subscription is None and config.attribution_ttl_s == 60


def test_a_failed_stats_commit_is_retried_then_counted_never_raised(monkeypatch):
    from pipelines.streaming import experiment_io
    from pipelines.streaming.attribution import ExperimentWrite

    monkeypatch.setattr(experiment_io, "RETRY_BACKOFF_S", 0.0)

    class Batch:
        def __init__(self, client):
            self.client = client

        def set(self, ref, data, merge=False):
            pass

        def commit(self):
            self.client.commits += 1
            raise exceptions.ServiceUnavailable("firestore down")

    class Client:
        commits = 0

        def batch(self):
            return Batch(self)

        def collection(self, name):
            return self

        def document(self, name):
            return self

    fn = experiment_io.WriteExperimentStatsFn(None)
    fn._client = Client()
    fn.start_bundle()
    fn.process(ExperimentWrite("exp", (("ctl", ArmCounts(served=1, shown=3)),), (), 1, T0))
    fn.finish_bundle()  # does not raise: the state still holds the counts, the next write carries them
    assert fn._client.commits == experiment_io.WRITE_ATTEMPTS
