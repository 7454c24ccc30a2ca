"""Serving benchmark of the recommend function (``make bench-serving``).

Builds a 100,000-item, dimension-64 index snapshot and 1,000 user documents in its own
Firestore emulator, serves the function locally with functions-framework (gunicorn) under
several worker/thread/BLAS settings, and in the same run serves two baselines with the
same settings: ``bare_read`` (reads the user document only: the I/O floor) and
``find_nearest`` (retrieval through Firestore's vector query). Load comes from ``wrk``
(Debian package ``wrk``) on loopback, cycling user ids, at a fixed concurrency.

The catalogue (``--catalogue trained``, the default) is a two-tower model trained on the
synthetic generator with 100,000 items (``scripts/bench_serving_model.py``, cached), the user
documents carry its query-tower embeddings; ``--catalogue random`` uses Gaussian vectors.
The function serves with its configured retrieval (IVF by default) and, interleaved in the same
run, with ``RETRIEVAL=exact`` (``recommend_exact``); ``index`` reports the served index and its
recall@10 vs exact on the benchmark's users. Low-concurrency runs (1 and 4 connections) give
latency without queueing for the 20 ms reference.

Also measured in-process: per-request retrieval + ranking as served (``compute_ms``) and with
the exact scan (``compute_exact_ms``) against the raw 100k x 64 matrix-vector product
(``matvec_floor_ms``), and an IVF grid (partitions x probes: recall@10 vs exact, CPU).

    python -m scripts.bench_serving [--items 100000] [--duration 10] [--connections 16]

Writes ``reports/bench/serving.json`` and prints a table. Only loopback; the emulator and
every server it starts are stopped at the end.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the in-process compute measurement uses production settings

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from schemas import names  # noqa: E402
from schemas.content import SparseRows  # noqa: E402
from schemas.firestore import CurrentModelDoc, HistoryEntry, TrendingDoc, TrendingEntry, UserDoc  # noqa: E402
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot  # noqa: E402
from scripts import local_stack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_DIR = ROOT / "functions" / "recommend"
BASELINES = ROOT / "scripts" / "bench_serving_baselines.py"
REPORT = ROOT / "reports" / "bench" / "serving.json"
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
    catalogue: str = "trained"  # trained: two-tower embeddings (scripts/bench_serving_model); random
    low_connections: tuple[int, ...] = (1, 4)  # extra latency runs at low concurrency
    low_duration_s: float = 5.0
    # IVF grid measured on the catalogue (partitions, probes)
    ivf_nlists: tuple[int, ...] = (256, 316, 632)
    ivf_nprobes: tuple[int, ...] = (4, 8, 12, 16, 24, 32)
    # (WORKERS, THREADS, one BLAS thread?) tried for the recommend function
    serving_configs: list[tuple[int, int, bool]] = field(default_factory=lambda: [
        (1, 8, False), (1, 4, True), (2, 2, True), (2, 4, True)])


# ---------------------------------------------------------------- data


def make_snapshot(cfg: BenchConfig, rng: np.random.Generator) -> IndexSnapshot:
    """A synthetic catalogue: Zipf-ish categories, 95 % in stock, L2-normalised content rows.

    Content rows look like the encoder's (:class:`schemas.content.ContentEncoder`): the category's
    column plus ``SYNTHETIC_TAGS`` random other columns, so about as sparse as real ones.
    """
    n = cfg.items
    cat_weights = 1.0 / np.arange(1, cfg.categories + 1)
    cats = rng.choice(cfg.categories, size=n, p=cat_weights / cat_weights.sum())
    content = np.zeros((n, cfg.content_dim), dtype=np.float32)
    tags = rng.integers(0, cfg.content_dim, size=(n, SYNTHETIC_TAGS))
    content[np.repeat(np.arange(n), SYNTHETIC_TAGS), tags.reshape(-1)] = 0.5 / np.sqrt(SYNTHETIC_TAGS)
    content[np.arange(n), cats % cfg.content_dim] = 1.0
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    return IndexSnapshot(
        version=VERSION, created_at=int(time.time() * 1000) - 60_000,
        item_ids=np.array([f"i{i:06d}" for i in range(n)]),
        embeddings=(rng.standard_normal((n, cfg.dim), dtype=np.float32) / np.sqrt(cfg.dim)),
        content=SparseRows.from_dense(content), categories=np.array([f"c{c:02d}" for c in cats]),
        in_stock=rng.random(n) < 0.95,
        popularity=rng.pareto(1.5, n).astype(np.float32))


def trained_catalogue(cfg: BenchConfig) -> tuple[IndexSnapshot, list[UserDoc], dict]:
    """The trained 100k-item catalogue (cached) and ``cfg.users`` users with query-tower embeddings."""
    from scripts.bench_serving_model import CatalogueSpec, cached_catalogue

    cat = cached_catalogue(CatalogueSpec(items=cfg.items, dim=cfg.dim))
    snap = IndexSnapshot.load(cat.artifact / INDEX_FILE)
    snap.version, snap.created_at = VERSION, int(time.time() * 1000) - 60_000
    cfg.content_dim = snap.content.dim
    cfg.categories = int(np.unique(snap.categories).shape[0])
    now = int(time.time() * 1000)
    pick = np.random.default_rng(cfg.seed).choice(len(cat.user_ids), size=cfg.users, replace=False)
    users = []
    for u in pick.tolist():
        hist = [h for h in cat.histories[u].tolist() if h]
        entries = tuple(HistoryEntry(event_id=f"e{u}-{j}", item_id=h, event_type="view",
                                     timestamp=now - (len(hist) - j) * 1000) for j, h in enumerate(hist))
        users.append(UserDoc(user_id=str(cat.user_ids[u]), history=entries,
                             last_event_id=entries[-1].event_id if entries else "", last_event_ts=now,
                             updated_at=now, model_version=VERSION,
                             embedding=tuple(float(x) for x in cat.embeddings[u]), event_count=len(hist)))
    return snap, users, {"artifact": str(cat.artifact.relative_to(ROOT)), **cat.meta}


def make_users(cfg: BenchConfig, snap: IndexSnapshot, rng: np.random.Generator) -> list[UserDoc]:
    now = int(time.time() * 1000)
    users = []
    for u in range(cfg.users):
        hist = rng.choice(cfg.items, size=cfg.history, replace=False)
        entries = tuple(HistoryEntry(event_id=f"e{u}-{j}", item_id=str(snap.item_ids[i]),
                                     event_type="view", timestamp=now - (cfg.history - j) * 1000)
                        for j, i in enumerate(hist))
        emb = rng.standard_normal(cfg.dim).astype(np.float32)
        users.append(UserDoc(user_id=f"u{u:05d}", history=entries,
                             last_event_id=entries[-1].event_id, last_event_ts=now, updated_at=now,
                             model_version=VERSION, embedding=tuple(float(x) for x in emb),
                             event_count=cfg.history))
    return users


def _write_batched(client, docs: list[tuple[str, str, dict]], batch_size: int = 500) -> None:
    for start in range(0, len(docs), batch_size):
        batch = client.batch()
        for coll, doc_id, body in docs[start:start + batch_size]:
            batch.set(client.collection(coll).document(doc_id), body)
        batch.commit()


def seed_firestore(client, cfg: BenchConfig, snap: IndexSnapshot, index_uri: str,
                   users: list[UserDoc]) -> dict[str, float]:
    """models/current, users, stats/trending and the find_nearest vector collection."""
    from google.cloud.firestore_v1.vector import Vector

    timings = {}
    t = time.perf_counter()
    docs = [(names.MODELS, names.CURRENT_MODEL_DOC, CurrentModelDoc(
        version=VERSION, artifact_uri=str(Path(index_uri).parent), index_uri=index_uri,
        switched_at=snap.created_at).to_document())]
    top = np.argsort(-snap.popularity)[:100]
    docs.append((names.STATS, names.TRENDING_DOC, TrendingDoc(
        items=tuple(TrendingEntry(item_id=str(snap.item_ids[i]), views=100, add_to_cart=5,
                                  purchases=1, score=float(snap.popularity[i])) for i in top),
        window_start=snap.created_at, window_end=snap.created_at, updated_at=snap.created_at
    ).to_document()))
    docs += [(names.USERS, u.user_id, u.to_document()) for u in users]
    _write_batched(client, docs)
    timings["seed_users_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _write_batched(client, [(VECTORS, str(snap.item_ids[i]),
                             {"item_id": str(snap.item_ids[i]),
                              "embedding": Vector([float(x) for x in snap.embeddings[i]])})
                            for i in range(cfg.vector_items)])
    timings["seed_vectors_s"] = time.perf_counter() - t
    return timings


# ---------------------------------------------------------------- in-process compute


def _median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1000.0)


def _timed(fn, args: list) -> tuple[float, float]:
    """Median wall time and median thread-CPU time of ``fn(a)`` over ``args``."""
    wall, cpu = [], []
    for a in args:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(a)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return float(np.median(wall)), float(np.median(cpu))


def _function_modules():
    if str(FUNCTION_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTION_DIR))
    from recommender.config import Settings
    from recommender.index import ItemIndex
    from recommender.params import RecommendParams
    from recommender.service import Recommender
    return Settings, ItemIndex, RecommendParams, Recommender


def _filter_categories(snap: IndexSnapshot) -> tuple[str, ...]:
    """Two mid-frequency categories (the 4th and 11th most common) for the filtered figure."""
    names, counts = np.unique(snap.categories.astype(str), return_counts=True)
    ranked = names[np.argsort(-counts, kind="stable")].tolist()
    return tuple(ranked[i] for i in (3, 10) if i < len(ranked)) or tuple(ranked[:1])


def served_settings():
    """The function's settings as served (environment, e.g. RETRIEVAL / IVF_* overrides)."""
    Settings = _function_modules()[0]
    return Settings.from_env()


