"""The in-memory item index: a model version's snapshot plus items added since.

An :class:`ItemIndex` is immutable once built; updates build a new one (copy on write)
and the service swaps the reference, so a request always sees one consistent index.
Embeddings are C-contiguous float32 with precomputed norms; content vectors are sparse rows
(:class:`schemas.content.SparseRows`, ~a dozen non-zeros per row); categories are int codes so
a category filter is one ``np.isin`` over ints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas import uris
from schemas.content import SparseRows
from schemas.firestore import ItemDoc
from schemas.index_snapshot import IndexSnapshot
from scoring import ann
from scoring.ivf import IvfIndex
from scoring.rank import ScoringDefaults, build_ivf, category_codes, known_rows, row_norms
from scoring.ranking import l2_normalize


class SnapshotLoadError(RuntimeError):
    """The item-index snapshot could not be read."""


def read_snapshot(uri: str) -> IndexSnapshot:
    """Load an ``item_index.npz`` from a local path, ``file://`` or ``gs://`` URI."""
    try:
        if uris.is_gcs(uri):
            from google.api_core.exceptions import GoogleAPIError
            from google.cloud import storage  # imported only when needed: keeps cold start short

            bucket, blob = uris.split_gcs(uri)
            try:
                data = storage.Client().bucket(bucket).blob(blob).download_as_bytes(timeout=60)
            except GoogleAPIError as e:
                raise SnapshotLoadError(f"cannot download {uri}: {e}") from e
            return IndexSnapshot.from_bytes(data)
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return IndexSnapshot.load(Path(path))
    except (OSError, ValueError, KeyError) as e:
        raise SnapshotLoadError(f"cannot read the index snapshot {uri}: {e}") from e


def read_ann(index_uri: str, embeddings: np.ndarray, norms: np.ndarray, version: str | None,
             nprobe: int | None = None) -> ann.FaissIvf:
    """The training job's compiled index next to the snapshot at ``index_uri`` (local path or ``gs://``).

    Raises :class:`scoring.ann.AnnUnavailable` when it is missing or of another snapshot.
    """
    if uris.is_gcs(index_uri):
        from google.api_core.exceptions import GoogleAPIError
        from google.cloud import storage

        bucket_name, blob = uris.split_gcs(index_uri)
        prefix = blob.rsplit("/", 1)[0] + "/" if "/" in blob else ""
        bucket = storage.Client().bucket(bucket_name)
        try:
            meta = json.loads(bucket.blob(prefix + ann.ANN_META_FILE).download_as_bytes(timeout=60))
            data = bucket.blob(prefix + ann.ANN_FILE).download_as_bytes(timeout=60)
        except (GoogleAPIError, ValueError) as e:
            raise ann.AnnUnavailable(f"cannot download the ANN index next to {index_uri}: {e}") from e
        return ann.index_from_bytes(data, meta, embeddings, norms, version, nprobe)
    path = Path(index_uri[len("file://"):] if index_uri.startswith("file://") else index_uri)
    return ann.read_index(path.parent, embeddings, norms, version, nprobe)


