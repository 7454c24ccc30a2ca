"""Serving benchmark of the recommend function (``make bench-serving``).

Builds a 100,000-item, dimension-64 index snapshot and 1,000 user documents in its own
Firestore emulator, serves the function locally with functions-framework (gunicorn) under
several worker/thread/BLAS settings, and in the same run serves two baselines with the
same settings: ``bare_read`` (reads the user document only: the I/O floor) and
``find_nearest`` (retrieval through Firestore's vector query). Load comes from ``wrk``
(Debian package ``wrk``) on loopback, cycling user ids, at a fixed concurrency.

Also measured in-process: per-request retrieval + ranking (``compute_ms``) against the raw
100k x 64 matrix-vector product (``matvec_floor_ms``), and an IVF approximate index
(scipy k-means) to see whether approximate search pays off at this size.

    python -m scripts.bench_serving [--items 100000] [--duration 10] [--connections 16]

Writes ``reports/bench/serving.json`` and prints a table. Only loopback; the emulator and
every server it starts are stopped at the end.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the in-process compute measurement uses production settings

import argparse  # noqa: E402
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
    # (WORKERS, THREADS, one BLAS thread?) tried for the recommend function
    serving_configs: list[tuple[int, int, bool]] = field(default_factory=lambda: [
        (1, 8, False), (1, 4, True), (2, 2, True), (2, 4, True)])


# ---------------------------------------------------------------- data


def make_snapshot(cfg: BenchConfig, rng: np.random.Generator) -> IndexSnapshot:
    """A synthetic catalogue: Zipf-ish categories, 95 % in stock, L2-normalised content rows."""
    n = cfg.items
    cat_weights = 1.0 / np.arange(1, cfg.categories + 1)
    cats = rng.choice(cfg.categories, size=n, p=cat_weights / cat_weights.sum())
    content = rng.random((n, cfg.content_dim), dtype=np.float32) ** 4
    content[np.arange(n), cats % cfg.content_dim] += 2.0
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    return IndexSnapshot(
        version=VERSION, created_at=int(time.time() * 1000) - 60_000,
        item_ids=np.array([f"i{i:06d}" for i in range(n)]),
        embeddings=(rng.standard_normal((n, cfg.dim), dtype=np.float32) / np.sqrt(cfg.dim)),
        content=content, categories=np.array([f"c{c:02d}" for c in cats]),
        in_stock=rng.random(n) < 0.95,
        popularity=rng.pareto(1.5, n).astype(np.float32))


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


def measure_compute(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc], rounds: int = 5) -> dict:
    """Retrieval + hybrid ranking per request vs the bare matvec, same index, same queries.

    Measured in alternating rounds (floor, compute, compute with a category filter) so a noisy,
    shared machine affects all three alike; each figure is the median of the rounds' medians,
    in thread CPU time (what the request costs) and in wall time.
    """
    sys.path.insert(0, str(FUNCTION_DIR))
    from recommender.config import Settings
    from recommender.index import ItemIndex
    from recommender.params import RecommendParams
    from recommender.service import Recommender

    t = time.perf_counter()
    index = ItemIndex.from_snapshot(snap)
    build_s = time.perf_counter() - t
    service = Recommender(Settings(), store=None)  # rank_for never touches the store
    params = RecommendParams(user_id="u", k=10, alpha=0.7)
    cat_params = RecommendParams(user_id="u", k=10, alpha=0.7, categories=("c03", "c10"))
    queries = [users[i % len(users)] for i in range(cfg.compute_queries)]
    vectors = [np.asarray(u.embedding, dtype=np.float32) for u in queries]
    body = service.rank_for(index, params, queries[0])
    assert body["strategy"] == "personalized" and len(body["items"]) == 10
    rounds_out: dict[str, list[tuple[float, float]]] = {"floor": [], "compute": [], "filtered": []}
    for _ in range(rounds):
        rounds_out["floor"].append(_timed(lambda q: index.embeddings @ q, vectors))
        rounds_out["compute"].append(_timed(lambda u: service.rank_for(index, params, u), queries))
        rounds_out["filtered"].append(_timed(lambda u: service.rank_for(index, cat_params, u), queries))

    def ms(name: str, which: int) -> float:
        return float(np.median([r[which] for r in rounds_out[name]]) * 1000)

    return {"compute_ms": ms("compute", 1), "matvec_floor_ms": ms("floor", 1),
            "compute_vs_floor": ms("compute", 1) / ms("floor", 1),
            "compute_with_category_filter_ms": ms("filtered", 1),
            "compute_wall_ms": ms("compute", 0), "matvec_floor_wall_ms": ms("floor", 0),
            "compute_with_category_filter_wall_ms": ms("filtered", 0),
            "timing": "compute_ms/matvec_floor_ms: thread CPU time (immune to the shared machine's "
                      "preemption); *_wall_ms: wall clock; medians of per-round medians",
            "rounds_ms": {k: [[round(w * 1000, 3), round(c * 1000, 3)] for w, c in v]
                          for k, v in rounds_out.items()},
            "index_build_s": build_s}


def measure_ivf(cfg: BenchConfig, snap: IndexSnapshot, users: list[UserDoc]) -> dict:
    """An IVF-flat approximate index (scipy k-means, clusters stored contiguously) vs exact top-10."""
    from scipy.cluster.vq import kmeans2

    emb = np.ascontiguousarray(snap.embeddings, dtype=np.float32)
    n = emb.shape[0]
    nlist = int(np.sqrt(n))
    rng = np.random.default_rng(cfg.seed)
    t = time.perf_counter()
    centroids, _ = kmeans2(emb[rng.choice(n, size=min(n, 10_000), replace=False)], nlist, iter=5,
                           minit="points", seed=cfg.seed)
    centroids = centroids.astype(np.float32)
    # nearest centroid by L2: argmax of 2 x.c - |c|^2
    assign = np.argmax(2 * emb @ centroids.T - (centroids ** 2).sum(1), axis=1)
    order = np.argsort(assign, kind="stable")
    sorted_emb = np.ascontiguousarray(emb[order])
    bounds = np.searchsorted(assign[order], np.arange(nlist + 1))
    build_s = time.perf_counter() - t
    out = {"nlist": nlist, "build_s": build_s, "probes": {}}
    for nprobe in (4, 16, 32):
        times, recalls = [], []
        for user in users[:200]:
            q = np.asarray(user.embedding, dtype=np.float32)
            exact = set(np.argpartition(emb @ q, n - 10)[n - 10:].tolist())
            t0 = time.perf_counter()
            probe = np.argpartition(centroids @ q, nlist - nprobe)[nlist - nprobe:]
            rows = np.concatenate([np.arange(bounds[c], bounds[c + 1]) for c in probe])
            scores = sorted_emb[rows] @ q
            top = rows[np.argpartition(scores, max(len(rows) - 10, 0))[-10:]]
            found = set(order[top].tolist())
            times.append(time.perf_counter() - t0)
            recalls.append(len(found & exact) / 10)
        out["probes"][str(nprobe)] = {"query_ms": _median_ms(times),
                                      "recall_at_10": float(np.mean(recalls))}
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
          log_dir: Path, timeout_s: float = 120.0) -> Server:
    """Start functions-framework on a loopback port; time process start to the first 200."""
    port = free_port()
    log = open(log_dir / f"{name}.log", "wb")
    cmd = [sys.executable, "-m", "functions_framework", "--target", target, "--source", str(source),
           "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(ROOT))
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
            work_dir: Path) -> dict:
    """Fixed-concurrency load; returns rps, p50/p99 latency and error counts."""
    script = work_dir / "cycle_users.lua"
    script.write_text(LUA % (", ".join(f'"{u}"' for u in user_ids), path_template))
    cmd = ["wrk", f"-t{cfg.wrk_threads}", f"-c{cfg.connections}", f"-d{max(1, round(duration_s))}s",
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


def load_test(name: str, target: str, source: Path, path_template: str, health_path: str,
              env: dict[str, str], user_ids: list[str], cfg: BenchConfig, work_dir: Path,
              emulator_pid: int) -> dict:
    """Serve, warm up, load; add CPU per request (server tree, emulator), memory, cold start."""
    server = serve(name, target, source, env, health_path, work_dir)
    try:
        run_wrk(server.port, path_template, user_ids, cfg, cfg.warmup_s, work_dir)
        cpu0, emu0 = cpu_seconds(server.proc.pid), cpu_seconds(emulator_pid)
        result = run_wrk(server.port, path_template, user_ids, cfg, cfg.duration_s, work_dir)
        cpu1, emu1 = cpu_seconds(server.proc.pid), cpu_seconds(emulator_pid)
        n = max(result["requests"], 1)
        result["server_cpu_ms_per_request"] = (cpu1 - cpu0) * 1000 / n
        result["emulator_cpu_ms_per_request"] = (emu1 - emu0) * 1000 / n
        result.update(memory_mb(server.proc.pid))
        result["cold_start_s"] = server.cold_start_s
        result["cold_start_cpu_s"] = server.cold_start_cpu_s
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
    out["runs"] = [{k: round(r[k], 3) for k in ("rps", "p50_ms", "p99_ms")} for r in runs]
    return out


def targets(report: dict) -> dict:
    rec, bare, fn = report["recommend"], report["bare_read"], report["find_nearest"]
    return {
        "rps_vs_bare_read": {"value": rec["rps"] / bare["rps"], "target": ">= 0.8",
                             "met": rec["rps"] >= 0.8 * bare["rps"]},
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
                               "met": rec["p50_ms"] <= REFERENCE["latency_ms"]},
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
    labels = {"recommend": "recommend", "bare_read": "bare_read (user doc only)",
              "find_nearest": f"find_nearest ({report['config']['vector_items']:,} docs)"}
    for name, label in labels.items():
        print(f"{label:<34}{_row(report[name])}")
    for name in ("bare_read", "recommend"):
        runs = ", ".join(f"{r['rps']:.0f} rps p99 {r['p99_ms']:.0f} ms" for r in report[name]["runs"])
        print(f"  {name} runs (alternating): {runs}")
    print(f"\nchosen serving config: {report['chosen']}")
    print(f"compute (retrieval + ranking) {report['compute_ms']:.2f} ms CPU (wall "
          f"{report['compute_wall_ms']:.2f}; with a 2-category filter "
          f"{report['compute_with_category_filter_ms']:.2f}) vs matvec floor "
          f"{report['matvec_floor_ms']:.2f} ms CPU (wall {report['matvec_floor_wall_ms']:.2f})")
    ivf = report["approximate_index"]
    probes = ", ".join(f"nprobe {k}: {v['query_ms']:.2f} ms recall@10 {v['recall_at_10']:.2f}"
                       for k, v in ivf["probes"].items())
    print(f"IVF approximate index ({ivf['nlist']} lists, build {ivf['build_s']:.1f} s): {probes}")
    print(f"cold start {report['cold_start_s']:.2f} s wall, {report['cold_start_cpu_s']:.2f} s CPU; "
          f"memory RSS {report['rss_mb']:.0f} MB "
          f"(PSS {report['pss_mb']:.0f} MB) over {report['recommend']['processes']} processes")
    print("\ntargets:")
    for k, v in report["targets"].items():
        print(f"  {k:<26} {v['value']:>9.2f}  target {v['target']:<14} {'met' if v['met'] else 'NOT met'}")
    print(f"\nwritten {REPORT.relative_to(ROOT)}")


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = BenchConfig()
    p.add_argument("--items", type=int, default=d.items)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--vector-items", type=int, default=d.vector_items)
    p.add_argument("--duration", type=float, default=d.duration_s)
    p.add_argument("--connections", type=int, default=d.connections)
    p.add_argument("--configs", default=None,
                   help="serving configs to try, e.g. '1x8,2x2:blas' "
                        "(WORKERSxTHREADS, ':blas' = one BLAS thread)")
    a = p.parse_args(argv)
    cfg = BenchConfig(items=a.items, users=a.users, vector_items=min(a.vector_items, a.items),
                      duration_s=a.duration, connections=a.connections,
                      pubsub_port=int(os.environ.get("BENCH_PUBSUB_PORT", d.pubsub_port)),
                      firestore_port=int(os.environ.get("BENCH_FIRESTORE_PORT", d.firestore_port)))
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
        snap = make_snapshot(cfg, rng)
        index_uri = str(work / VERSION / INDEX_FILE)
        Path(index_uri).parent.mkdir(parents=True)
        snap.save(index_uri)
        users = make_users(cfg, snap, rng)
        print(f"snapshot {cfg.items:,} items ({Path(index_uri).stat().st_size / 1e6:.0f} MB) and "
              f"{cfg.users:,} users in {time.perf_counter() - t:.1f} s; seeding Firestore ...", flush=True)
        client = firestore.Client(project=stack_cfg.project)
        seed = seed_firestore(client, cfg, snap, index_uri, users)
        print(f"seeded in {seed['seed_users_s'] + seed['seed_vectors_s']:.1f} s; measuring compute ...",
              flush=True)
        compute = measure_compute(cfg, snap, users)
        ivf = measure_ivf(cfg, snap, users)
        user_ids = [u.user_id for u in users]
        rec_path = "/recommendations?user_id=%s&k=10"
        emulator = state.pids["firestore"]

        def run(name: str, w: int, th: int, blas: bool) -> dict:
            if name == "recommend":
                return load_test("recommend", "recommend", FUNCTION_DIR / "main.py", rec_path, "/healthz",
                                 server_env(stack_cfg, w, th, blas), user_ids, cfg, work, emulator)
            return load_test("bare_read", "bare_read", BASELINES, "/?user_id=%s", "/?user_id=u00000",
                             server_env(stack_cfg, w, th, blas), user_ids, cfg, work, emulator)

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
        print(f"head to head with WORKERS={w} THREADS={th}: bare_read and recommend alternating "
              f"{cfg.pairs}x ...", flush=True)
        bare_runs, rec_runs = [], []
        for _ in range(cfg.pairs):
            bare_runs.append(run("bare_read", w, th, blas))
            rec_runs.append(run("recommend", w, th, blas))
        bare, recommend = combine(bare_runs), combine(rec_runs)
        fn = load_test("find_nearest", "find_nearest", BASELINES, "/?user_id=%s&k=10",
                       "/?user_id=u00000&k=1", server_env(stack_cfg, w, th, blas,
                                                          {"FIND_NEAREST_COLLECTION": VECTORS}),
                       user_ids, cfg, work, state.pids["firestore"])
        fn["collection_items"] = cfg.vector_items
        fn["note"] = (f"find_nearest searched {cfg.vector_items:,} item vectors, not {cfg.items:,} "
                      "(seeding 100k docs into the emulator is too slow); this only favours it")
        report = {
            "config": {k: v for k, v in asdict(cfg).items() if k != "serving_configs"},
            "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()},
            "reference": REFERENCE,
            "recommend": recommend,
            "bare_read": bare, "find_nearest": fn,
            **compute, "approximate_index": ivf,
            "cold_start_s": float(np.median([c["cold_start_s"] for c in configs + rec_runs])),
            "cold_start_runs_s": [round(c["cold_start_s"], 3) for c in configs + rec_runs],
            "cold_start_cpu_s": float(np.median([c["cold_start_cpu_s"] for c in configs + rec_runs])),
            "rss_mb": recommend["rss_mb"], "pss_mb": recommend["pss_mb"],
            "serving_configs": configs,
            "chosen": {"WORKERS": w, "THREADS": th, "OPENBLAS_NUM_THREADS": 1 if blas else "auto"},
            "seeding": seed,
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
