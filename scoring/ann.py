"""The compiled approximate index: faiss IVF with 4-bit PQ fast-scan codes, built by the training job.

The training job (``pipelines.training.artifact``) writes it next to ``item_index.npz``::

    item_ann.faiss   faiss.write_index of an IVF-PQ fast-scan index (``IVF<nlist>,PQ<D/2>x4fs``)
                     over the snapshot's rows (id = row)
    item_ann.json    backend, metric, faiss version, model version, rows, dim, nlist, nprobe, build time

and the recommend function loads it with the snapshot (:func:`read_index`): it is never built at
cold start. It is versioned with the model (``version`` and ``rows`` must match the snapshot, or
the function serves the exact scan and logs why).

Metric: unit-norm embeddings (the towers' default) are indexed by L2 distance, whose order on unit
vectors is the inner product's; faiss then assigns rows to and probes partitions by distance to
their centroids, where the inner-product coarse quantizer favours long centroids (tight clusters).
On the 1M bench catalogue, where 90 % of the items are content-only and cluster tightly, that cost
the trained items' partitions (``docs/benchmarks.md``). Other embeddings keep the inner product.
``nprobe``: :func:`default_nprobe` of the index's partitions, written by the training job.

Search (:meth:`FaissIvf.candidates`): faiss probes the ``nprobe`` partitions with the best centroid
scores and returns the best ``depth`` rows among them by their 4-bit PQ codes (SIMD fast-scan: 16
bytes a row at dim 64, against 256 for flat float32); rows added or re-embedded since the snapshot
are an exact *tail* scored on every query (the faiss index itself is never mutated, so index
versions can share it); every candidate is re-scored with the same numpy dot product as the exact
scan, so ties and scores are the exact scan's. Filters and the fallback to the exact scan when
filters leave fewer than ``pool`` candidates are :func:`scoring.ranking.retrieve`'s, as for the
numpy IVF.

Why faiss, and why PQ fast-scan (``docs/benchmarks.md``, bench-serving): faiss ``IVF,Flat`` was
slower than the numpy IVF on this catalogue (one heap insert per scanned row); PQ fast-scan plus the
exact re-scoring of ``depth`` rows has the same recall@10 at about half the numpy IVF's CPU. ScaNN
was faster still, but ``import scann`` imports TensorFlow whenever it is installed (the training
job's environment), where its TF ops fail to load with TF 2.21 and take ``tensorflow_recommenders``'
import down with them; it also needs relative-path serialisation.

faiss is imported lazily, so ``scoring`` imports without it (the exact scan needs nothing compiled).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ANN_FILE = "item_ann.faiss"
ANN_META_FILE = "item_ann.json"
BACKEND = "faiss"
DEFAULT_NPROBE = 24


class AnnUnavailable(RuntimeError):
    """The compiled index cannot be used (library missing, file missing, or of another version)."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise AnnUnavailable("faiss is not installed (pip install faiss-cpu)") from e
    return faiss


def _serving_faiss() -> Any:
    """faiss for serving: one thread (one request per thread; faiss's own threads would only compete)."""
    faiss = _faiss()
    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)
    return faiss


def default_nprobe(nlist: int) -> int:
    """Partitions probed: 24, or 2 % of them for larger indexes (CF recall@10 ~0.95 at 1M, bench-serving)."""
    return max(DEFAULT_NPROBE, int(round(nlist / 50)))