def measure_compute(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc], rounds: int = 5) -> dict:
    """Retrieval + hybrid ranking per request vs the bare matvec, same index, same queries.

    ``compute``: as served (the configured retrieval, IVF by default); ``compute_exact``: the
    exact scan; ``floor``: the raw 100k x D matrix-vector product. Measured in alternating
    rounds so a noisy, shared machine affects all alike; each figure is the median of the
    rounds' medians, in thread CPU time (what the request costs) and in wall time.
    """
    Settings, ItemIndex, RecommendParams, Recommender = _function_modules()
    settings = served_settings()
    t = time.perf_counter()
    exact_index = ItemIndex.from_snapshot(snap)
    build_s = time.perf_counter() - t
    service = Recommender(settings, store=None)  # rank_for never touches the store
    t = time.perf_counter()
    index = service.with_retrieval(exact_index)
    ivf_build_s = time.perf_counter() - t
    params = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha)
    cat_params = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha,
                                 categories=_filter_categories(snap))
    queries = [users[i % len(users)] for i in range(cfg.compute_queries)]
    vectors = [np.asarray(u.embedding, dtype=np.float32) for u in queries]
    body = service.rank_for(index, params, queries[0])
    assert body["strategy"] == "personalized" and len(body["items"]) == 10
    names = ("floor", "compute", "compute_exact", "filtered", "filtered_exact")
    rounds_out: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(rounds):
        rounds_out["floor"].append(_timed(lambda q: exact_index.embeddings @ q, vectors))
        rounds_out["compute"].append(_timed(lambda u: service.rank_for(index, params, u), queries))
        rounds_out["compute_exact"].append(
            _timed(lambda u: service.rank_for(exact_index, params, u), queries))
        rounds_out["filtered"].append(_timed(lambda u: service.rank_for(index, cat_params, u), queries))
        rounds_out["filtered_exact"].append(
            _timed(lambda u: service.rank_for(exact_index, cat_params, u), queries))

    def ms(name: str, which: int) -> float:
        return float(np.median([r[which] for r in rounds_out[name]]) * 1000)

    return {"compute_ms": ms("compute", 1), "matvec_floor_ms": ms("floor", 1),
            "compute_vs_floor": ms("compute", 1) / ms("floor", 1),
            "compute_exact_ms": ms("compute_exact", 1),
            "compute_exact_vs_floor": ms("compute_exact", 1) / ms("floor", 1),
            "compute_with_category_filter_ms": ms("filtered", 1),
            "compute_exact_with_category_filter_ms": ms("filtered_exact", 1),
            "compute_wall_ms": ms("compute", 0), "compute_exact_wall_ms": ms("compute_exact", 0),
            "matvec_floor_wall_ms": ms("floor", 0),
            "compute_with_category_filter_wall_ms": ms("filtered", 0),
            "filter_categories": list(cat_params.categories),
            "timing": "compute_ms/matvec_floor_ms: thread CPU time (immune to the shared machine's "
                      "preemption); *_wall_ms: wall clock; medians of per-round medians; compute = "
                      "retrieval + ranking as served (see index), compute_exact = with the exact scan",
            "rounds_ms": {k: [[round(w * 1000, 3), round(c * 1000, 3)] for w, c in v]
                          for k, v in rounds_out.items()},
            "index_build_s": build_s, "ivf_build_s": ivf_build_s,
            "index": index_summary(service, index, exact_index, users)}


