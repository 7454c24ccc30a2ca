"""Serving a function locally with functions-framework, timed from process start to the first 200.

The recommend function and the baselines are served the same way, so their figures compare.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import measure
from scripts import local_stack


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
          log_dir: Path, timeout_s: float = 120.0, cwd: Path = measure.ROOT) -> Server:
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
                    return Server(name, proc, port, time.perf_counter() - t0,
                                  measure.tree_cpu_seconds(proc.pid))
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    Server(name, proc, port, 0.0, 0.0).stop()
    raise RuntimeError(f"{name} did not answer 200 on {health_path} within {timeout_s} s")



def server_env(stack: local_stack.StackConfig, workers: int, threads: int, one_blas: bool,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(stack.client_env())
    env.update({"WORKERS": str(workers), "THREADS": str(threads), "PYTHONPATH": str(measure.ROOT),
                "REFRESH_SECONDS": "5", "GUNICORN_LOG_LEVEL": "error"})
    if one_blas:
        env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


def retrieval_seen(port: int, health_path: str, polls: int = 8) -> list[str]:
    """The ``retrieval`` the workers report on /healthz after the warm-up (IVF builds in the background)."""
    seen = set()
    for _ in range(polls):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{health_path}", timeout=5) as resp:
                seen.add(str(json.loads(resp.read()).get("retrieval")))
        except (urllib.error.URLError, OSError, ValueError):
            seen.add("error")
    return sorted(seen)

