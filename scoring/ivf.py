"""An inverted-file (IVF) approximate index over the item embeddings: numpy only.

Build: spherical-ish k-means (a few Lloyd iterations on a sample, seeded, deterministic) splits
the catalogue into ``nlist`` partitions; each partition's rows are stored contiguously
(``sorted_emb``), so scoring a partition is one small matrix-vector product over contiguous
memory. Rows with an all-zero embedding (items known only by content) are kept in an exact
``tail`` scored on every query, like the exact scan would.

Search: score the centroids, probe the ``nprobe`` partitions with the best centroid scores,
score their rows exactly (plus the tail) and return the best ``pool`` unblocked rows. The
caller falls back to the exact scan when filters leave fewer than ``pool`` candidates.

Whether this pays off depends on the embeddings having cluster structure: on trained two-tower
embeddings recall@10 vs exact is high at a few % of the catalogue scanned; on random Gaussian
vectors it is poor. ``make bench-serving`` measures both (``reports/bench/serving.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SAMPLE_PER_LIST = 24  # k-means trains on at most nlist * this many rows
_ITERATIONS = 6
_CHUNK = 16_384


def default_nlist(n: int) -> int:
    """About sqrt(n) partitions (316 for 100,000 items), at least 1 (chosen by make bench-serving)."""
    return max(1, int(round(np.sqrt(n))))


def _assign(x: np.ndarray, centroids: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """Nearest centroid by L2 for every row of ``x`` (argmax of 2 x.c - |c|^2), chunked."""
    out = np.empty(x.shape[0], dtype=np.int32)
    for s in range(0, x.shape[0], _CHUNK):
        sims = x[s:s + _CHUNK] @ centroids.T
        sims *= 2.0
        sims -= c_sq
        out[s:s + _CHUNK] = np.argmax(sims, axis=1)
    return out


def kmeans(x: np.ndarray, nlist: int, seed: int = 0, iterations: int = _ITERATIONS) -> np.ndarray:
    """``nlist`` centroids [nlist, D] float32 from Lloyd iterations on a sample of ``x``."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    sample = x[rng.choice(n, size=min(n, nlist * _SAMPLE_PER_LIST), replace=False)]
    centroids = sample[rng.choice(sample.shape[0], size=nlist, replace=False)].copy()
    for _ in range(iterations):
        assign = _assign(sample, centroids, np.einsum("ij,ij->i", centroids, centroids))
        counts = np.bincount(assign, minlength=nlist)
        order = np.argsort(assign, kind="stable")
        present = np.flatnonzero(counts)
        sums = np.add.reduceat(sample[order], np.concatenate([[0], np.cumsum(counts)[:-1]])[present])
        empty = counts == 0
        centroids[present] = sums / counts[present, None].astype(np.float32)
        if empty.any():  # re-seed empty partitions on random sample rows
            centroids[empty] = sample[rng.choice(sample.shape[0], size=int(empty.sum()), replace=False)]
    return np.ascontiguousarray(centroids, dtype=np.float32)


@dataclass(frozen=True)
class IvfIndex:
    """Partitions of the rows of one embedding matrix."""

    nprobe: int
    centroids: np.ndarray  # float32 [nlist, D]
    assign: np.ndarray  # int32 [N], partition of each row (-1: in the tail)
    order: np.ndarray  # int64 [M], rows grouped by partition
    bounds: np.ndarray  # int64 [nlist + 1], partition p is order[bounds[p]:bounds[p + 1]]
    sorted_emb: np.ndarray  # float32 [M, D], embeddings[order]
    tail: np.ndarray  # int64, rows always scored exactly (all-zero embeddings)

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def build(cls, embeddings: np.ndarray, norms: np.ndarray, nlist: int, nprobe: int,
              seed: int = 0) -> IvfIndex:
        """k-means on the rows with a non-zero embedding, then the partition layout."""
        live = np.flatnonzero(norms > 0)
        nlist = max(1, min(nlist, live.shape[0]))
        centroids = kmeans(embeddings[live], nlist, seed=seed) if live.size else \
            np.zeros((1, embeddings.shape[1]), np.float32)
        return cls._layout(embeddings, norms, centroids, nprobe, np.full(embeddings.shape[0], -1, np.int32))

    @classmethod
    def _layout(cls, embeddings: np.ndarray, norms: np.ndarray, centroids: np.ndarray, nprobe: int,
                assign: np.ndarray) -> IvfIndex:
        """Assign every unassigned non-zero row to its nearest centroid; lay partitions out."""
        todo = np.flatnonzero((assign < 0) & (norms > 0))
        if todo.size:
            c_sq = np.einsum("ij,ij->i", centroids, centroids)
            assign[todo] = _assign(embeddings[todo], centroids, c_sq)
        assign[norms <= 0] = -1
        live = np.flatnonzero(assign >= 0)
        order = live[np.argsort(assign[live], kind="stable")]
        bounds = np.searchsorted(assign[order], np.arange(centroids.shape[0] + 1)).astype(np.int64)
        return cls(nprobe=max(1, min(nprobe, centroids.shape[0])), centroids=centroids,
                   assign=assign, order=order.astype(np.int64),
                   bounds=bounds, sorted_emb=np.ascontiguousarray(embeddings[order]),
                   tail=np.flatnonzero(assign < 0).astype(np.int64))

    def updated(self, embeddings: np.ndarray, norms: np.ndarray, changed: np.ndarray) -> IvfIndex:
        """The index over ``embeddings`` after rows ``changed`` were updated or appended.

        Centroids stay; new and changed rows go to their nearest partition (zero rows to the tail).
        """
        n = embeddings.shape[0]
        assign = np.full(n, -1, dtype=np.int32)
        assign[:self.assign.shape[0]] = self.assign
        assign[changed] = -1
        return self._layout(embeddings, norms, self.centroids, self.nprobe, assign)

    def candidates(self, query: np.ndarray, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the probed partitions plus the tail, and their exact dot products with ``query``."""
        nprobe = min(nprobe or self.nprobe, self.nlist)
        query = np.ascontiguousarray(query, dtype=np.float32)
        cscores = self.centroids @ query
        probe = np.argpartition(cscores, self.nlist - nprobe)[self.nlist - nprobe:] \
            if nprobe < self.nlist else np.arange(self.nlist)
        probe.sort()  # walk memory in order
        starts, ends = self.bounds[probe], self.bounds[probe + 1]
        sizes = ends - starts
        total = int(sizes.sum())
        rows = np.empty(total + self.tail.shape[0], dtype=np.int64)
        scores = np.empty(total + self.tail.shape[0], dtype=np.float32)
        pos, emb, order, dot = 0, self.sorted_emb, self.order, np.dot
        for s, e in zip(starts.tolist(), ends.tolist()):
            if e > s:  # np.dot(out=) costs ~1.5 us less per call than np.matmul(out=)
                dot(emb[s:e], query, out=scores[pos:pos + e - s])
                rows[pos:pos + e - s] = order[s:e]
                pos += e - s
        if self.tail.size:  # all-zero embeddings: score 0, as in the exact scan
            rows[total:] = self.tail
            scores[total:] = 0.0
        return rows, scores