def _overlap(a: list[dict], b: list[dict]) -> float:
    ids = {i["item_id"] for i in b}
    return len([i for i in a if i["item_id"] in ids]) / max(len(b), 1)


def index_summary(service, index, exact_index, users: list[UserDoc]) -> dict:
    """The served index type and its recall@10 vs exact on the benchmark's own users.

    ``recall_at_10``: overlap of the served top 10 (IVF retrieval + hybrid ranking, the default
    request) with the same request answered by the exact scan. ``cf_recall_at_10``: overlap of the
    top 10 by dot product alone (unfiltered), IVF vs exact.
    """
    RecommendParams = _function_modules()[2]
    from scoring.ranking import retrieve

    out: dict = {"type": "ivf" if index.ivf is not None else "exact", "items": index.size}
    if index.ivf is None:
        return {**out, "recall_at_10": 1.0, "cf_recall_at_10": 1.0}
    params = RecommendParams(user_id="u", k=10, alpha=service.settings.default_alpha)
    served, cf, scanned = [], [], []
    for u in users:
        served.append(_overlap(service.rank_for(index, params, u)["items"],
                               service.rank_for(exact_index, params, u)["items"]))
        q = np.asarray(u.embedding, dtype=np.float32)
        approx, _ = retrieve(q, index.embeddings, 10, None, index.ivf)
        exact, _ = retrieve(q, index.embeddings, 10, None, None)
        cf.append(len(set(approx.tolist()) & set(exact.tolist())) / 10)
        scanned.append(index.ivf.candidates(q)[0].shape[0])
    return {**out, "nlist": index.ivf.nlist, "nprobe": index.ivf.nprobe,
            "recall_at_10": float(np.mean(served)), "cf_recall_at_10": float(np.mean(cf)),
            "users": len(users), "scanned_rows_mean": float(np.mean(scanned)),
            "scanned_fraction": float(np.mean(scanned)) / index.size}


