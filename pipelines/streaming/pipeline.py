"""Streaming pipeline: product events -> fresh user embeddings, trending items, new items,
per-arm experiment figures.

Reads the events, catalogue-updates and served-lists subscriptions (with attributes) and, in
Firestore:

* ``users/{id}``: deduplicated per-user history (last ``--history-length`` events) and the
  embedding recomputed with the *current* query tower after every accepted event;
* ``items/{id}``: catalogue updates embedded with the current candidate tower and content encoder;
* ``stats/trending``: item counts over sliding event-time windows, ranked;
* ``stats/experiments/{experiment_id}/{arm}`` and ``.../_summary``: events that carry a
  ``recommendation_id`` joined (keyed state, ``--attribution-ttl-seconds``) with the served
  record the recommend function published for that list (``--served-subscription``; empty
  disables it), counted per arm and compared (:mod:`pipelines.streaming.attribution`), written
  at most once per ``--experiment-write-interval-seconds`` per experiment;
* invalid messages go to the dead-letter topic (original payload + ``dlq_*`` attributes), and so
  do the events a later stage fails on (seed read, embedding, Firestore commit), with the reason;
* ``DELETE /users/{id}`` on the ingest function (a ``kind=forget`` message on the events topic)
  clears the user's state, deletes ``users/{id}`` and archives a tombstone that training honours;
* accepted events are archived as JSON lines per arrival window under ``--archive-dir`` for
  training (written per bundle on the DirectRunner, when the window closes on Dataflow).

A new ``models/current`` is picked up without a restart (``--model-refresh-seconds``). A user's
document is written at most once per ``--user-write-interval-seconds`` (coalesced in keyed state).

Delivery: at least once into the pipeline, effectively once into ``users/{id}``: the DirectRunner
read acks a message only once everything it caused is durable (documents committed, dead letters
published, archive written; :mod:`pipelines.compat.beam_direct_pubsub`), Dataflow acks after its
own checkpoint, and a redelivered event is dropped by the per-user dedup (seeded from
``users/{id}`` after a restart). Experiment counts are effectively once too, by their own
dedup (not the per-user one, which a crash can put ahead of them): the aggregator's memory of
counted (list, item, kind) is stored with them (``_dedup``) and the join stores what it needs
across a restart (:mod:`pipelines.streaming.attribution`); its 30-minute TTL timer is the one
timer that does not hold acks.

Locally (DirectRunner, emulators from ``make stack-start``; SIGTERM/Ctrl-C drains then exits)::

    source .local/stack.env
    python -m pipelines.streaming --model-dir artifacts/models --archive-dir artifacts/events

On Dataflow (same code, flags only)::

    python -m pipelines.streaming --runner DataflowRunner --project $PROJECT --region $REGION \\
        --temp_location gs://$BUCKET/tmp --setup_file ./setup.py --streaming \\
        --model-dir gs://$BUCKET/models --archive-dir gs://$BUCKET/events
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, fields
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub, WriteToPubSub
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from pipelines import direct_runner
from pipelines.streaming import attribution, trending
from pipelines.streaming.archive import ArchiveEvents
from pipelines.streaming.attribution import PERSIST, Attribute, AttributionStore, ParseServed
from pipelines.streaming.embed import EmbedItems, EmbedUsers, ModelSource, WatchedModel
from pipelines.streaming.experiment_io import (
    FirestoreAttributionStore,
    WriteAttributionDocsFn,
    WriteExperimentStatsFn,
)
from pipelines.streaming.firestore_io import (
    FirestoreSettings,
    FirestoreUserStore,
    WriteItemDocsFn,
    WriteTrendingFn,
    WriteUserDocsFn,
)
from pipelines.streaming.parse import DEAD_LETTER, ParseCatalog, ParseEvents
from pipelines.streaming.trending import ComputeTrending
from pipelines.streaming.user_state import (
    ACCEPTED_BATCHES,
    FORGETS,
    WRITE_INTERVAL_S,
    UpdateUserState,
    UserStore,
)
from schemas import names

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamingConfig:
    """The pipeline's own settings (Beam's options are parsed separately)."""

    project: str
    events_subscription: str
    catalog_subscription: str
    dead_letter_topic: str
    served_subscription: str | None = None  # None: no attribution
    firestore_database: str = "(default)"
    model_dir: str | None = None
    archive_dir: str | None = None
    archive_window_s: int = 60
    history_length: int = 50
    trending_window_s: int = trending.WINDOW_S
    trending_period_s: int = trending.PERIOD_S
    trending_top_k: int = trending.TOP_K
    trending_early_firing_s: int = trending.EARLY_FIRING_S
    trending_fanout: int = trending.FANOUT
    allowed_lateness_s: int = trending.ALLOWED_LATENESS_S
    user_write_interval_s: float = WRITE_INTERVAL_S
    attribution_ttl_s: float = attribution.TTL_S
    experiment_write_interval_s: float = attribution.WRITE_INTERVAL_S
    model_refresh_s: float = 10.0
    inference: str = "bundle"
    direct_pull_max_messages: int = 5000
    direct_max_unacked: int = 20000
    drain_idle_s: float = 3.0

    @property
    def firestore(self) -> FirestoreSettings:
        return FirestoreSettings(project=self.project, database=self.firestore_database)


def _path(project: str, kind: str, name: str) -> str:
    return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"


def parse_args(argv: list[str] | None) -> tuple[StreamingConfig, PipelineOptions]:
    """Own flags -> ``StreamingConfig``; the rest (plus ``--project``) -> ``PipelineOptions``."""
    d = {f.name: f.default for f in fields(StreamingConfig)}  # one source for the defaults
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-subscription", default=names.EVENTS_SUBSCRIPTION,
                        help="name or projects/.../subscriptions/... path")
    parser.add_argument("--catalog-subscription", default=names.CATALOG_SUBSCRIPTION)
    parser.add_argument("--dead-letter-topic", default=names.DEAD_LETTER_TOPIC)
    parser.add_argument("--served-subscription", default=names.SERVED_SUBSCRIPTION,
                        help="served lists (recommendation_id -> arm, items); empty: no attribution")
    parser.add_argument("--attribution-ttl-seconds", type=float, default=d["attribution_ttl_s"],
                        help="how long a served list's events are attributed after its id is first seen")
    parser.add_argument("--experiment-write-interval-seconds", type=float,
                        default=d["experiment_write_interval_s"],
                        help="write an experiment's stats documents at most once per this interval")
    parser.add_argument("--firestore-database", default=d["firestore_database"])
    parser.add_argument("--model-dir", default=None,
                        help="artefact dir (or dir of versions) used until models/current exists")
    parser.add_argument("--archive-dir", default=None, help="event archive (local dir or gs://)")
    parser.add_argument("--archive-window-seconds", type=int, default=d["archive_window_s"])
    parser.add_argument("--history-length", type=int, default=d["history_length"])
    parser.add_argument("--trending-window-seconds", type=int, default=d["trending_window_s"])
    parser.add_argument("--trending-period-seconds", type=int, default=d["trending_period_s"])
    parser.add_argument("--trending-top-k", type=int, default=d["trending_top_k"])
    parser.add_argument("--trending-early-firing-seconds", type=int, default=d["trending_early_firing_s"],
                        help="processing-time interval of trending's early panes; each firing "
                             "re-emits every open sliding window (size / period of them), so a "
                             "short interval costs freshness of user documents (see "
                             "pipelines/streaming/trending.py EARLY_FIRING_S)")
    parser.add_argument("--trending-fanout", type=int, default=d["trending_fanout"],
                        help="hot-key fan-out of trending's global combines (intermediate keys)")
    parser.add_argument("--allowed-lateness-seconds", type=int, default=d["allowed_lateness_s"])
    parser.add_argument("--user-write-interval-seconds", type=float, default=d["user_write_interval_s"],
                        help="write a user's document at most once per this interval (0: every bundle)")
    parser.add_argument("--model-refresh-seconds", type=float, default=d["model_refresh_s"])
    parser.add_argument("--inference", choices=["bundle", "runinference"], default=d["inference"])
    parser.add_argument("--direct-pull-max-messages", type=int, default=d["direct_pull_max_messages"],
                        help="DirectRunner only: largest read bundle (pulls repeat while a backlog "
                             "answers; a trickle makes small bundles)")
    parser.add_argument("--direct-max-unacked", type=int, default=d["direct_max_unacked"],
                        help="DirectRunner only: pulling pauses while this many messages wait to be acked")
    parser.add_argument("--drain-idle-seconds", type=float, default=d["drain_idle_s"],
                        help="DirectRunner only: idle time that ends a drain")
    args, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(beam_args)
    gcp = options.view_as(GoogleCloudOptions)
    project = gcp.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or names.DEFAULT_PROJECT
    gcp.project = project
    options.view_as(StandardOptions).streaming = True
    if args.history_length < 1:
        parser.error("--history-length must be >= 1")
    if args.attribution_ttl_seconds <= 0:
        parser.error("--attribution-ttl-seconds must be > 0")
    if args.trending_window_seconds % args.trending_period_seconds:
        parser.error("--trending-window-seconds must be a multiple of --trending-period-seconds")
    config = StreamingConfig(
        project=project,
        events_subscription=_path(project, "subscriptions", args.events_subscription),
        catalog_subscription=_path(project, "subscriptions", args.catalog_subscription),
        dead_letter_topic=_path(project, "topics", args.dead_letter_topic),
        served_subscription=(_path(project, "subscriptions", args.served_subscription)
                             if args.served_subscription else None),
        attribution_ttl_s=args.attribution_ttl_seconds,
        experiment_write_interval_s=args.experiment_write_interval_seconds,
        firestore_database=args.firestore_database, model_dir=args.model_dir,
        archive_dir=args.archive_dir, archive_window_s=args.archive_window_seconds,
        history_length=args.history_length, trending_window_s=args.trending_window_seconds,
        trending_period_s=args.trending_period_seconds, trending_top_k=args.trending_top_k,
        trending_early_firing_s=args.trending_early_firing_seconds, trending_fanout=args.trending_fanout,
        allowed_lateness_s=args.allowed_lateness_seconds,
        user_write_interval_s=args.user_write_interval_seconds, model_refresh_s=args.model_refresh_seconds,
        inference=args.inference, direct_pull_max_messages=args.direct_pull_max_messages,
        direct_max_unacked=args.direct_max_unacked, drain_idle_s=args.drain_idle_seconds)
    return config, options


class RecommenderCore(beam.PTransform):
    """The I/O-free middle: ``{"events", "catalog"[, "served"]}`` messages -> docs, dead letters,
    events.

    Output dict: ``user_docs`` (``UserWrite``: the document and the events it newly holds),
    ``item_docs``, ``trending`` (``TrendingDoc``), ``dead_letters`` (``PubsubMessage``) and
    ``accepted_batches`` (deduplicated ``ProductEvent``\\s, a tuple per bundle) and ``forgets``
    (the ``ForgetRequest``\\s applied: ``users/{id}`` is deleted by the user writes, the archive
    gets a tombstone). With a ``served`` input also ``experiment_stats`` (``ExperimentWrite``)
    and ``attribution_docs`` (``PendingWrite``, ``ServedRecord``: what the join stores).
    """

    def __init__(self, config: StreamingConfig, models: ModelSource, user_store: UserStore | None,
                 attribution_store: AttributionStore | None = None) -> None:
        super().__init__()
        self.config = config
        self.models = models
        self.user_store = user_store
        self.attribution_store = attribution_store

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        cfg = self.config
        events = inputs["events"] | "ParseEvents" >> ParseEvents()
        catalog = inputs["catalog"] | "ParseCatalog" >> ParseCatalog()
        users = events.valid | "UpdateUserState" >> UpdateUserState(
            cfg.history_length, self.user_store, cfg.user_write_interval_s)
        accepted = users[ACCEPTED_BATCHES]
        embedded = users["states"] | "EmbedUsers" >> EmbedUsers(self.models, cfg.inference)
        dead = [events[DEAD_LETTER], catalog[DEAD_LETTER], users[DEAD_LETTER], embedded[DEAD_LETTER]]
        attributed = {}
        if "served" in inputs:
            served = inputs["served"] | "ParseServed" >> ParseServed()
            joined = {"served": served.valid, "events": events.valid} | "Attribute" >> Attribute(
                self.attribution_store, cfg.attribution_ttl_s, cfg.experiment_write_interval_s)
            dead += [served[DEAD_LETTER], joined[DEAD_LETTER]]
            attributed = {"experiment_stats": joined["writes"], "attribution_docs": joined[PERSIST]}
        return {
            **attributed,
            "user_docs": embedded["docs"],
            "item_docs": catalog.valid | "EmbedItems" >> EmbedItems(self.models),
            "trending": accepted | "Trending" >> ComputeTrending(
                cfg.trending_window_s, cfg.trending_period_s, cfg.trending_top_k,
                cfg.trending_early_firing_s, cfg.allowed_lateness_s, cfg.trending_fanout),
            "dead_letters": tuple(dead) | "DeadLetters" >> beam.Flatten(),
            "accepted_batches": accepted,
            "forgets": users[FORGETS],
        }


def build(p: beam.Pipeline, config: StreamingConfig) -> dict[str, beam.PCollection]:
    """Add the whole pipeline (sources, core, sinks) to ``p``."""
    store = FirestoreUserStore(config.firestore)
    models = WatchedModel(config.firestore, config.model_dir, config.model_refresh_s)
    sources = {
        "events": p | "ReadEvents" >> ReadFromPubSub(subscription=config.events_subscription,
                                                     with_attributes=True),
        "catalog": p | "ReadCatalog" >> ReadFromPubSub(subscription=config.catalog_subscription,
                                                       with_attributes=True),
    }
    if config.served_subscription:
        sources["served"] = p | "ReadServed" >> ReadFromPubSub(subscription=config.served_subscription,
                                                               with_attributes=True)
    core = RecommenderCore(config, models, store, FirestoreAttributionStore(config.firestore))
    out = sources | "Core" >> core
    users = out["user_docs"] | "WriteUsers" >> beam.ParDo(WriteUserDocsFn(config.firestore)).with_outputs(
        DEAD_LETTER, main="written")
    items = out["item_docs"] | "WriteItems" >> beam.ParDo(WriteItemDocsFn(config.firestore)).with_outputs(
        DEAD_LETTER, main="written")
    out["trending"] | "WriteTrending" >> beam.ParDo(WriteTrendingFn(config.firestore))
    if "experiment_stats" in out:
        stats = WriteExperimentStatsFn(config.firestore)
        out["experiment_stats"] | "WriteExperimentStats" >> beam.ParDo(stats)
        docs = WriteAttributionDocsFn(config.firestore, config.attribution_ttl_s)
        out["attribution_docs"] | "WriteAttributionDocs" >> beam.ParDo(docs)
    dead = [out["dead_letters"], users[DEAD_LETTER], items[DEAD_LETTER]]
    if config.archive_dir:  # per bundle where the local read acks on it, windowed on Dataflow
        per_bundle = direct_runner.is_direct(p.options)
        archived = ((out["accepted_batches"], out["forgets"]) | "WithTombstones" >> beam.Flatten()
                    | "Archive" >> ArchiveEvents(
            config.archive_dir, config.archive_window_s, per_bundle))
        if per_bundle:
            dead.append(archived[DEAD_LETTER])
    (tuple(dead) | "AllDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteToPubSub(config.dead_letter_topic, with_attributes=True))
    return out


def run(argv: list[str] | None = None, save_main_session: bool = True,
        test_pipeline: beam.Pipeline | None = None) -> Any:
    """Build and run the pipeline; on DirectRunner serve until SIGTERM/SIGINT, then drain."""
    config, options = parse_args(argv)
    options.view_as(SetupOptions).save_main_session = save_main_session
    direct = direct_runner.is_direct(options)
    if direct:
        direct_runner.install(max_messages=config.direct_pull_max_messages,
                              max_unacked=config.direct_max_unacked)
    p = test_pipeline or beam.Pipeline(options=options)
    build(p, config)
    result = p.run()
    if direct and test_pipeline is None:
        direct_runner.serve(result, config.drain_idle_s, settle_s=config.user_write_interval_s)
    return result

