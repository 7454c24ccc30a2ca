"""Load generation with ``wrk`` at a fixed concurrency, and one served handler's load test.

A fixed number of keep-alive connections on loopback is how the function is compared with its
baselines; CPU per request of the server tree and the emulator comes with every run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import measure
from bench.serving.config import BenchConfig
from bench.serving.experiment import served_counts
from bench.serving.server import retrieval_seen, serve

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
        retrieval = retrieval_seen(server.port, health_path) if health_path == "/healthz" else None
        workers = measure.children(server.proc.pid)
        cpu0, emu0 = measure.tree_cpu_seconds(server.proc.pid), measure.tree_cpu_seconds(emulator_pid)
        per0 = [measure.tree_cpu_seconds(w) for w in workers]
        result = run_wrk(server.port, path_template, user_ids, cfg, cfg.duration_s, work_dir)
        cpu1, emu1 = measure.tree_cpu_seconds(server.proc.pid), measure.tree_cpu_seconds(emulator_pid)
        per1 = [measure.tree_cpu_seconds(w) for w in workers]
        n = max(result["requests"], 1)
        result["server_cpu_ms_per_request"] = (cpu1 - cpu0) * 1000 / n
        # each worker's share of the workers' CPU: ~1/WORKERS each when connections are spread
        busy = [b - a for a, b in zip(per0, per1)]
        total = sum(busy)
        result["worker_cpu_share"] = [round(x / total, 3) if total > 0 else 0.0 for x in busy]
        result["emulator_cpu_ms_per_request"] = (emu1 - emu0) * 1000 / n
        result.update(measure.tree_memory_mb(server.proc.pid))
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
        if env.get("SERVED_TOPIC"):  # over the server's life: warm-up, load and low-concurrency runs
            result["served_records"] = served_counts(server.port)
        return result
    finally:
        server.stop()