def unit_norm(embeddings: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Every non-zero row has length 1 (within ``tolerance``): L2 order = inner-product order."""
    sq = np.einsum("ij,ij->i", embeddings, embeddings)
    live = sq[sq > 0]
    return bool(live.size) and bool(np.all(np.abs(np.sqrt(live) - 1.0) <= tolerance))


def default_nlist(n: int) -> int:
    """Partitions for ``n`` rows: about sqrt(n) up to 100k, 2 sqrt(n) beyond (bench-serving)."""
    root = float(np.sqrt(max(n, 1)))
    return max(1, int(round(root if n <= 200_000 else 2 * root)))


@dataclass(frozen=True)
class FaissIvf:
    """A faiss IVF index over rows ``[0, base_rows)`` plus an exact tail (rows added since)."""

    index: Any  # faiss.IndexIVFFlat, ids = rows; shared, never mutated after load
    nprobe: int
    base_rows: int
    tail: np.ndarray  # int64 rows always scored exactly (added, re-embedded or all-zero rows)
    stale: np.ndarray | None = None  # bool [base_rows]: indexed vector outdated (row is in the tail)
    embeddings: np.ndarray | None = None  # float32 [N, D] the current vectors (exact re-scoring)
    depth: int = 256  # rows asked of faiss when the caller gives no depth
    meta: dict | None = None

    @property
    def nlist(self) -> int:
        return nlist_of(self.index)

    @classmethod
    def from_index(cls, index: Any, embeddings: np.ndarray, norms: np.ndarray, nprobe: int,
                   meta: dict | None = None) -> FaissIvf:
        """Wrap a loaded or built index over the first ``index.ntotal``-ish rows of ``embeddings``."""
        base = int(meta["rows"]) if meta and "rows" in meta else embeddings.shape[0]
        ivf = _ivf(index)
        ivf.nprobe = max(1, min(int(nprobe), int(ivf.nlist)))
        zero = np.flatnonzero(norms[:base] <= 0)
        tail = np.concatenate([zero, np.arange(base, embeddings.shape[0])]).astype(np.int64)
        return cls(index=index, nprobe=int(ivf.nprobe), base_rows=base, tail=tail,
                   embeddings=embeddings, meta=meta)

    def updated(self, embeddings: np.ndarray, norms: np.ndarray, changed: np.ndarray) -> FaissIvf:
        """The index over ``embeddings`` after rows ``changed`` were updated or appended.

        The faiss index stays as loaded; changed snapshot rows are marked stale and, with every
        row appended since the snapshot, scored exactly (the tail).
        """
        stale = self.stale.copy() if self.stale is not None else np.zeros(self.base_rows, dtype=bool)
        changed = np.asarray(changed, dtype=np.int64)
        stale[changed[changed < self.base_rows]] = True
        in_base = np.flatnonzero(stale | (norms[:self.base_rows] <= 0))
        tail = np.concatenate([in_base, np.arange(self.base_rows, embeddings.shape[0])]).astype(np.int64)
        return replace(self, tail=tail, stale=stale if stale.any() else None, embeddings=embeddings)

    def candidates(self, query: np.ndarray, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``depth`` rows of the probed partitions plus the tail, with exact dot products."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        _, ids = self.index.search(q, int(depth or self.depth))
        rows = ids[0]
        rows = rows[rows >= 0]
        if self.stale is not None:
            rows = rows[~self.stale[rows]]
        if self.tail.size:
            rows = np.concatenate([rows, self.tail])
        emb = self.embeddings
        return rows, (emb[rows] @ q[0] if emb is not None else np.empty(0, np.float32))


def _ivf(index: Any) -> Any:
    return _faiss().extract_index_ivf(index)


def nlist_of(index: Any) -> int:
    """Partitions of a faiss IVF index."""
    return int(_ivf(index).nlist)


def factory_string(dim: int, nlist: int) -> str:
    """``IVF<nlist>,PQ<dim/2>x4fs`` (2 dimensions per 4-bit code); ``IVF<nlist>,Flat`` for odd dims."""
    return f"IVF{nlist},PQ{dim // 2}x4fs" if dim % 2 == 0 and dim >= 4 else f"IVF{nlist},Flat"


# Catalogues smaller than this get no ANN index: the exact scan is as cheap there, and the 4-bit PQ
# codes need at least 16 training rows per sub-quantiser (faiss raises on fewer).
MIN_INDEX_ROWS = 1000


def build_index(embeddings: np.ndarray, nlist: int = 0, seed: int = 0) -> Any:
    """A trained and filled faiss IVF index over the non-zero rows, ids = rows (L2 on unit vectors)."""
    faiss = _faiss()
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    live = np.flatnonzero(np.einsum("ij,ij->i", emb, emb) > 0)
    nlist = max(1, min(nlist or default_nlist(emb.shape[0]), max(1, live.size)))
    metric = faiss.METRIC_L2 if unit_norm(emb) else faiss.METRIC_INNER_PRODUCT
    index = faiss.index_factory(emb.shape[1], factory_string(emb.shape[1], nlist), metric)
    _ivf(index).cp.seed = seed
    if live.size:
        index.train(emb[live])
        index.add_with_ids(emb[live], live.astype(np.int64))
    return index


def write_index(out_dir: str | Path, embeddings: np.ndarray, version: str, nlist: int = 0,
                nprobe: int = 0, seed: int = 0) -> Path:
    """Build the index of a snapshot's embeddings and write it next to ``item_index.npz``."""
    faiss = _faiss()
    t = time.perf_counter()
    index = build_index(embeddings, nlist, seed)
    out = Path(out_dir)
    faiss.write_index(index, str(out / ANN_FILE))
    nlist = nlist_of(index)
    meta = {"backend": BACKEND, "type": factory_string(embeddings.shape[1], nlist),
            "metric": "l2" if index.metric_type == faiss.METRIC_L2 else "inner_product",
            "faiss_version": faiss.__version__, "version": version,
            "rows": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]),
            "nlist": nlist, "nprobe": int(nprobe or default_nprobe(nlist)),
            "build_s": round(time.perf_counter() - t, 3)}
    (out / ANN_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return out / ANN_FILE


def check_meta(meta: dict, version: str | None, rows: int, dim: int) -> None:
    """Raise :class:`AnnUnavailable` unless ``meta`` describes an index of this snapshot."""
    if meta.get("backend") != BACKEND:
        raise AnnUnavailable(f"ANN index backend {meta.get('backend')!r} is not {BACKEND!r}")
    if version is not None and meta.get("version") != version:
        raise AnnUnavailable(f"ANN index of version {meta.get('version')} next to snapshot {version}")
    if int(meta.get("rows", -1)) != rows or int(meta.get("dim", -1)) != dim:
        raise AnnUnavailable(f"ANN index of {meta.get('rows')} x {meta.get('dim')} rows for a "
                             f"snapshot of {rows} x {dim}")


def index_from_bytes(index_data: bytes, meta: dict, embeddings: np.ndarray, norms: np.ndarray,
                     version: str | None, nprobe: int | None = None) -> FaissIvf:
    """The served index from the two files' contents (e.g. downloaded from GCS)."""
    faiss = _serving_faiss()
    check_meta(meta, version, embeddings.shape[0], embeddings.shape[1])
    index = faiss.deserialize_index(np.frombuffer(index_data, dtype=np.uint8))
    return FaissIvf.from_index(index, embeddings, norms, nprobe or int(meta.get("nprobe", DEFAULT_NPROBE)),
                               meta)


def read_index(directory: str | Path, embeddings: np.ndarray, norms: np.ndarray, version: str | None,
               nprobe: int | None = None) -> FaissIvf:
    """The served index from a local artefact directory; :class:`AnnUnavailable` if unusable."""
    faiss = _serving_faiss()
    d = Path(directory)
    try:
        meta = json.loads((d / ANN_META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AnnUnavailable(f"no usable {ANN_META_FILE} in {d}: {e}") from e
    check_meta(meta, version, embeddings.shape[0], embeddings.shape[1])
    try:
        index = faiss.read_index(str(d / ANN_FILE))
    except RuntimeError as e:  # faiss raises RuntimeError for unreadable files
        raise AnnUnavailable(f"cannot read {d / ANN_FILE}: {e}") from e
    return FaissIvf.from_index(index, embeddings, norms, nprobe or int(meta.get("nprobe", DEFAULT_NPROBE)),
                               meta)
