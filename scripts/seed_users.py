"""Bootstrap ``users/{id}`` from historical events, embedded with the current model.

A new deployment starts with history that predates the stream (a data export, the
training file). This writes each user's last N events as :class:`schemas.firestore.UserDoc`
with an embedding from the current query tower, so the streaming pipeline seeds its
per-user state from them and the recommend function serves them at once::

    python -m scripts.seed_users --events artifacts/demo/data/events.jsonl --model-dir artifacts/models

Users that already have a document are left alone unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from schemas import names
from schemas.events import ProductEvent
from schemas.firestore import CurrentModelDoc, HistoryEntry, UserDoc, with_seen

log = logging.getLogger("seed_users")
BATCH = 400


def user_docs(events: Iterable[ProductEvent], history_length: int, now_ms: int
              ) -> list[UserDoc]:
    """One document per user: the last ``history_length`` events (oldest first) and, as ``seen``,
    the items of the older ones (as the pipeline keeps them); no embedding."""
    by_user: dict[str, dict[str, ProductEvent]] = defaultdict(dict)
    for e in events:
        by_user[e.user_id].setdefault(e.event_id, e)
    docs = []
    for user_id, unique in by_user.items():
        ordered = sorted(unique.values(), key=lambda e: (e.timestamp, e.event_id))
        recent = ordered[-history_length:]
        older = [e.item_id for e in ordered[:-history_length]] if len(ordered) > history_length else []
        docs.append(UserDoc(
            user_id=user_id,
            history=tuple(HistoryEntry(e.event_id, e.item_id, e.event_type, e.timestamp)
                          for e in recent),
            last_event_id=recent[-1].event_id, last_event_ts=recent[-1].timestamp,
            updated_at=now_ms, event_count=len(ordered), seen=with_seen((), older)))
    return docs


def embed(docs: Sequence[UserDoc], towers, version: str) -> list[UserDoc]:
    """The same documents with embeddings from ``towers`` and ``model_version``."""
    out = []
    for start in range(0, len(docs), 256):
        chunk = docs[start:start + 256]
        vectors = towers.embed_users([d.user_id for d in chunk],
                                     [[h.item_id for h in d.history] for d in chunk])
        out.extend(UserDoc(**{**d.__dict__, "embedding": tuple(float(x) for x in v),
                              "model_version": version}) for d, v in zip(chunk, vectors))
    return out


def write(client, docs: Sequence[UserDoc], overwrite: bool) -> int:
    """Batched writes; with ``overwrite=False`` an existing document is kept (create-only)."""
    from google.api_core.exceptions import AlreadyExists, Conflict

    users = client.collection(names.USERS)
    written = 0
    for start in range(0, len(docs), BATCH):
        chunk = docs[start:start + BATCH]
        if overwrite:
            batch = client.batch()
            for d in chunk:
                batch.set(users.document(d.user_id), d.to_document())
            batch.commit()
            written += len(chunk)
            continue
        for d in chunk:  # create() fails on an existing document: a live user's state wins
            try:
                users.document(d.user_id).create(d.to_document())
                written += 1
            except (AlreadyExists, Conflict):
                pass
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", required=True, help="events file or directory (any loader format)")
    parser.add_argument("--history-length", type=int, default=50)
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT",
                                                            names.DEFAULT_PROJECT))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from google.cloud import firestore

    from pipelines.data import load_dataset
    from pipelines.training.artifact import load_towers

    client = firestore.Client(project=args.project)
    snap = client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).get()
    if not snap.exists:
        parser.error("no models/current in Firestore: train and publish a model first")
    current = CurrentModelDoc.from_document(snap.to_dict())
    towers = load_towers(current.artifact_uri)
    dataset = load_dataset(args.events)
    docs = embed(user_docs(dataset.events, args.history_length, int(time.time() * 1000)),
                 towers, current.version)
    n = write(client, docs, args.overwrite)
    log.info("seeded %d of %d users with model %s", n, len(docs), current.version)
    print(f"seeded {n} users")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