def measure_ivf(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc], sample_users: int = 300
                ) -> dict:
    """The IVF grid (partitions x probes) on this catalogue: recall@10 vs exact and CPU per query.

    Recall of the top 10 by dot product (``cf_recall_at_10``) and of the served list after hybrid
    ranking (``recall_at_10``, the default request), both against the exact scan, over the
    benchmark's users; ``retrieval_ms``: thread CPU of the IVF candidate scoring + top-pool.
    """
    Settings, ItemIndex, RecommendParams, Recommender = _function_modules()
    from scoring.ranking import retrieve

    exact_index = ItemIndex.from_snapshot(snap)
    settings = served_settings()
    params = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha)
    sample = users[:sample_users]
    qs = [np.asarray(u.embedding, dtype=np.float32) for u in sample]
    exact_cf = [set(retrieve(q, exact_index.embeddings, 10, None)[0].tolist()) for q in qs]
    exact_service = Recommender(dataclasses.replace(settings, retrieval="exact"), store=None)
    exact_served = [exact_service.rank_for(exact_index, params, u)["items"] for u in sample]
    pool = max(settings.min_pool, settings.pool_factor * 10)
    out: dict = {"users": len(sample), "grid": []}
    for nlist in cfg.ivf_nlists:
        t = time.perf_counter()
        index = exact_index.with_ivf(nlist, 1)
        build_s = time.perf_counter() - t
        for nprobe in cfg.ivf_nprobes:
            ivf = dataclasses.replace(index.ivf, nprobe=nprobe)
            idx = dataclasses.replace(index, ivf=ivf)
            cf, served, cpu = [], [], []
            for q, e_cf, u, e_served in zip(qs, exact_cf, sample, exact_served):
                c0 = time.thread_time()
                retrieve(q, idx.embeddings, pool, None, ivf)
                cpu.append(time.thread_time() - c0)
                cf.append(len(set(retrieve(q, idx.embeddings, 10, None, ivf)[0].tolist()) & e_cf) / 10)
                served.append(_overlap(exact_service.rank_for(idx, params, u)["items"], e_served))
            out["grid"].append({"nlist": nlist, "nprobe": nprobe, "build_s": round(build_s, 3),
                                "cf_recall_at_10": float(np.mean(cf)),
                                "recall_at_10": float(np.mean(served)),
                                "retrieval_ms": _median_ms(cpu)})
    c0 = time.thread_time()
    for q in qs:
        retrieve(q, exact_index.embeddings, pool, None)
    out["exact_retrieval_ms"] = (time.thread_time() - c0) / len(qs) * 1000
    return out


# ---------------------------------------------------------------- serving and load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    cold_start_s: float
    cold_start_cpu_s: float  # CPU time of the process tree until the first 200

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def serve(name: str, target: str, source: Path, env: dict[str, str], health_path: str,
          log_dir: Path, timeout_s: float = 120.0, cwd: Path = ROOT) -> Server:
    """Start functions-framework on a loopback port; time process start to the first 200.

    ``cwd`` is first on the server's ``sys.path`` (``python -m``): the tree whose ``schemas/`` it imports.
    """
    port = free_port()
    log = open(log_dir / f"{name}.log", "wb")
    cmd = [sys.executable, "-m", "functions_framework", "--target", target, "--source", str(source),
           "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(cwd))
    url = f"http://127.0.0.1:{port}{health_path}"
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_dir / f'{name}.log'}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return Server(name, proc, port, time.perf_counter() - t0, cpu_seconds(proc.pid))
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    Server(name, proc, port, 0.0, 0.0).stop()
    raise RuntimeError(f"{name} did not answer 200 on {health_path} within {timeout_s} s")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree (live processes only)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS summed over the server's process tree (master + workers).

    RSS counts pages shared by the forked workers (the index, loaded before the fork) once per
    process; PSS splits them, so the PSS sum is the tree's real footprint.
    """
    pids = _tree(pid)
    rss = pss = 0
    for p in pids:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))
        pss += int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
    return {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "processes": len(pids)}


LUA = """
local ids = {%s}
local n = #ids
local counter = 0
local nthreads = 0
setup = function(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end
init = function(args)
  counter = (tid or 1) * 7919
end
request = function()
  counter = counter + 1
  return wrk.format("GET", string.format("%s", ids[(counter %% n) + 1]))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%.1f, ' ..
    '"p99_us": %%.1f, "mean_us": %%.1f, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, ' ..
    '"timeout": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(port: int, path_template: str, user_ids: list[str], cfg: BenchConfig, duration_s: float,
            work_dir: Path, connections: int | None = None) -> dict:
    """Fixed-concurrency load; returns rps, p50/p99 latency and error counts."""
    script = work_dir / "cycle_users.lua"
    script.write_text(LUA % (", ".join(f'"{u}"' for u in user_ids), path_template))
    conns = connections or cfg.connections
    cmd = ["wrk", f"-t{min(cfg.wrk_threads, conns)}", f"-c{conns}", f"-d{max(1, round(duration_s))}s",
           "--timeout", "30s", "-s", str(script), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.stdout}\n{out.stderr}")
    raw = json.loads(line[len("WRKJSON "):])
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"rps": raw["requests"] / (raw["duration_us"] / 1e6), "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "mean_ms": raw["mean_us"] / 1000,
            "requests": raw["requests"], "errors": errors, "non_2xx": raw["status"]}


