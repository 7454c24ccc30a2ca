"""Content-feature encoder usable without TensorFlow, and the sparse rows that hold its output.

Turns a catalogue item's attributes (category, brand, price bucket, tags) into a
fixed-length, L2-normalised float32 vector. The training job fits it on the
catalogue and saves it as JSON in the model artefact; the pipeline (new items)
and the recommend function (content-based score) load that JSON. Unknown values
map to nothing in their block, so a new brand does not break an old encoder.

A vector has at most ``3 + max tags`` non-zeros out of hundreds of columns, so a catalogue's
vectors are held as :class:`SparseRows` (CSR, numpy only: cheap to import in the function).
"""


from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas.catalog import CatalogItem

# Relative weight of each block before normalisation: category is the strongest signal.
DEFAULT_WEIGHTS = {"category": 1.0, "brand": 0.7, "price": 0.3, "tags": 0.5}


@dataclass
class ContentEncoder:
    """Vocabulary-based multi-hot encoder with block weights."""

    categories: list[str]
    brands: list[str]
    tags: list[str]
    price_edges: list[float]
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self) -> None:
        self._cat = {v: i for i, v in enumerate(self.categories)}
        self._brand = {v: i for i, v in enumerate(self.brands)}
        self._tag = {v: i for i, v in enumerate(self.tags)}
        n_cat, n_brand, n_price = len(self.categories), len(self.brands), len(self.price_edges) + 1
        self._offsets = {"category": 0, "brand": n_cat, "price": n_cat + n_brand,
                         "tags": n_cat + n_brand + n_price}
        self.dim = n_cat + n_brand + n_price + len(self.tags)

    @classmethod
    def fit(cls, items: Iterable[CatalogItem], max_brands: int = 2000, max_tags: int = 2000,
            price_buckets: int = 8) -> ContentEncoder:
        """Fit the vocabularies (most frequent first) and price quantile edges."""
        items = list(items)
        cats = Counter(i.category for i in items if i.category)
        brands = Counter(i.brand for i in items if i.brand)
        tags = Counter(t for i in items for t in set(i.tags) if t)
        prices = np.array([i.price for i in items], dtype=np.float64)
        edges: list[float] = []
        if len(prices) and price_buckets > 1:
            qs = np.quantile(prices, np.linspace(0, 1, price_buckets + 1)[1:-1])
            edges = sorted(set(float(q) for q in qs))
        return cls(categories=sorted(cats, key=lambda k: (-cats[k], k)),
                   brands=[b for b, _ in sorted(brands.items(), key=lambda kv: (-kv[1], kv[0]))][:max_brands],
                   tags=[t for t, _ in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))][:max_tags],
                   price_edges=edges)

    def price_bucket(self, price: float) -> int:
        return int(np.searchsorted(np.asarray(self.price_edges), price, side="right"))

    def encode(self, item: CatalogItem) -> np.ndarray:
        """One item's L2-normalised content vector (all zeros if nothing is known)."""
        return self.encode_many([item])[0]

    def encode_many(self, items: Sequence[CatalogItem]) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        w = self.weights
        for row, item in enumerate(items):
            if (c := self._cat.get(item.category)) is not None:
                out[row, self._offsets["category"] + c] = w["category"]
            if (b := self._brand.get(item.brand)) is not None:
                out[row, self._offsets["brand"] + b] = w["brand"]
            out[row, self._offsets["price"] + self.price_bucket(item.price)] = w["price"]
            known = [self._tag[t] for t in set(item.tags) if t in self._tag]
            if known:
                out[row, [self._offsets["tags"] + t for t in known]] = w["tags"] / np.sqrt(len(known))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def encode_sparse(self, items: Sequence[CatalogItem], chunk: int = 4096) -> SparseRows:
        """:meth:`encode_many` as :class:`SparseRows`, never holding more than ``chunk`` dense rows."""
        parts = [SparseRows.from_dense(self.encode_many(items[s:s + chunk]))
                 for s in range(0, len(items), chunk)]
        return SparseRows.concat(parts, self.dim)

    def to_json(self) -> str:
        return json.dumps({"categories": self.categories, "brands": self.brands, "tags": self.tags,
                           "price_edges": self.price_edges, "weights": self.weights})

    @classmethod
    def from_json(cls, text: str) -> ContentEncoder:
        d: Mapping = json.loads(text)
        return cls(categories=list(d["categories"]), brands=list(d["brands"]),
                   tags=list(d["tags"]), price_edges=[float(x) for x in d["price_edges"]],
                   weights=dict(d.get("weights") or DEFAULT_WEIGHTS))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ContentEncoder:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