@dataclass(frozen=True)
class ItemIndex:
    """Row ``i`` of every array describes ``item_ids[i]``."""

    version: str
    created_at: int  # snapshot creation, epoch ms
    item_ids: np.ndarray
    embeddings: np.ndarray  # float32 [N, D], C-contiguous
    norms: np.ndarray  # float32 [N]
    content: SparseRows  # [N, C], L2-normalised rows
    content_norms: np.ndarray  # float32 [N] (1 or 0)
    categories: np.ndarray
    category_codes: np.ndarray  # int32 [N]
    category_lookup: dict[str, int]
    in_stock: np.ndarray
    out_of_stock: np.ndarray
    popularity: np.ndarray
    popular_order: np.ndarray  # rows by popularity, best first
    row_of: dict[str, int]
    loaded_at: float = field(default_factory=time.time)
    updated_through: int = 0  # largest items.indexed_at applied, epoch ms
    added: int = 0  # items appended after the snapshot
    ivf: IvfIndex | ann.FaissIvf | None = None  # approximate retrieval: numpy or faiss IVF (None: exact)
    defaults: ScoringDefaults | None = None  # the model version's measured alpha / pool

    @property
    def size(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def content_dim(self) -> int:
        return self.content.dim

    @classmethod
    def build(cls, version: str, created_at: int, item_ids: np.ndarray, embeddings: np.ndarray,
              content: SparseRows | np.ndarray, categories: np.ndarray, in_stock: np.ndarray,
              popularity: np.ndarray, updated_through: int, added: int = 0,
              content_normalized: bool = False, defaults: ScoringDefaults | None = None) -> ItemIndex:
        """Derive the lookup structures from the raw arrays.

        ``content_normalized``: the content rows are already L2-normalised (the snapshot
        contract), so the 100k-row normalisation is skipped at cold start.
        """
        item_ids = np.asarray(item_ids).astype(str)
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if not isinstance(content, SparseRows):
            content = SparseRows.from_dense(np.asarray(content, dtype=np.float32))
        if not content_normalized:
            content = content.l2_normalized()
        content.pad()  # fixed-width rows for the per-request CB math (skipped if a row is too wide)
        in_stock = np.asarray(in_stock, dtype=bool)
        popularity = np.asarray(popularity, dtype=np.float32)
        lookup, codes = category_codes(categories)
        return cls(version=version, created_at=int(created_at), item_ids=item_ids, embeddings=emb,
                   norms=row_norms(emb), content=content, content_norms=content.norms,
                   categories=np.asarray(categories).astype(str), category_codes=codes,
                   category_lookup=lookup, in_stock=in_stock, out_of_stock=~in_stock,
                   popularity=popularity,
                   popular_order=np.argsort(-popularity, kind="stable"),
                   row_of=dict(zip(item_ids.tolist(), range(item_ids.shape[0]))),
                   updated_through=int(updated_through), added=added, defaults=defaults)

    @classmethod
    def from_snapshot(cls, snap: IndexSnapshot, items_from: int | None = None) -> ItemIndex:
        """The index of a snapshot; ``items`` are polled from ``items_from`` (default: its creation)."""
        return cls.build(snap.version, snap.created_at, snap.item_ids, snap.embeddings,
                         snap.content, snap.categories, snap.in_stock, snap.popularity,
                         updated_through=max(snap.created_at, items_from or 0),
                         content_normalized=True, defaults=ScoringDefaults.from_dict(snap.serving_defaults))

    def with_ivf(self, nlist: int, nprobe: int, seed: int = 0) -> ItemIndex:
        """This index with an IVF partitioning of its embeddings (``nlist`` 0: the default)."""
        return dataclasses.replace(self, ivf=build_ivf(self.embeddings, self.norms, nlist, nprobe, seed=seed))

    def with_ann(self, index_uri: str, version: str | None, nprobe: int | None = None) -> ItemIndex:
        """This index with the training job's faiss index of its snapshot (loaded, never built here)."""
        found = read_ann(index_uri, self.embeddings, self.norms, version, nprobe)
        return dataclasses.replace(self, ivf=found)

    @property
    def retrieval(self) -> str:
        """``faiss``, ``ivf`` or ``exact``: what requests retrieve with."""
        if isinstance(self.ivf, ann.FaissIvf):
            return "faiss"
        return "ivf" if self.ivf is not None else "exact"

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of the known ids among ``item_ids`` (unknown ids are skipped), in order, no duplicates."""
        return known_rows(self.row_of, item_ids)

    def category_codes_for(self, categories: Sequence[str]) -> np.ndarray:
        """Codes of the requested categories; unknown names match nothing."""
        return np.array([self.category_lookup[c] for c in categories if c in self.category_lookup],
                        dtype=np.int32)

    def with_items(self, docs: Sequence[ItemDoc]) -> ItemIndex:
        """A new index with ``docs`` applied: known ids updated, new ids appended.

        An embedding is taken only when the document's ``model_version`` is this index's
        version and its length matches (otherwise it lives in another space): a known item
        keeps its embedding, a new one gets zeros and is reachable by content only.
        """
        if not docs:
            return self
        emb = self.embeddings  # copied only when a known item's embedding changes
        content_updates: dict[int, np.ndarray] = {}  # row -> new content vector (known items)
        cats, stock, pop = self.categories.tolist(), self.in_stock.copy(), self.popularity.copy()
        ids = self.item_ids.tolist()
        changed: list[int] = []  # rows whose embedding changed (for the IVF partitions)
        new_rows: dict[str, int] = {}
        new_emb, new_content, new_stock, new_pop = [], [], [], []
        through = self.updated_through
        for doc in docs:
            through = max(through, doc.indexed_at)
            vec = (np.asarray(doc.embedding, dtype=np.float32)
                   if doc.embedding is not None and doc.model_version == self.version
                   and len(doc.embedding) == self.dim else None)
            cvec = (l2_normalize(np.asarray(doc.content_vector, dtype=np.float32))
                    if doc.content_vector is not None and len(doc.content_vector) == self.content_dim
                    else None)
            row = self.row_of.get(doc.item_id, new_rows.get(doc.item_id))
            if row is not None and row < self.size:
                if vec is not None:
                    if emb is self.embeddings:
                        emb = emb.copy()
                    emb[row] = vec
                    changed.append(row)
                if cvec is not None:
                    content_updates[row] = cvec
                cats[row] = doc.item.category
                stock[row] = doc.item.in_stock
                pop[row] = doc.popularity
                continue
            if row is not None:  # appended earlier in this same batch
                j = row - self.size
            else:
                j = len(new_emb)
                new_rows[doc.item_id] = self.size + j
                ids.append(doc.item_id)
                cats.append(doc.item.category)
                new_emb.append(np.zeros(self.dim, dtype=np.float32))
                new_content.append(np.zeros(self.content_dim, dtype=np.float32))
                new_stock.append(True)
                new_pop.append(0.0)
            if vec is not None:
                new_emb[j] = vec
            if cvec is not None:
                new_content[j] = cvec
            cats[self.size + j] = doc.item.category
            new_stock[j] = doc.item.in_stock
            new_pop[j] = doc.popularity
        content = self.content
        if content_updates:  # rows whose vector really changed (stock updates carry the same one)
            rows = np.fromiter(content_updates, dtype=np.int64, count=len(content_updates))
            vecs = np.stack(list(content_updates.values()))
            differ = np.any(content.rows(rows) != vecs, axis=1)
            if differ.any():
                content = content.with_rows(rows[differ], vecs[differ])
        if new_emb:
            emb = np.vstack([emb, np.stack(new_emb)])
            content = content.append(np.stack(new_content))
            stock = np.concatenate([stock, np.array(new_stock, dtype=bool)])
            pop = np.concatenate([pop, np.array(new_pop, dtype=np.float32)])
        out = ItemIndex.build(self.version, self.created_at, np.array(ids), emb, content,
                              np.array(cats), stock, pop, updated_through=through,
                              added=self.added + len(new_emb), content_normalized=True,
                              defaults=self.defaults)
        if self.ivf is None:
            return out
        # new rows and rows with a new embedding: nearest partition (numpy IVF) or exact tail (faiss)
        moved = np.concatenate([np.array(changed, dtype=np.int64),
                                np.arange(self.size, out.size, dtype=np.int64)])
        return dataclasses.replace(out, ivf=self.ivf.updated(out.embeddings, out.norms, moved))