def server_env(stack: local_stack.StackConfig, workers: int, threads: int, one_blas: bool,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(stack.client_env())
    env.update({"WORKERS": str(workers), "THREADS": str(threads), "PYTHONPATH": str(ROOT),
                "REFRESH_SECONDS": "5", "GUNICORN_LOG_LEVEL": "error"})
    if one_blas:
        env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


def _retrieval_seen(port: int, health_path: str, polls: int = 8) -> list[str]:
    """The ``retrieval`` the workers report on /healthz after the warm-up (IVF builds in the background)."""
    seen = set()
    for _ in range(polls):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{health_path}", timeout=5) as resp:
                seen.add(str(json.loads(resp.read()).get("retrieval")))
        except (urllib.error.URLError, OSError, ValueError):
            seen.add("error")
    return sorted(seen)


def load_test(name: str, target: str, source: Path, path_template: str, health_path: str,
              env: dict[str, str], user_ids: list[str], cfg: BenchConfig, work_dir: Path,
              emulator_pid: int, low_concurrency: bool = False) -> dict:
    """Serve, warm up, load; add CPU per request (server tree, emulator), memory, cold start.

    ``low_concurrency``: afterwards, shorter runs at ``cfg.low_connections`` connections (latency
    without queueing: at c connections Little's law makes p50 >= c / rps).
    """
    server = serve(name, target, source, env, health_path, work_dir)
    try:
        run_wrk(server.port, path_template, user_ids, cfg, cfg.warmup_s, work_dir)
        retrieval = _retrieval_seen(server.port, health_path) if health_path == "/healthz" else None
        workers = _children(server.proc.pid)
        cpu0, emu0 = cpu_seconds(server.proc.pid), cpu_seconds(emulator_pid)
        per0 = [cpu_seconds(w) for w in workers]
        result = run_wrk(server.port, path_template, user_ids, cfg, cfg.duration_s, work_dir)
        cpu1, emu1 = cpu_seconds(server.proc.pid), cpu_seconds(emulator_pid)
        per1 = [cpu_seconds(w) for w in workers]
        n = max(result["requests"], 1)
        result["server_cpu_ms_per_request"] = (cpu1 - cpu0) * 1000 / n
        # each worker's share of the workers' CPU: ~1/WORKERS each when connections are spread
        busy = [b - a for a, b in zip(per0, per1)]
        total = sum(busy)
        result["worker_cpu_share"] = [round(x / total, 3) if total > 0 else 0.0 for x in busy]
        result["emulator_cpu_ms_per_request"] = (emu1 - emu0) * 1000 / n
        result.update(memory_mb(server.proc.pid))
        result["cold_start_s"] = server.cold_start_s
        result["cold_start_cpu_s"] = server.cold_start_cpu_s
        if retrieval is not None:
            result["retrieval_after_warmup"] = retrieval
        if low_concurrency:
            result["latency_at_connections"] = {
                str(c): {k: round(v, 3) for k, v in run_wrk(
                    server.port, path_template, user_ids, cfg, cfg.low_duration_s, work_dir, c).items()
                         if k in ("rps", "p50_ms", "p99_ms", "errors")}
                for c in cfg.low_connections}
        return result
    finally:
        server.stop()


# ---------------------------------------------------------------- report


def combine(runs: list[dict]) -> dict:
    """Several runs of one handler: mean rps and latencies, summed counts, worst memory."""
    out = {k: float(np.mean([r[k] for r in runs])) for k in
           ("rps", "p50_ms", "p99_ms", "mean_ms", "server_cpu_ms_per_request",
            "emulator_cpu_ms_per_request", "cold_start_s", "cold_start_cpu_s")}
    out.update({k: int(sum(r[k] for r in runs)) for k in ("requests", "errors", "non_2xx")})
    out.update({k: max(r[k] for r in runs) for k in ("rss_mb", "pss_mb", "processes")})
    out["runs"] = [{**{k: round(r[k], 3) for k in ("rps", "p50_ms", "p99_ms")},
                    "worker_cpu_share": r.get("worker_cpu_share")} for r in runs]
    low = [r["latency_at_connections"] for r in runs if "latency_at_connections" in r]
    if low:
        out["latency_at_connections"] = {
            c: {k: float(np.mean([x[c][k] for x in low])) for k in ("rps", "p50_ms", "p99_ms")}
            for c in low[0]}
    return out


def targets(report: dict) -> dict:
    rec, bare, fn = report["recommend"], report["bare_read"], report["find_nearest"]
    exact = report.get("recommend_exact")
    return {
        "rps_vs_bare_read": {"value": rec["rps"] / bare["rps"], "target": ">= 0.8",
                             "met": rec["rps"] >= 0.8 * bare["rps"],
                             "retrieval": report["index"]["type"],
                             "per_pair": [round(r["rps"] / b["rps"], 3)
                                          for r, b in zip(rec["runs"], bare["runs"])]},
        **({"exact_rps_vs_bare_read": {"value": exact["rps"] / bare["rps"], "target": ">= 0.8",
                                       "met": exact["rps"] >= 0.8 * bare["rps"],
                                       "retrieval": "exact"}} if exact else {}),
        "index_recall_at_10": {"value": report["index"]["recall_at_10"], "target": ">= 0.95",
                               "met": report["index"]["recall_at_10"] >= 0.95},
        "p99_vs_bare_read": {"value": rec["p99_ms"] / bare["p99_ms"], "target": "<= 2.0",
                             "met": rec["p99_ms"] <= 2.0 * bare["p99_ms"]},
        "rps_vs_find_nearest": {"value": rec["rps"] / max(fn["rps"], 1e-9), "target": "far ahead (> 1)",
                                "met": rec["rps"] > fn["rps"]},
        "compute_vs_matvec_floor": {"value": report["compute_ms"] / report["matvec_floor_ms"],
                                    "target": "<= 1.5",
                                    "met": report["compute_ms"] <= 1.5 * report["matvec_floor_ms"]},
        "cold_start_s": {"value": report["cold_start_s"], "target": "< 2", "met": report["cold_start_s"] < 2},
        "cold_start_cpu_s": {"value": report["cold_start_cpu_s"], "target": "< 2",
                             "met": report["cold_start_cpu_s"] < 2},
        "memory_pss_mb": {"value": report["pss_mb"], "target": "< 512", "met": report["pss_mb"] < 512},
        "reference_20ms_p50": {"value": rec["p50_ms"], "target": "<= 20 ms",
                               "met": rec["p50_ms"] <= REFERENCE["latency_ms"],
                               "note": f"at {report['config']['connections']} connections"},
        **{f"reference_20ms_p50_at_{c}_connections": {
            "value": v["p50_ms"], "target": "<= 20 ms", "met": v["p50_ms"] <= REFERENCE["latency_ms"]}
           for c, v in rec.get("latency_at_connections", {}).items()},
        "reference_500rps": {"value": rec["rps"], "target": ">= 500", "met": rec["rps"] >= REFERENCE["rps"]},
    }


def _row(r: dict) -> str:
    return (f"{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors']:>8d}"
            f"{r['cold_start_s']:>8.2f}{r['pss_mb']:>8.0f}{r['server_cpu_ms_per_request']:>11.2f}"
            f"{r['emulator_cpu_ms_per_request']:>9.2f}")


def print_table(report: dict) -> None:
    print(f"\nServing benchmark: {report['config']['items']:,} items x {report['config']['dim']}, "
          f"{report['config']['connections']} connections, {report['config']['duration_s']:.0f} s per run, "
          f"{os.cpu_count()} CPU cores (shared)")
    print("-- recommend, serving settings tried:")
    print(f"{'handler':<34}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cold s':>8}{'PSS MB':>8}"
          f"{'cpu ms/req':>11}{'emu cpu':>9}")
    for c in report["serving_configs"]:
        label = f"recommend W{c['workers']} T{c['threads']} {'BLAS=1' if c['one_blas'] else 'BLAS=auto'}"
        print(f"{label:<34}{_row(c)}")
    print(f"-- same settings ({report['chosen']}); recommend and bare_read alternate, means:")
    labels = {"recommend": f"recommend ({report['index']['type']})",
              "recommend_exact": "recommend (exact scan)", "bare_read": "bare_read (user doc only)",
              "find_nearest": f"find_nearest ({report['config']['vector_items']:,} docs)"}
    for name, label in labels.items():
        print(f"{label:<34}{_row(report[name])}")
    for name in ("bare_read", "recommend", "recommend_exact"):
        runs = ", ".join(f"{r['rps']:.0f} rps p99 {r['p99_ms']:.0f} ms (worker CPU shares "
                         f"{'/'.join(f'{x:.2f}' for x in r.get('worker_cpu_share') or [])})"
                         for r in report[name]["runs"])
        print(f"  {name} runs (interleaved): {runs}")
    print("-- latency at low concurrency (p50 / p99 ms, rps):")
    for name in ("bare_read", "recommend", "recommend_exact"):
        low = report[name].get("latency_at_connections", {})
        print(f"  {name:<18}" + "   ".join(f"{c} conn: {v['p50_ms']:.1f} / {v['p99_ms']:.1f} ms, "
                                            f"{v['rps']:.0f} rps" for c, v in low.items()))
    print(f"\nchosen serving config: {report['chosen']}")
    idx = report["index"]
    print(f"catalogue: {report['catalogue'].get('artifact', report['catalogue'].get('kind'))}; served "
          f"index {idx['type']}" + (f" (nlist {idx['nlist']}, nprobe {idx['nprobe']}, scans "
                                    f"{idx['scanned_fraction']:.1%} of the rows): recall@10 vs exact "
                                    f"{idx['recall_at_10']:.3f} served list, {idx['cf_recall_at_10']:.3f} "
                                    f"CF top 10, over {idx['users']} users" if idx["type"] == "ivf" else ""))
    print(f"compute (retrieval + ranking, as served) {report['compute_ms']:.2f} ms CPU (wall "
          f"{report['compute_wall_ms']:.2f}; with a 2-category filter "
          f"{report['compute_with_category_filter_ms']:.2f}); with the exact scan "
          f"{report['compute_exact_ms']:.2f} ms; matvec floor "
          f"{report['matvec_floor_ms']:.2f} ms CPU (wall {report['matvec_floor_wall_ms']:.2f})")
    grid = report["approximate_index"]
    print(f"IVF grid on this catalogue (recall@10 served / CF, retrieval CPU ms; exact retrieval "
          f"{grid['exact_retrieval_ms']:.2f} ms):")
    for g in grid["grid"]:
        print(f"  nlist {g['nlist']:>5} nprobe {g['nprobe']:>3}: {g['recall_at_10']:.3f} / "
              f"{g['cf_recall_at_10']:.3f}, {g['retrieval_ms']:.3f} ms (build {g['build_s']:.2f} s)")
    print(f"cold start {report['cold_start_s']:.2f} s wall, {report['cold_start_cpu_s']:.2f} s CPU; "
          f"memory RSS {report['rss_mb']:.0f} MB "
          f"(PSS {report['pss_mb']:.0f} MB) over {report['recommend']['processes']} processes")
    print("\ntargets:")
    for k, v in report["targets"].items():
        print(f"  {k:<38} {v['value']:>9.2f}  target {v['target']:<14} {'met' if v['met'] else 'NOT met'}")
    print(f"load average {report['machine']['loadavg']}")
    print(f"\nwritten {REPORT.relative_to(ROOT)}")


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = BenchConfig()
    p.add_argument("--items", type=int, default=d.items)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--vector-items", type=int, default=d.vector_items)
    p.add_argument("--duration", type=float, default=d.duration_s)
    p.add_argument("--connections", type=int, default=d.connections)
    p.add_argument("--catalogue", choices=("trained", "random"), default=d.catalogue,
                   help="trained: two-tower embeddings of a model trained on the synthetic generator "
                        "(cached); random: Gaussian embeddings")
    p.add_argument("--pubsub-port", type=int,
                   default=int(os.environ.get("BENCH_PUBSUB_PORT", d.pubsub_port)))
    p.add_argument("--firestore-port", type=int,
                   default=int(os.environ.get("BENCH_FIRESTORE_PORT", d.firestore_port)))
    p.add_argument("--pairs", type=int, default=d.pairs,
                   help="interleaved bare_read / recommend / recommend (exact) rounds")
    p.add_argument("--configs", default=None,
                   help="serving configs to try, e.g. '1x8,2x2:blas' "
                        "(WORKERSxTHREADS, ':blas' = one BLAS thread)")
    a = p.parse_args(argv)
    cfg = BenchConfig(items=a.items, users=a.users, vector_items=min(a.vector_items, a.items),
                      duration_s=a.duration, connections=a.connections,
                      pubsub_port=a.pubsub_port, firestore_port=a.firestore_port,
                      catalogue=a.catalogue, pairs=a.pairs)
    if a.configs:
        cfg.serving_configs = [(int(w), int(t.split(":")[0]), t.endswith(":blas"))
                               for w, t in (c.split("x") for c in a.configs.split(","))]
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk not found: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    rng = np.random.default_rng(cfg.seed)
    work = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    stack_cfg = local_stack.StackConfig(pubsub_port=cfg.pubsub_port, firestore_port=cfg.firestore_port)
    print(f"starting the emulators on {stack_cfg.firestore_host} ...", flush=True)
    state = local_stack.start(stack_cfg, state_dir=work / "stack")
    try:
        os.environ.update(stack_cfg.client_env())
        from google.cloud import firestore

        t = time.perf_counter()
        if cfg.catalogue == "trained":
            print("trained catalogue (cached under artifacts/bench-serving-models; the first run trains "
                  "it) ...", flush=True)
            snap, users, catalogue = trained_catalogue(cfg)
        else:
            snap = make_snapshot(cfg, rng)
            users = make_users(cfg, snap, rng)
            catalogue = {"kind": "random Gaussian embeddings (no cluster structure)"}
        index_uri = str(work / VERSION / INDEX_FILE)
        Path(index_uri).parent.mkdir(parents=True)
        snap.save(index_uri)
        print(f"snapshot {cfg.items:,} items ({Path(index_uri).stat().st_size / 1e6:.0f} MB) and "
              f"{cfg.users:,} users in {time.perf_counter() - t:.1f} s; seeding Firestore ...", flush=True)
        client = firestore.Client(project=stack_cfg.project)
        seed = seed_firestore(client, cfg, snap, index_uri, users)
        print(f"seeded in {seed['seed_users_s'] + seed['seed_vectors_s']:.1f} s; measuring compute ...",
              flush=True)
        compute = measure_compute(cfg, snap, users)
        print(f"index {compute['index']}; IVF grid ...", flush=True)
        ivf = measure_ivf(cfg, snap, users)
        user_ids = [u.user_id for u in users]
        rec_path = "/recommendations?user_id=%s&k=10"
        emulator = state.pids["firestore"]

        def run(name: str, w: int, th: int, blas: bool, low: bool = False) -> dict:
            if name in ("recommend", "recommend_exact"):
                extra = {"RETRIEVAL": "exact"} if name == "recommend_exact" else {}
                return load_test(name, "recommend", FUNCTION_DIR / "main.py", rec_path, "/healthz",
                                 server_env(stack_cfg, w, th, blas, extra), user_ids, cfg, work, emulator,
                                 low_concurrency=low)
            return load_test("bare_read", "bare_read", BASELINES, "/?user_id=%s", f"/?user_id={user_ids[0]}",
                             server_env(stack_cfg, w, th, blas), user_ids, cfg, work, emulator,
                             low_concurrency=low)

        print("warming up the emulator (JIT) with bare reads ...", flush=True)
        run("bare_read", 2, 4, True)
        configs = []
        for workers, threads, one_blas in cfg.serving_configs:
            print(f"recommend WORKERS={workers} THREADS={threads} one BLAS thread={one_blas} ...", flush=True)
            configs.append({"workers": workers, "threads": threads, "one_blas": one_blas,
                            **run("recommend", workers, threads, one_blas)})
        # the best throughput among configs whose p99 is within 1.25x of the lowest p99
        best_p99 = min(c["p99_ms"] for c in configs)
        chosen = max((c for c in configs if c["p99_ms"] <= 1.25 * best_p99), key=lambda c: c["rps"])
        w, th, blas = chosen["workers"], chosen["threads"], chosen["one_blas"]
        kind = compute["index"]["type"]
        print(f"head to head with WORKERS={w} THREADS={th}: bare_read, recommend ({kind}) "
              f"and recommend (exact) interleaved {cfg.pairs}x ...", flush=True)
        bare_runs, rec_runs, exact_runs = [], [], []
        for _ in range(cfg.pairs):
            bare_runs.append(run("bare_read", w, th, blas, low=True))
            rec_runs.append(run("recommend", w, th, blas, low=True))
            exact_runs.append(run("recommend_exact", w, th, blas, low=True))
        bare, recommend, recommend_exact = combine(bare_runs), combine(rec_runs), combine(exact_runs)
        fn = load_test("find_nearest", "find_nearest", BASELINES, "/?user_id=%s&k=10",
                       f"/?user_id={user_ids[0]}&k=1", server_env(stack_cfg, w, th, blas,
                                                                 {"FIND_NEAREST_COLLECTION": VECTORS}),
                       user_ids, cfg, work, state.pids["firestore"])
        fn["collection_items"] = cfg.vector_items
        fn["note"] = (f"find_nearest searched {cfg.vector_items:,} item vectors, not {cfg.items:,} "
                      "(seeding 100k docs into the emulator is too slow); this only favours it")
        report = {
            "config": {k: v for k, v in asdict(cfg).items() if k != "serving_configs"},
            "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()},
            "reference": REFERENCE,
            "catalogue": catalogue,
            "index": compute.pop("index"),
            "recommend": recommend, "recommend_exact": recommend_exact,
            "bare_read": bare, "find_nearest": fn,
            **compute, "approximate_index": ivf,
            "cold_start_s": float(np.median([c["cold_start_s"] for c in configs + rec_runs])),
            "cold_start_runs_s": [round(c["cold_start_s"], 3) for c in configs + rec_runs],
            "cold_start_cpu_s": float(np.median([c["cold_start_cpu_s"] for c in configs + rec_runs])),
            "rss_mb": recommend["rss_mb"], "pss_mb": recommend["pss_mb"],
            "serving_configs": configs,
            "chosen": {"WORKERS": w, "THREADS": th, "OPENBLAS_NUM_THREADS": 1 if blas else "auto"},
            "seeding": seed,
            "snapshot": {"bytes": Path(index_uri).stat().st_size,
                         "content": {"format": "csr", "dim": snap.content.dim, "nnz": snap.content.nnz,
                                     "bytes": snap.content.nbytes,
                                     "dense_bytes": len(snap.content) * snap.content.dim * 4}},
        }
        report["targets"] = targets(report)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(report, indent=2))
        print_table(report)
    finally:
        local_stack.stop_state(state)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
