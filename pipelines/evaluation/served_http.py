"""The ``served_http`` bench row: test users replayed over HTTP against the real recommend function.

The model artefact is published to Firestore with :func:`pipelines.training.publish.publish_version`
(items, ``models/{version}``, ``models/current`` with its serving defaults); each replayed user gets
the ``users/{id}`` document the streaming pipeline would write (the last ``STORED_HISTORY`` train
events, the query-tower embedding of that history, this model version). The function runs as a
subprocess (``scripts/serve_recommend.sh``: functions-framework, ``serving.env``) on the Firestore
emulator, and ``GET /recommendations?user_id=U&k=K`` (no alpha: the version's default) gives each
list. Its metrics must equal the in-process ``served`` row's on the same users.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluation.metrics import evaluate_lists
from pipelines.evaluation.served import ROOT, ServedUsers
from pipelines.evaluation.splits import Split
from schemas import names
from schemas.firestore import HistoryEntry, UserDoc

SERVE_SCRIPT = ROOT / "scripts" / "serve_recommend.sh"
DEFAULT_USERS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def firestore_emulator(port: int | None = None) -> Iterator[dict[str, str]]:
    """A Firestore emulator (``scripts.local_stack``) for the block, on a free port unless given
    (not `make stack-start`'s, not the tests'); yields the client environment."""
    from scripts import local_stack

    config = local_stack.StackConfig(firestore_port=port or free_port())
    with tempfile.TemporaryDirectory(prefix="served-http-") as tmp:
        pid = local_stack.start_emulator("firestore", config, Path(tmp))
        try:
            yield {"FIRESTORE_EMULATOR_HOST": config.firestore_host, "GOOGLE_CLOUD_PROJECT": config.project}
        finally:
            local_stack.stop_state(local_stack.StackState(config=config, pids={"firestore": pid}))


@contextmanager
def patched_env(env: Mapping[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def user_documents(split: Split, users: ServedUsers, histories: Sequence[Sequence[str]], version: str
                   ) -> list[UserDoc]:
    """The ``users/{id}`` documents the streaming pipeline would hold for ``users``."""
    docs = []
    for j, u in enumerate(users.users.tolist()):
        times = split.history_times(u)[-len(histories[j]):] if len(histories[j]) else []
        entries = tuple(HistoryEntry(event_id=f"bench-{u}-{n}", item_id=str(i), event_type="view",
                                     timestamp=int(t)) for n, (i, t) in enumerate(zip(histories[j], times)))
        docs.append(UserDoc(user_id=str(split.user_ids[u]), history=entries,
                            last_event_id=entries[-1].event_id if entries else "",
                            last_event_ts=entries[-1].timestamp if entries else 0, updated_at=0,
                            model_version=version, embedding=tuple(float(x) for x in users.queries[j]),
                            event_count=len(entries), seen=tuple(users.seen[j])))
    return docs


def write_users(client: Any, docs: Sequence[UserDoc]) -> None:
    col = client.collection(names.USERS)
    for s in range(0, len(docs), 400):
        batch = client.batch()
        for d in docs[s:s + 400]:
            batch.set(col.document(d.user_id), d.to_document())
        batch.commit()


@contextmanager
def serving_function(env: Mapping[str, str], port: int, timeout_s: float = 180.0) -> Iterator[str]:
    """The recommend function on ``port`` (``scripts/serve_recommend.sh``) until the block ends."""
    log = tempfile.NamedTemporaryFile(prefix="served-http-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(["bash", str(SERVE_SCRIPT), str(port)], env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = Path(log.name).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"the recommend function exited ({proc.returncode}): {tail}; "
                                   f"see {log.name}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
                    if r.status == 200 and json.loads(r.read()).get("model_version"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the recommend function did not become healthy; see {log.name}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """TERM the function's process group (gunicorn and its workers), KILL it after 20 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue


def fetch_lists(base: str, user_ids: Sequence[str], k: int, item_index: Mapping[str, int]
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``GET /recommendations`` for each user: split item indices [U, k] (-1 pads) and the bodies."""
    out = np.full((len(user_ids), k), -1, dtype=np.int64)
    bodies = []
    for j, uid in enumerate(user_ids):
        query = urllib.parse.urlencode({"user_id": uid, "k": k})
        with urllib.request.urlopen(f"{base}/recommendations?{query}", timeout=30) as r:
            body = json.loads(r.read())
        ids = [i["item_id"] for i in body["items"]]
        out[j, :len(ids)] = [item_index.get(i, -1) for i in ids]
        bodies.append(body)
    return out, bodies


def replay(artifact: Path, split: Split, users: ServedUsers, histories: Sequence[Sequence[str]], k: int,
           env: Mapping[str, str], port: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Publish ``artifact``, write the users' documents and query the function over HTTP."""
    from google.cloud import firestore

    from pipelines.training.publish import publish_version

    version = json.loads((artifact / "metadata.json").read_text(encoding="utf-8"))["version"]
    with patched_env(env):
        client = firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"])
        try:
            publish_version(artifact, client=client)
            write_users(client, user_documents(split, users, histories, version))
        finally:
            client.close()
    item_index = {str(i): n for n, i in enumerate(split.item_ids)}
    with serving_function(env, port or free_port()) as base:
        return fetch_lists(base, [str(split.user_ids[u]) for u in users.users], k, item_index)


def pick(users: ServedUsers, histories: Sequence[Sequence[str]], n: int, seed: int
         ) -> tuple[ServedUsers, list[Sequence[str]], np.ndarray]:
    """A seeded sample of ``n`` users (positions into ``users`` returned too)."""
    pos = np.arange(users.users.size)
    if n < pos.size:
        pos = np.sort(np.random.default_rng(seed).choice(pos, size=n, replace=False))
    return users.subset(pos), [histories[p] for p in pos], pos


def served_http_metrics(artifact: Path, split: Split, users: ServedUsers, histories: Sequence[Sequence[str]],
                        served_lists: np.ndarray, ks: Sequence[int], n_users: int = DEFAULT_USERS,
                        seed: int = 0, env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Metrics of the HTTP-served lists of ``n_users`` users, next to ``served``'s on the same users.

    ``env``: a running Firestore emulator's client environment (default: start one here).
    """
    sub, sub_hist, pos = pick(users, histories, n_users, seed)
    k = max(ks)
    t0 = time.perf_counter()
    if env is None:
        with firestore_emulator() as started:
            lists, _ = replay(artifact, split, sub, sub_hist, k, started)
    else:
        lists, _ = replay(artifact, split, sub, sub_hist, k, env)
    metrics = evaluate_lists(lists, sub.users, split, ks)
    same = evaluate_lists(served_lists[pos], sub.users, split, ks)
    metrics["served_ndcg@10_same_users"] = same["ndcg@10"]
    metrics["served_recall@20_same_users"] = same.get("recall@20", float("nan"))
    same_lists = [(a == b).all() for a, b in zip(lists, served_lists[pos])]
    metrics["lists_identical_share"] = float(np.mean(same_lists)) if same_lists else 0.0
    metrics["replay_seconds"] = time.perf_counter() - t0
    return metrics
