"""Trending items: view / add-to-cart / purchase counts in sliding event-time windows.

Input is batches of events (a tuple per bundle, as the state step emits them) or single events.
Each batch is first counted per slice in one step, so the windowing below handles one partial
count per slice and bundle instead of every event. Two stages keep the cost at one window per
partial instead of ``size / period`` windows:

1. partial counts -> fixed windows of one ``period`` ("slices"), summed per item; early firings emit
   deltas (discarding mode) every ``early_firing_s`` of processing time, late events within
   ``allowed_lateness_s`` emit a late delta;
2. slice counts -> sliding windows (``size``, ``period``) summed in accumulating mode, so each
   pane is the running total of its window, again with early firings.

The slice combine is global (one key), which on Dataflow is a hot key: every bundle's partial
of a slice meets on one worker. ``fanout`` spreads them first over that many intermediate keys
(each bundle picks one at random), combined per key, so the single-key merge handles at most
``fanout`` partials per firing instead of one per bundle. (Beam's ``with_fanout`` does the same
but re-windows between its two stages, which dropped late panes here; the second, sliding
combine only ever sees one element per slice pane.)

A window's pane becomes the ``stats/trending`` list only if the window's newest event lies in
its last slice: that is the window covering the last ``size`` up to now. The Firestore writer
keeps the newest window, so older windows' final firings do not overwrite it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.transforms import trigger, window

from schemas.clock import now_ms
from schemas.events import ProductEvent
from schemas.firestore import TrendingDoc, TrendingEntry

EVENT_TYPES = ("view", "add_to_cart", "purchase")
DEFAULT_WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


@dataclass
class ItemCounts:
    """Per-item [views, add_to_cart, purchases] and the newest event time (ms) counted."""

    counts: dict[str, list[int]] = field(default_factory=dict)
    max_ts: int = 0

    def add_event(self, event: ProductEvent) -> ItemCounts:
        row = self.counts.setdefault(event.item_id, [0, 0, 0])
        row[EVENT_TYPES.index(event.event_type)] += 1
        self.max_ts = max(self.max_ts, event.timestamp)
        return self

    def merge(self, other: ItemCounts) -> ItemCounts:
        for item_id, row in other.counts.items():
            mine = self.counts.setdefault(item_id, [0, 0, 0])
            for i in range(3):
                mine[i] += row[i]
        self.max_ts = max(self.max_ts, other.max_ts)
        return self


class CountPerSlice(beam.DoFn):
    """A batch of events (or one event) -> one :class:`ItemCounts` per slice it touches,
    timestamped with the slice's newest event: in the slice's own fixed window, so windowing,
    lateness and ``max_ts`` are what they would be for the events one by one."""

    def __init__(self, period_s: int) -> None:
        self.period_ms = period_s * 1000

    def process(self, batch: Any) -> Iterator[window.TimestampedValue]:
        events = batch if isinstance(batch, (tuple, list)) else (batch,)
        slices: dict[int, ItemCounts] = {}
        for event in events:
            counts = slices.get(event.timestamp // self.period_ms)
            if counts is None:
                counts = slices[event.timestamp // self.period_ms] = ItemCounts()
            counts.add_event(event)
        for counts in slices.values():
            yield window.TimestampedValue(counts, counts.max_ts / 1000.0)


class ShardPartials(beam.DoFn):
    """Partial counts -> (shard, partial), one random shard of ``fanout`` per bundle."""

    def __init__(self, fanout: int) -> None:
        self.fanout = fanout

    def start_bundle(self) -> None:
        self._shard = random.randrange(self.fanout)

    def process(self, partial: ItemCounts) -> Iterator[tuple[int, ItemCounts]]:
        yield self._shard, partial


class CountItemEvents(beam.CombineFn):
    """Events -> :class:`ItemCounts`."""

    def create_accumulator(self) -> ItemCounts:
        return ItemCounts()

    def add_input(self, acc: ItemCounts, event: ProductEvent) -> ItemCounts:
        return acc.add_event(event)

    def merge_accumulators(self, accs: Iterable[ItemCounts]) -> ItemCounts:
        out = ItemCounts()
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: ItemCounts) -> ItemCounts:
        return ItemCounts().merge(acc)  # a copy: the accumulator may keep changing


class MergeItemCounts(CountItemEvents):
    """Partial :class:`ItemCounts` -> their sum."""

    def add_input(self, acc: ItemCounts, partial: ItemCounts) -> ItemCounts:  # type: ignore[override]
        return acc.merge(partial)


def rank_items(counts: ItemCounts, top_k: int,
               weights: dict[str, float] | None = None) -> tuple[TrendingEntry, ...]:
    """The ``top_k`` items by weighted score (ties by item id)."""
    w = weights or DEFAULT_WEIGHTS
    entries = [TrendingEntry(item_id=item_id, views=v, add_to_cart=a, purchases=p,
                             score=v * w["view"] + a * w["add_to_cart"] + p * w["purchase"])
               for item_id, (v, a, p) in counts.counts.items()]
    entries.sort(key=lambda e: (-e.score, e.item_id))
    return tuple(entries[:top_k])


class ToTrendingDocFn(beam.DoFn):
    """A sliding window's pane -> ``TrendingDoc`` if the window is the current one."""

    def __init__(self, period_s: int, top_k: int) -> None:
        self.period_ms = period_s * 1000
        self.top_k = top_k

    def process(self, counts: ItemCounts,
                win: window.IntervalWindow = beam.DoFn.WindowParam) -> Iterator[TrendingDoc]:
        start_ms, end_ms = int(win.start.micros // 1000), int(win.end.micros // 1000)
        if counts.max_ts >= end_ms - self.period_ms:  # else a newer window covers the latest events
            yield TrendingDoc(items=rank_items(counts, self.top_k), window_start=start_ms,
                              window_end=end_ms, updated_at=now_ms())


# Defaults, also the streaming pipeline's (pipelines/streaming/pipeline.py StreamingConfig and flags).
WINDOW_S, PERIOD_S, TOP_K, ALLOWED_LATENESS_S = 3600, 60, 50, 600
# Each early firing re-emits every open sliding window (WINDOW_S / PERIOD_S of them), which delays
# the user-document writes behind it: a long interval keeps freshness flat (docs/benchmarks.md).
EARLY_FIRING_S = 30
# Intermediate keys of the hot-key fan-out: about the number of workers that feed one window.
FANOUT = 16


def _early_trigger(early_firing_s: int) -> trigger.TriggerFn:
    return trigger.AfterWatermark(early=trigger.AfterProcessingTime(early_firing_s),
                                  late=trigger.AfterCount(1))


class ComputeTrending(beam.PTransform):
    """Batches of events (or single events) -> ``TrendingDoc`` for the current sliding window,
    every few seconds."""

    def __init__(self, size_s: int = WINDOW_S, period_s: int = PERIOD_S, top_k: int = TOP_K,
                 early_firing_s: int = EARLY_FIRING_S, allowed_lateness_s: int = ALLOWED_LATENESS_S,
                 fanout: int = FANOUT) -> None:
        super().__init__()
        if size_s % period_s:
            raise ValueError(f"trending window size {size_s}s must be a multiple of the period {period_s}s")
        self.size_s, self.period_s, self.top_k = size_s, period_s, top_k
        self.early_firing_s, self.allowed_lateness_s = early_firing_s, allowed_lateness_s
        self.fanout = max(1, fanout)

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        early = _early_trigger(self.early_firing_s)
        return (events
                | "CountPerBundleSlice" >> beam.ParDo(CountPerSlice(self.period_s))
                | "ShardPartials" >> beam.ParDo(ShardPartials(self.fanout))
                | "SliceWindows" >> beam.WindowInto(
                    window.FixedWindows(self.period_s), trigger=early,
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                    allowed_lateness=self.allowed_lateness_s)
                | "CountPerShard" >> beam.CombinePerKey(MergeItemCounts())
                | "DropShard" >> beam.Values()
                | "CountPerSlice" >> beam.CombineGlobally(MergeItemCounts()).without_defaults()
                | "SlidingWindows" >> beam.WindowInto(
                    window.SlidingWindows(self.size_s, self.period_s), trigger=early,
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=self.allowed_lateness_s)
                | "SumWindow" >> beam.CombineGlobally(MergeItemCounts()).without_defaults()
                | "RankTopK" >> beam.ParDo(ToTrendingDocFn(self.period_s, self.top_k)))
