"""Cold start and memory of the recommend function: sparse vs dense content, side by side.

On a shared machine, figures from different runs are not comparable, so this serves, in the
same run and interleaved (A B B A ...), the same trained 100k-item catalogue two ways:

* ``dense``: this tree's committed code (``git archive HEAD``) with the files the sparse change
  touched (``DENSE_FILES``) as of ``--baseline-ref``, reading the snapshot in the old layout (a
  dense ``content`` [N, C] float32 array);
* ``sparse``: this tree's code reading the snapshot in the current layout (CSR content).

Each server starts with the production settings (``functions/recommend/serving.env``) against its
own Firestore emulator (``models/current`` points at the variant's snapshot); measured: process
start to the first 200 on /healthz (wall and CPU of the process tree), PSS/RSS of the tree after
start and after ``2 x --requests`` sequential recommendations, server CPU per request and p50 latency
over the second half of them, and the snapshot file size. Also, in fresh
interpreters (wall, CPU, peak RSS): the baseline code loading its dense file (it read the whole
file into bytes first), the current code loading the dense file (backward compatibility) and the
sparse file, by path and through ``from_bytes(read_bytes())``; and ``Recommender.rank_for`` CPU per
request (retrieval + hybrid ranking as served) and the ``/similar-items`` content-basis scan, in process.

    python -m scripts.bench_serving_coldstart [--runs 4] [--requests 200]
        [--firestore-port 18908 --pubsub-port 18907] [--baseline-ref 80fb5f5]

Writes ``reports/bench/serving_coldstart_sparse.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from schemas import names
from schemas.firestore import CurrentModelDoc, TrendingDoc, TrendingEntry
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot
from scripts import bench_serving as bs
from scripts import local_stack

ROOT = bs.ROOT
REPORT = ROOT / "reports" / "bench" / "serving_coldstart_sparse.json"
SERVING_ENV = ROOT / "functions" / "recommend" / "serving.env"

_LOAD_PROBE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from schemas.index_snapshot import IndexSnapshot
t, c = time.perf_counter(), time.process_time()
snap = (IndexSnapshot.load(sys.argv[2]) if sys.argv[3] == "path"
        else IndexSnapshot.from_bytes(Path(sys.argv[2]).read_bytes()))
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
print(time.perf_counter() - t, time.process_time() - c, int(hwm) / 1024)
"""

# In-process, one fresh interpreter per tree: Recommender.rank_for CPU per request (retrieval +
# hybrid ranking as served, users with histories) and /similar-items' content-basis cosine scan.
_RANK_PROBE = """
import os, sys, time
tree, snap_path, root = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [tree + "/functions/recommend", tree]
sys.path.append(root)
for line in open(root + "/functions/recommend/serving.env"):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        os.environ[k] = v
import numpy as np
from recommender.config import Settings
from recommender.index import ItemIndex, read_snapshot
from recommender.params import RecommendParams
from scoring.ranking import rank_cosine
from recommender.service import Recommender
from schemas.firestore import HistoryEntry, UserDoc
from scripts.bench_serving_model import CatalogueSpec, cached_catalogue
cat = cached_catalogue(CatalogueSpec())
snap = read_snapshot(snap_path)
users = [UserDoc(user_id=str(cat.user_ids[u]), history=tuple(
             HistoryEntry(event_id=f"e{j}", item_id=h, event_type="view", timestamp=j)
             for j, h in enumerate(h for h in cat.histories[u].tolist() if h)),
         last_event_id="e", last_event_ts=0, updated_at=0, model_version=snap.version,
         embedding=tuple(float(x) for x in cat.embeddings[u]), event_count=1) for u in range(300)]
settings = Settings.from_env()
service = Recommender(settings, store=None)
index = service.with_retrieval(ItemIndex.from_snapshot(snap))
p = RecommendParams(user_id="u", k=10, alpha=settings.default_alpha)
for u in users:
    service.rank_for(index, p, u)
rounds = []
for _ in range(5):
    c = time.thread_time()
    for u in users:
        service.rank_for(index, p, u)
    rounds.append((time.thread_time() - c) / len(users) * 1000)
c = time.thread_time()
for row in range(20):
    vec = index.content[row] if isinstance(index.content, np.ndarray) else index.content.rows([row])[0]
    rank_cosine(vec, index.content, index.content_norms, 10, None)
print(float(np.median(rounds)), (time.thread_time() - c) / 20 * 1000)
"""


