"""Publish a model version to Firestore so that serving and the pipeline switch to it.

Order (readers only ever follow ``models/current``, so they never see a half-written version):

1. ``models/{version}`` with status ``publishing``;
2. every ``items/{id}`` of the artefact's catalogue as an :class:`~schemas.firestore.ItemDoc`
   (embedding, content vector, popularity, ``indexed_at`` = now), in batched writes of at most 500;
3. ``models/{version}`` status ``ready``;
4. ``models/current`` switched (:class:`~schemas.firestore.CurrentModelDoc`);
5. optionally (``publish_users``) every existing ``users/{id}`` gets ``embedding`` and
   ``model_version`` recomputed from its stored history with the new query tower, merged so the
   pipeline's history and counters are untouched.

    python -m pipelines.training.publish artifacts/models/v20260101-120000-abc123 [--users]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from schemas import names
from schemas.catalog import CatalogItem
from schemas.clock import now_ms
from schemas.firestore import CurrentModelDoc, ItemDoc, ModelDoc, UserDoc
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot

log = logging.getLogger("pipelines.training.publish")

MAX_BATCH = 500  # Firestore's limit of writes per batch
_DENSE_CHUNK = 1024  # content rows made dense at a time for item documents
CATALOGUE_FILE = "catalogue.jsonl"  # same as pipelines.training.artifact.CATALOGUE_FILE (no TF import here)
COMMIT_RETRY = gretry.Retry(
    predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.Aborted,
                                       gexc.InternalServerError, gexc.TooManyRequests),
    initial=0.5, maximum=10.0, multiplier=2.0, timeout=120.0)


class PublishError(RuntimeError):
    """The version could not be published; ``models/current`` was not switched."""




def read_catalogue(path: Path) -> dict[str, CatalogItem]:
    """The catalogue saved in an artefact (``catalogue.jsonl``), by item id."""
    out: dict[str, CatalogItem] = {}
    file = path / CATALOGUE_FILE
    if not file.exists():
        return out
    with file.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                d["tags"] = tuple(d.get("tags") or ())
                out[d["item_id"]] = CatalogItem(**d)
    return out


def merge_catalogue(parent_path: Path, catalogue: list[CatalogItem]) -> list[CatalogItem]:
    """A warm start's catalogue: the new items plus the parent version's items it does not mention.

    An item the new data knows only from events (no category, brand, tags or price: what the
    archive loader makes for it) keeps the parent's attributes instead of erasing them.
    """
    parent_items = read_catalogue(parent_path)
    merged = [parent_items.get(i.item_id, i) if _bare(i) else i for i in catalogue]
    known = {i.item_id for i in catalogue}
    return merged + [item for item_id, item in parent_items.items() if item_id not in known]


def _bare(item: CatalogItem) -> bool:
    return not (item.category or item.brand or item.tags or item.price)


def item_docs(index: IndexSnapshot, catalogue: dict[str, CatalogItem], version: str,
              indexed_at: int) -> Iterator[ItemDoc]:
    """One :class:`ItemDoc` per row of the index snapshot (content vectors dense, as in Firestore)."""
    ids = index.item_ids.tolist()
    for start in range(0, len(ids), _DENSE_CHUNK):
        content = index.content.rows(np.arange(start, min(start + _DENSE_CHUNK, len(ids))))
        for row, cvec in enumerate(content.tolist(), start):
            item_id = str(ids[row])
            item = catalogue.get(item_id) or CatalogItem(
                item_id=item_id, title="", category=str(index.categories[row]), brand="", price=0.0,
                tags=(), in_stock=bool(index.in_stock[row]), updated_at=0)
            yield ItemDoc(item=item, embedding=tuple(float(x) for x in index.embeddings[row]),
                          content_vector=tuple(cvec), model_version=version,
                          popularity=float(index.popularity[row]), indexed_at=indexed_at)


def _chunks(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for v in values:
        chunk.append(v)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be in [1, {MAX_BATCH}], got {batch_size}")


def write_items(client: Any, docs: Iterable[ItemDoc], batch_size: int = MAX_BATCH) -> int:
    """Write item documents in batches of at most ``batch_size`` (<= 500); returns the count."""
    _check_batch_size(batch_size)
    items = client.collection(names.ITEMS)
    n = 0
    for chunk in _chunks(docs, batch_size):
        batch = client.batch()
        for doc in chunk:
            batch.set(items.document(doc.item_id), doc.to_document())
        batch.commit(retry=COMMIT_RETRY)
        n += len(chunk)
    return n


def publish_version(artifact_path: str | Path, artifact_uri: str | None = None,
                    project: str | None = None, client: Any = None, publish_users: bool = False,
                    batch_size: int = MAX_BATCH) -> ModelDoc:
    """Publish the artefact at ``artifact_path`` (local directory) and switch ``models/current``.

    Args:
        artifact_path: the version directory.
        artifact_uri: where readers find the artefact (``gs://...``); defaults to the local path.
        project: Google Cloud project (default from the environment).
        client: a ``google.cloud.firestore.Client`` (created if ``None``).
        publish_users: re-embed the users already in Firestore with the new query tower.
        batch_size: writes per batch (at most 500).

    Raises:
        PublishError: a write failed; ``models/current`` still points at the previous version.
    """
    _check_batch_size(batch_size)
    path = Path(artifact_path)
    meta = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
    version = meta["version"]
    uri = artifact_uri or str(path.resolve())
    index = IndexSnapshot.load(path / INDEX_FILE)
    if client is None:
        from google.cloud import firestore

        client = firestore.Client(project=project)
    models = client.collection(names.MODELS)
    doc = ModelDoc(version=version, status="publishing", created_at=int(meta["created_at"]),
                   artifact_uri=uri, index_uri=f"{uri.rstrip('/')}/{INDEX_FILE}", dim=int(meta["dim"]),
                   item_count=len(index.item_ids), params=dict(meta.get("params") or {}),
                   metrics=_firestore_safe(meta.get("metrics") or {}),
                   parent_version=meta.get("parent_version"),
                   serving_defaults=index.serving_defaults or meta.get("serving_defaults"))
    try:
        models.document(version).set(doc.to_document(), retry=COMMIT_RETRY)
        n = write_items(client, item_docs(index, read_catalogue(path), version, now_ms()), batch_size)
        models.document(version).update({"status": "ready"}, retry=COMMIT_RETRY)
        current = CurrentModelDoc(version=version, artifact_uri=uri, index_uri=doc.index_uri,
                                  switched_at=now_ms(), serving_defaults=doc.serving_defaults)
        models.document(names.CURRENT_MODEL_DOC).set(current.to_document(), retry=COMMIT_RETRY)
    except gexc.GoogleAPIError as e:
        raise PublishError(f"publishing {version} failed, models/current not switched: {e}") from e
    log.info("published %s: %d items, models/current switched", version, n)
    if publish_users:
        refresh_users(client, path, version, batch_size)
    return ModelDoc(**{**doc.__dict__, "status": "ready"})


def refresh_users(client: Any, artifact_path: Path, version: str, batch_size: int = MAX_BATCH) -> int:
    """Recompute ``embedding`` + ``model_version`` of every user document from its stored history."""
    from pipelines.training.artifact import load_towers

    towers = load_towers(artifact_path)
    users = client.collection(names.USERS)
    n = 0
    for chunk in _chunks(users.stream(), batch_size):
        docs = [UserDoc.from_document(s.to_dict()) for s in chunk]
        emb = towers.embed_users([d.user_id for d in docs],
                                 [[h.item_id for h in d.history] for d in docs])
        batch = client.batch()
        for d, vec in zip(docs, emb):
            batch.set(users.document(d.user_id),
                      {"embedding": _vector(vec.tolist()), "model_version": version}, merge=True)
        batch.commit(retry=COMMIT_RETRY)
        n += len(docs)
    log.info("re-embedded %d users with %s", n, version)
    return n


def _vector(values: Sequence[float]) -> Any:
    from google.cloud.firestore_v1.vector import Vector

    return Vector([float(v) for v in values])


def _firestore_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as plain JSON values (numpy scalars become floats)."""
    return json.loads(json.dumps(metrics, default=float))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Publish a model version to Firestore.")
    parser.add_argument("artifact", help="local version directory")
    parser.add_argument("--uri", default=None, help="artefact URI readers should use (e.g. gs://...)")
    parser.add_argument("--project", default=None)
    parser.add_argument("--users", action="store_true", help="also re-embed existing users")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        publish_version(args.artifact, artifact_uri=args.uri, project=args.project,
                        publish_users=args.users)
    except (PublishError, OSError, KeyError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