class SparseRows:
    """Rows of a sparse float32 matrix in CSR form (``indptr``, ``indices``, ``data``, ``dim``).

    Row ``i`` holds ``data[indptr[i]:indptr[i+1]]`` at columns ``indices[indptr[i]:indptr[i+1]]``
    (no duplicate columns in a row). Immutable by convention: updates return a new object.

    :meth:`pad` adds a fixed-width copy (every row's entries padded with zeros to the widest
    row) that :meth:`rows_dot` and :meth:`rows_mean` then use: a few fancy-indexing calls per
    request instead of expanding CSR ranges, for catalogues whose rows hold a handful of entries.
    """

    __slots__ = ("indptr", "indices", "data", "dim", "_norms", "_padded")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, dim: int) -> None:
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.dim = int(dim)
        self._norms: np.ndarray | None = None
        self._padded: tuple[np.ndarray, np.ndarray] | None = None
        if self.indptr.ndim != 1 or self.indptr.shape[0] < 1 or self.indptr[0] != 0:
            raise ValueError("sparse rows: indptr must be 1-D and start at 0")
        nnz = int(self.indptr[-1])
        if self.indices.shape != (nnz,) or self.data.shape != (nnz,):
            raise ValueError(f"sparse rows: indptr ends at {nnz}, indices has {self.indices.shape[0]} "
                             f"and data {self.data.shape[0]} entries")
        if nnz and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.dim):
            raise ValueError(f"sparse rows: a column index is outside [0, {self.dim})")

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, dim: int, n: int = 0) -> SparseRows:
        """``n`` all-zero rows of width ``dim``."""
        return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), dim)

    @classmethod
    def from_dense(cls, x: np.ndarray) -> SparseRows:
        """The non-zeros of a dense ``[N, C]`` array."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"sparse rows: expected a 2-D array, got shape {x.shape}")
        rows, cols = np.nonzero(x)
        indptr = np.zeros(x.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=x.shape[0]), out=indptr[1:])
        return cls(indptr, cols, x[rows, cols], x.shape[1])

    @classmethod
    def concat(cls, parts: Sequence[SparseRows], dim: int) -> SparseRows:
        """The rows of ``parts`` one after the other (all of width ``dim``)."""
        if any(p.dim != dim for p in parts):
            raise ValueError(f"sparse rows: cannot concatenate rows of another width than {dim}")
        if not parts:
            return cls.empty(dim)
        offsets = np.cumsum([0] + [int(p.indptr[-1]) for p in parts[:-1]])
        indptr = np.concatenate([np.zeros(1, np.int64)]
                                + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
        return cls(indptr, np.concatenate([p.indices for p in parts]),
                   np.concatenate([p.data for p in parts]), dim)

    def to_dense(self) -> np.ndarray:
        """The ``[N, C]`` float32 array (for tests and small exports)."""
        return self.rows(np.arange(len(self)))

    # ---------------------------------------------------------------- shape
    def __len__(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)

    # ---------------------------------------------------------------- math
    @property
    def norms(self) -> np.ndarray:
        """L2 norm of every row, float32 ``[N]`` (computed once)."""
        if self._norms is None:
            self._norms = np.sqrt(self._row_sums(self.data * self.data)).astype(np.float32)
        return self._norms

    def _row_sums(self, values: np.ndarray) -> np.ndarray:
        """Per-row sums of ``values`` (one per stored entry): ``[N]`` float32."""
        out = np.zeros(len(self), dtype=np.float32)
        if values.shape[0]:
            starts = self.indptr[:-1]
            nonempty = starts < self.indptr[1:]
            # segments between consecutive non-empty starts are exactly those rows' entries
            out[nonempty] = np.add.reduceat(values, starts[nonempty])
        return out

    def dot(self, vec: np.ndarray) -> np.ndarray:
        """``dense @ vec`` for a ``[C]`` vector: ``[N]`` float32."""
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim:
            raise ValueError(f"sparse rows: vector of length {vec.shape[0]}, rows have {self.dim} columns")
        return self._row_sums(self.data * vec[self.indices])

    def _entries(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For rows ``idx``: (position in ``idx`` of each entry, entry positions in data)."""
        starts, ends = self.indptr[idx], self.indptr[idx + 1]
        lens = ends - starts
        total = int(lens.sum())
        which = np.repeat(np.arange(idx.shape[0]), lens)
        first = np.cumsum(lens) - lens
        pos = np.arange(total, dtype=np.int64) - np.repeat(first - starts, lens)
        return which, pos

    def rows(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows ``idx`` as a dense float32 ``[len(idx), C]`` array."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"sparse rows: row index out of range for {len(self)} rows")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = np.zeros((idx.shape[0], self.dim), dtype=np.float32)
        which, pos = self._entries(idx)
        out[which, self.indices[pos]] = self.data[pos]
        return out

    def pad(self, max_width: int = 64) -> bool:
        """Build the fixed-width copy if no row has more than ``max_width`` entries; True if built.

        ``[N, W]`` column indices and values (W the widest row, padding: column 0, value 0.0, which
        adds nothing to a dot product or a sum). Costs ``N * W * 8`` bytes.
        """
        if self._padded is None:
            lengths = np.diff(self.indptr)
            width = int(lengths.max(initial=0))
            if width > max_width:
                return False
            width = max(width, 1)
            slot = np.arange(self.nnz, dtype=np.int64) - np.repeat(self.indptr[:-1], lengths)
            row = np.repeat(np.arange(len(self)), lengths)
            cols = np.zeros((len(self), width), dtype=np.int32)
            vals = np.zeros((len(self), width), dtype=np.float32)
            cols[row, slot], vals[row, slot] = self.indices, self.data
            self._padded = (cols, vals)
        return True

    def rows_dot(self, idx: np.ndarray | Sequence[int], vec: np.ndarray) -> np.ndarray:
        """``rows(idx) @ vec`` as float32 ``[len(idx)]``, touching only those rows' stored entries."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        vec = np.asarray(vec, dtype=np.float32)
        if self._padded is not None:
            cols, vals = self._padded  # take(): ~2x faster than fancy indexing for row gathers
            return np.einsum("ij,ij->i", vals.take(idx, axis=0), vec.take(cols.take(idx, axis=0)))
        which, pos = self._entries(idx)
        products = self.data[pos] * vec[self.indices[pos]]
        return np.bincount(which, weights=products, minlength=idx.shape[0]).astype(np.float32)

    def rows_mean(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """``rows(idx).mean(axis=0)`` as float32 ``[C]`` (``idx`` non-empty), without dense rows."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if self._padded is not None:
            cols, vals = self._padded
            sums = np.bincount(cols.take(idx, axis=0).ravel(), weights=vals.take(idx, axis=0).ravel(),
                               minlength=self.dim)
            return (sums / idx.shape[0]).astype(np.float32)
        _, pos = self._entries(idx)
        sums = np.bincount(self.indices[pos], weights=self.data[pos], minlength=self.dim)
        return (sums / idx.shape[0]).astype(np.float32)

    def l2_normalized(self) -> SparseRows:
        """These rows scaled to unit L2 norm (all-zero rows stay zero)."""
        norms = np.repeat(self.norms, np.diff(self.indptr))
        data = np.divide(self.data, norms, out=np.zeros_like(self.data), where=norms > 0)
        return SparseRows(self.indptr, self.indices, data, self.dim)

    # ---------------------------------------------------------------- updates (new objects)
    def append(self, rows: SparseRows | np.ndarray) -> SparseRows:
        """These rows followed by ``rows`` (sparse, or dense ``[M, C]``)."""
        other = rows if isinstance(rows, SparseRows) else SparseRows.from_dense(rows)
        return SparseRows.concat([self, other], self.dim)

    def with_rows(self, idx: np.ndarray | Sequence[int], rows: SparseRows | np.ndarray) -> SparseRows:
        """These rows with rows ``idx`` (distinct) replaced by ``rows``; O(nnz), no dense copy."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        new = rows if isinstance(rows, SparseRows) else SparseRows.from_dense(rows)
        if len(new) != idx.shape[0] or new.dim != self.dim:
            raise ValueError("sparse rows: replacement rows do not match the row indices or width")
        if not idx.size:
            return self
        if np.unique(idx).shape[0] != idx.shape[0]:
            raise ValueError("sparse rows: replaced row indices must be distinct")
        lens = np.diff(self.indptr)
        new_lens = lens.copy()
        new_lens[idx] = np.diff(new.indptr)
        indptr = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(new_lens, out=indptr[1:])
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        keep_row = np.ones(len(self), dtype=bool)
        keep_row[idx] = False
        kept = np.repeat(keep_row, lens)  # old entries that stay
        row_of_entry = np.repeat(np.arange(len(self), dtype=np.int64), lens)[kept]
        old_pos = np.flatnonzero(kept)
        dest = indptr[row_of_entry] + (old_pos - self.indptr[row_of_entry])
        indices[dest], data[dest] = self.indices[old_pos], self.data[old_pos]
        which, pos = new._entries(np.arange(len(new)))
        dest = indptr[idx[which]] + (pos - new.indptr[which])
        indices[dest], data[dest] = new.indices[pos], new.data[pos]
        return SparseRows(indptr, indices, data, self.dim)
