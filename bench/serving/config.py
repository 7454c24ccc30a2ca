"""The serving benchmark's settings and constants.

One dataclass holds every knob so that the report can record the configuration it ran with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench import measure

FUNCTION_DIR = measure.ROOT / "functions" / "recommend"
BASELINES = Path(__file__).resolve().parent / "baselines.py"
REPORT = measure.REPORTS / "serving.json"
REPORT_1M = measure.REPORTS / "serving-1m.json"
VECTORS = "bench_item_vectors"
REFERENCE = {"latency_ms": 20.0, "rps": 500.0}
VERSION = "vbench-000000-000000"
SYNTHETIC_TAGS = 8  # non-category columns of a synthetic content row (the encoder's tag limit)


@dataclass
class BenchConfig:
    items: int = 100_000
    dim: int = 64
    content_dim: int = 128
    categories: int = 50
    users: int = 1_000
    history: int = 20
    vector_items: int = 2_000  # items given to find_nearest (writing 100k docs to the emulator is too slow)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    connections: int = 16
    wrk_threads: int = 2
    compute_queries: int = 300
    pairs: int = 2  # alternating bare_read / recommend runs with the chosen config
    pubsub_port: int = 18595
    firestore_port: int = 18596
    seed: int = 7
    output: str = ""  # report path ("" = report_path's default)
    catalogue: str = "trained"  # trained: two-tower embeddings (bench/serving/catalogue.py); random
    low_connections: tuple[int, ...] = (1, 4)  # extra latency runs at low concurrency
    low_duration_s: float = 5.0
    # IVF grid measured on the catalogue (partitions, probes)
    ivf_nlists: tuple[int, ...] = (256, 316, 632)
    ivf_nprobes: tuple[int, ...] = (4, 8, 12, 16, 24, 32)
    # (WORKERS, THREADS, one BLAS thread?) tried for the recommend function
    serving_configs: list[tuple[int, int, bool]] = field(default_factory=lambda: [
        (1, 8, False), (1, 4, True), (2, 2, True), (2, 4, True)])



def report_path(cfg: BenchConfig) -> Path:
    """``reports/bench/serving.json``; ``serving-1m.json`` for a 1,000,000-item catalogue."""
    if cfg.output:
        return Path(cfg.output)
    return REPORT_1M if cfg.items >= 1_000_000 else REPORT