def rank_probe(tree: Path, path: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", _RANK_PROBE, str(tree), str(path), str(ROOT)],
                         check=True, capture_output=True, text=True, cwd=str(tree),
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    rank, similar = (float(x) for x in res.stdout.split()[-2:])
    return {"rank_for_cpu_ms": rank, "similar_content_cpu_ms": similar}


def save_dense_layout(snap: IndexSnapshot, path: Path) -> None:
    """The snapshot in the layout written before content was stored sparse."""
    np.savez(path, version=np.array(snap.version), created_at=np.array(snap.created_at),
             item_ids=snap.item_ids.astype(str), embeddings=snap.embeddings.astype(np.float32),
             content=snap.content.to_dense(), categories=snap.categories.astype(str),
             in_stock=snap.in_stock.astype(bool), popularity=snap.popularity.astype(np.float32))


def production_env() -> dict[str, str]:
    env = {}
    for line in SERVING_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


# The files the sparse-content change touched on the serving path; everything else (for example the
# user-document format) is this tree's, so both variants do the same work per request.
DENSE_FILES = ("schemas/content.py", "schemas/index_snapshot.py",
               "functions/recommend/recommender/index.py", "functions/recommend/recommender/ranking.py",
               "functions/recommend/recommender/service.py")


def baseline_tree(ref: str, dest: Path) -> Path:
    """This tree's committed ``schemas/`` and ``functions/`` with ``DENSE_FILES`` as of ``ref``."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD", "schemas", "functions"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for f in DENSE_FILES:
        (dest / f).write_bytes(subprocess.run(["git", "show", f"{ref}:{f}"], cwd=ROOT, check=True,
                                              capture_output=True).stdout)
    return dest


def point_current(client, snap: IndexSnapshot, index_uri: Path) -> None:
    client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).set(CurrentModelDoc(
        version=snap.version, artifact_uri=str(index_uri.parent), index_uri=str(index_uri),
        switched_at=snap.created_at).to_document())


def one_server(variant: str, tree: Path, env: dict[str, str], user_ids: list[str], requests: int,
               log_dir: Path) -> dict:
    server = bs.serve(variant, "recommend", tree / "functions" / "recommend" / "main.py", env,
                      "/healthz", log_dir, cwd=tree)
    try:
        out = {"cold_start_s": server.cold_start_s, "cold_start_cpu_s": server.cold_start_cpu_s}
        out.update({f"{k}_after_start": v for k, v in bs.memory_mb(server.proc.pid).items()})
        latencies = []
        for i in range(2 * requests):  # the first half warms up (IVF, trending, connections)
            if i == requests:
                cpu0 = bs.cpu_seconds(server.proc.pid)
            url = f"http://127.0.0.1:{server.port}/recommendations?user_id={user_ids[i % len(user_ids)]}&k=10"
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{variant}: HTTP {resp.status}")
            latencies.append(time.perf_counter() - t)
        out["server_cpu_ms_per_request"] = (bs.cpu_seconds(server.proc.pid) - cpu0) * 1000 / requests
        out["sequential_p50_ms"] = float(np.median(latencies[requests:]) * 1000)
        out.update({f"{k}_after_requests": v for k, v in bs.memory_mb(server.proc.pid).items()})
        return out
    finally:
        server.stop()


def load_probe(tree: Path, path: Path, how: str) -> dict:
    res = subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(tree), str(path), how],
                         check=True, capture_output=True, text=True, cwd=str(tree))
    wall, cpu, peak = (float(x) for x in res.stdout.split())
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak}


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4, help="servers started per variant (interleaved)")
    ap.add_argument("--requests", type=int, default=200,
                    help="sequential recommendations measured (after as many for warm-up)")
    ap.add_argument("--baseline-ref", default="80fb5f5", help="commit with the dense-content DENSE_FILES")
    ap.add_argument("--pubsub-port", type=int, default=18907)
    ap.add_argument("--firestore-port", type=int, default=18908)
    args = ap.parse_args(argv)

    cfg = bs.BenchConfig(pubsub_port=args.pubsub_port, firestore_port=args.firestore_port, users=200)
    work = Path(tempfile.mkdtemp(prefix="bench_coldstart_"))
    stack_cfg = local_stack.StackConfig(pubsub_port=cfg.pubsub_port, firestore_port=cfg.firestore_port)
    state = local_stack.start(stack_cfg, state_dir=work / "stack")
    load_before = os.getloadavg()
    try:
        os.environ.update(stack_cfg.client_env())
        from google.cloud import firestore

        snap, users, catalogue = bs.trained_catalogue(cfg)
        paths = {"dense": work / "dense" / INDEX_FILE, "sparse": work / "sparse" / INDEX_FILE}
        for p in paths.values():
            p.parent.mkdir()
        save_dense_layout(snap, paths["dense"])
        snap.save(paths["sparse"])
        trees = {"dense": baseline_tree(args.baseline_ref, work / "baseline"), "sparse": ROOT}
        client = firestore.Client(project=stack_cfg.project)
        top = np.argsort(-snap.popularity)[:100]
        docs = [(names.STATS, names.TRENDING_DOC, TrendingDoc(
            items=tuple(TrendingEntry(item_id=str(snap.item_ids[i]), views=100, add_to_cart=5,
                                      purchases=1, score=float(snap.popularity[i])) for i in top),
            window_start=snap.created_at, window_end=snap.created_at, updated_at=snap.created_at
        ).to_document())] + [(names.USERS, u.user_id, u.to_document()) for u in users]
        bs._write_batched(client, docs)
        user_ids = [u.user_id for u in users]
        prod = production_env()
        servers: dict[str, list[dict]] = {"dense": [], "sparse": []}
        # (code tree, snapshot, how): the old code always read bytes first; the new code reads the path
        probes = {"dense_file_baseline_code": (trees["dense"], paths["dense"], "path"),
                  "dense_file_current_code": (ROOT, paths["dense"], "path"),
                  "sparse_file_path": (ROOT, paths["sparse"], "path"),
                  "sparse_file_from_bytes": (ROOT, paths["sparse"], "bytes")}
        loads: dict[str, list[dict]] = {k: [] for k in probes}
        ranks: dict[str, list[dict]] = {"dense": [], "sparse": []}
        for r in range(args.runs):
            order = ("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")
            for v in order:
                point_current(client, snap, paths[v])
                env = bs.server_env(stack_cfg, int(prod["WORKERS"]), int(prod["THREADS"]), True,
                                    {**prod, "PYTHONPATH": str(trees[v])})
                res = one_server(v, trees[v], env, user_ids, args.requests, work)
                res["loadavg"] = os.getloadavg()[0]
                servers[v].append(res)
                print(f"run {r + 1} {v:<6} cold start {res['cold_start_s']:.2f} s wall "
                      f"{res['cold_start_cpu_s']:.2f} s CPU; PSS {res['pss_mb_after_start']:.0f} -> "
                      f"{res['pss_mb_after_requests']:.0f} MB; load {res['loadavg']:.1f}", flush=True)
            for k, (tree, path, how) in probes.items():
                loads[k].append(load_probe(tree, path, how))
            for v in order:
                ranks[v].append(rank_probe(trees[v], paths[v]))
        keys = ("cold_start_s", "cold_start_cpu_s", "pss_mb_after_start", "rss_mb_after_start",
                "pss_mb_after_requests", "rss_mb_after_requests", "server_cpu_ms_per_request",
                "sequential_p50_ms")
        summary = {v: {k: _median(servers[v], k) for k in keys} for v in servers}
        report = {
            "what": "recommend function cold start and memory, dense vs sparse content, interleaved",
            "baseline_ref": args.baseline_ref, "catalogue": catalogue, "runs_per_variant": args.runs,
            "requests_per_server": args.requests, "serving_env": prod,
            "machine": {"cpu_count": os.cpu_count(), "loadavg_before": load_before,
                        "loadavg_after": os.getloadavg()},
            "snapshot_bytes": {v: p.stat().st_size for v, p in paths.items()},
            "content": {"dim": snap.content.dim, "rows": len(snap.content), "nnz": snap.content.nnz},
            "median": summary,
            "ratio_sparse_over_dense": {k: summary["sparse"][k] / summary["dense"][k] for k in keys},
            "runs": servers,
            "snapshot_load": {k: {m: _median(v, m) for m in ("wall_s", "cpu_s", "peak_rss_mb")}
                              for k, v in loads.items()},
            "snapshot_load_runs": loads,
            "in_process": {v: {m: _median(r, m) for m in ("rank_for_cpu_ms", "similar_content_cpu_ms")}
                           for v, r in ranks.items()},
            "in_process_runs": ranks,
        }
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(report, indent=2))
        print(f"\n{'median of ' + str(args.runs):<22}{'dense':>10}{'sparse':>10}{'ratio':>8}")
        for k in keys:
            print(f"{k:<22}{summary['dense'][k]:>10.2f}{summary['sparse'][k]:>10.2f}"
                  f"{report['ratio_sparse_over_dense'][k]:>8.2f}")
        for m in ("rank_for_cpu_ms", "similar_content_cpu_ms"):
            dn, sp = report["in_process"]["dense"][m], report["in_process"]["sparse"][m]
            print(f"{m:<22}{dn:>10.3f}{sp:>10.3f}{sp / dn:>8.2f}")
        sb = report["snapshot_bytes"]
        print(f"{'snapshot MB':<22}{sb['dense'] / 1e6:>10.1f}{sb['sparse'] / 1e6:>10.1f}"
              f"{sb['sparse'] / sb['dense']:>8.2f}")
        for k, v in report["snapshot_load"].items():
            print(f"load {k:<26} {v['wall_s']:.3f} s wall {v['cpu_s']:.3f} s CPU "
                  f"peak RSS {v['peak_rss_mb']:.0f} MB")
        print(f"load average before {load_before}, after {report['machine']['loadavg_after']}; "
              f"wrote {REPORT.relative_to(ROOT)}")
    finally:
        local_stack.stop_state(state)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
