"""The pass-through baseline of bench-stream: read, parse, ack on the same runner and read settings.

Run by :mod:`bench.stream` as a subprocess through this module's import name (so the ``DoFn`` is
pickled by reference, not as ``__main__``); it prints ``PROGRESS <total> <epoch s> <process CPU s>``
after every bundle.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import apache_beam as beam


def passthrough_main(argv: list[str]) -> None:
    """Read, parse, ack: the baseline pipeline on the same runner; prints progress lines."""
    from apache_beam.io.gcp.pubsub import ReadFromPubSub
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from pipelines import direct_runner
    from pipelines.streaming import pipeline as streaming
    from pipelines.streaming.parse import ParseEvents

    parser = argparse.ArgumentParser()
    parser.add_argument("--subscription", required=True)
    parser.add_argument("--direct-pull-max-messages", type=int,
                        default=streaming.StreamingConfig.direct_pull_max_messages,
                        help="as the full pipeline's flag: the same reader settings for both")
    args = parser.parse_args(argv)
    direct_runner.install(max_messages=args.direct_pull_max_messages)
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    parsed = (p | "Read" >> ReadFromPubSub(subscription=args.subscription, with_attributes=True)
              | "Parse" >> ParseEvents())
    parsed.valid | "Count" >> beam.ParDo(ProgressFn())
    result = p.run()
    config, _ = streaming.parse_args([])
    direct_runner.serve(result, config.drain_idle_s, settle_s=0.0)


class ProgressFn(beam.DoFn):
    """Counts elements and prints ``PROGRESS <total> <epoch s> <process CPU s>`` after every bundle."""

    total = 0
    lock = threading.Lock()

    def start_bundle(self) -> None:
        self.n = 0

    def process(self, event: Any) -> None:
        self.n += 1

    def finish_bundle(self) -> None:
        if self.n:
            with ProgressFn.lock:
                ProgressFn.total += self.n
                print(f"PROGRESS {ProgressFn.total} {time.time():.3f} {time.process_time():.3f}", flush=True)


def passthrough_progress(log_path: Path, with_cpu: bool = False) -> list[tuple]:
    """The (count, time[, process CPU s]) progress lines the pass-through worker printed."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("PROGRESS "):
            _, n, t, cpu = line.split()
            out.append((int(n), float(t), float(cpu)) if with_cpu else (int(n), float(t)))
    return out


