"""Hand-made fixture data for the recommend function: a tiny index snapshot + Firestore docs.

Twelve items in three categories. Embeddings (D=4) point along one axis per category
(books x, music y, garden z) with small variations, so dot products are easy to compute
by hand; content vectors (C=3) are the category one-hot, except ``b4`` which is half music.
``b3`` and ``m2`` are out of stock.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from schemas import names
from schemas.catalog import CatalogItem
from schemas.firestore import (
    CurrentModelDoc,
    HistoryEntry,
    ItemDoc,
    ModelDoc,
    TrendingDoc,
    TrendingEntry,
    UserDoc,
)
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_DIR = ROOT / "functions" / "recommend"
MAIN = FUNCTION_DIR / "main.py"

V1 = "v20260101-000000-aaaaaa"
V2 = "v20260102-000000-bbbbbb"
CREATED_AT = 1_767_225_600_000  # 2026-01-01, epoch ms

ITEMS = {  # item_id: (category, embedding, content, in_stock, popularity)
    "b1": ("books", [1.0, 0.0, 0.0, 0.0], [1, 0, 0], True, 90.0),
    "b2": ("books", [0.9, 0.1, 0.0, 0.0], [1, 0, 0], True, 50.0),
    "b3": ("books", [0.8, 0.0, 0.1, 0.0], [1, 0, 0], False, 40.0),
    "b4": ("books", [0.7, 0.0, 0.0, 0.1], [0.6, 0.8, 0], True, 30.0),
    "m1": ("music", [0.0, 1.0, 0.0, 0.0], [0, 1, 0], True, 80.0),
    "m2": ("music", [0.1, 0.9, 0.0, 0.0], [0, 1, 0], False, 70.0),
    "m3": ("music", [0.0, 0.8, 0.1, 0.0], [0, 1, 0], True, 20.0),
    "m4": ("music", [0.0, 0.7, 0.0, 0.1], [0, 1, 0], True, 10.0),
    "g1": ("garden", [0.0, 0.0, 1.0, 0.0], [0, 0, 1], True, 60.0),
    "g2": ("garden", [0.0, 0.1, 0.9, 0.0], [0, 0, 1], True, 5.0),
    "g3": ("garden", [0.1, 0.0, 0.8, 0.0], [0, 0, 1], True, 4.0),
    "g4": ("garden", [0.0, 0.0, 0.7, 0.1], [0, 0, 1], True, 3.0),
}


def make_snapshot(version: str = V1, created_at: int = CREATED_AT, extra: dict | None = None
                  ) -> IndexSnapshot:
    """The fixture snapshot; ``extra`` adds items in the same tuple format as ``ITEMS``."""
    items = {**ITEMS, **(extra or {})}
    ids = list(items)
    content = np.array([items[i][2] for i in ids], dtype=np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    return IndexSnapshot(version=version, created_at=created_at, item_ids=np.array(ids),
                         embeddings=np.array([items[i][1] for i in ids], dtype=np.float32),
                         content=content, categories=np.array([items[i][0] for i in ids]),
                         in_stock=np.array([items[i][3] for i in ids]),
                         popularity=np.array([items[i][4] for i in ids], dtype=np.float32))


def publish_model(client, directory: Path, snap: IndexSnapshot) -> str:
    """Save the snapshot under ``directory/<version>/`` and point models/current at it."""
    art = directory / snap.version
    art.mkdir(parents=True, exist_ok=True)
    uri = str(art / INDEX_FILE)
    snap.save(uri)
    models = client.collection(names.MODELS)
    models.document(snap.version).set(ModelDoc(
        version=snap.version, status="ready", created_at=snap.created_at, artifact_uri=str(art),
        index_uri=uri, dim=int(snap.embeddings.shape[1]),
        item_count=len(snap.item_ids)).to_document())
    models.document(names.CURRENT_MODEL_DOC).set(CurrentModelDoc(
        version=snap.version, artifact_uri=str(art), index_uri=uri,
        switched_at=snap.created_at).to_document())
    return uri


def write_user(client, user_id: str, history: list[str], embedding: list[float] | None,
               model_version: str | None = V1) -> UserDoc:
    entries = tuple(HistoryEntry(event_id=f"e-{user_id}-{n}", item_id=i, event_type="view",
                                 timestamp=CREATED_AT + n) for n, i in enumerate(history))
    doc = UserDoc(user_id=user_id, history=entries,
                  last_event_id=entries[-1].event_id if entries else "",
                  last_event_ts=CREATED_AT + len(entries), updated_at=CREATED_AT,
                  model_version=model_version,
                  embedding=tuple(embedding) if embedding is not None else None,
                  event_count=len(entries))
    client.collection(names.USERS).document(user_id).set(doc.to_document())
    return doc


def write_trending(client, ranked: list[tuple[str, float]]) -> None:
    entries = tuple(TrendingEntry(item_id=i, views=10, add_to_cart=1, purchases=0, score=s)
                    for i, s in ranked)
    client.collection(names.STATS).document(names.TRENDING_DOC).set(TrendingDoc(
        items=entries, window_start=CREATED_AT, window_end=CREATED_AT + 3_600_000,
        updated_at=CREATED_AT).to_document())


def write_item(client, item_id: str, category: str, embedding: list[float] | None,
               content: list[float] | None, indexed_at: int, model_version: str | None = V1,
               in_stock: bool = True) -> None:
    item = CatalogItem(item_id=item_id, title=f"item {item_id}", category=category, brand="acme",
                       price=10.0, tags=(), in_stock=in_stock, updated_at=indexed_at)
    client.collection(names.ITEMS).document(item_id).set(ItemDoc(
        item=item, embedding=tuple(embedding) if embedding is not None else None,
        content_vector=tuple(content) if content is not None else None,
        model_version=model_version, indexed_at=indexed_at).to_document())


def closed_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gunicorn_function(env: Mapping[str, str], log_dir: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """The recommend function under functions-framework's gunicorn, up (``/healthz`` 200); stopped after.

    ``env`` is the whole environment (emulators, WORKERS, ...); yields the server and its port.
    """
    port = closed_port()
    log_path = log_dir / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "functions_framework", "--target", "recommend",
                                   "--source", str(MAIN), "--host", "127.0.0.1", "--port", str(port)],
                                  env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the function did not come up"
            time.sleep(0.1)
        yield server, port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
