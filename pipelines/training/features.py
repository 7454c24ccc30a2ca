"""Training examples for the two-tower model: vocabularies, per-user sequences, batches.

Plain numpy, no TensorFlow. Index conventions are those of :mod:`pipelines.training.model`
(``0`` padding, ``1`` out of vocabulary, ``vocab[i] -> i + 2``).

History modes (no label leakage in either):

* ``before``: an example's history is the user's interactions strictly before the target,
  most recent ``N`` (what serving sees: the history before the next interaction).
* ``others``: the history is the user's most recent ``N`` interactions with every occurrence of
  the target item removed (for fixed splits without meaningful order, e.g. Gowalla).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.catalog import CatalogItem
from schemas.content import ContentEncoder

PAD_INDEX = 0
OOV_INDEX = 1
RESERVED = 2
HISTORY_MODES = ("before", "others")


def _index(vocab: Sequence[str]) -> dict[str, int]:
    return {v: i + RESERVED for i, v in enumerate(vocab)}


@dataclass
class FeatureSpace:
    """Vocabularies of the towers: users, items and the content encoder's blocks."""

    users: list[str]
    items: list[str]
    encoder: ContentEncoder
    max_tags: int = 8

    def __post_init__(self) -> None:
        self.user_index = _index(self.users)
        self.item_index = _index(self.items)
        self.category_index = _index(self.encoder.categories)
        self.brand_index = _index(self.encoder.brands)
        self.tag_index = _index(self.encoder.tags)

    @property
    def n_price_buckets(self) -> int:
        return len(self.encoder.price_edges) + 1

    def sizes(self) -> dict[str, int]:
        """Table sizes (reserved rows included) for :class:`pipelines.training.model.TowerSizes`."""
        return {"users": len(self.users) + RESERVED, "items": len(self.items) + RESERVED,
                "categories": len(self.encoder.categories) + RESERVED,
                "brands": len(self.encoder.brands) + RESERVED,
                "price_buckets": self.n_price_buckets,
                "tags": len(self.encoder.tags) + RESERVED}

    def encode_users(self, user_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.user_index.get(u, OOV_INDEX) for u in user_ids), dtype=np.int32,
                           count=len(user_ids))

    def encode_items(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.item_index.get(i, OOV_INDEX) if i else PAD_INDEX for i in item_ids),
                           dtype=np.int32, count=len(item_ids))

    def encode_content(self, items: Sequence[CatalogItem]) -> dict[str, np.ndarray]:
        """Category, brand, price-bucket and tag indices of catalogue items."""
        n, t = len(items), self.max_tags
        tags = np.zeros((n, t), dtype=np.int32)
        for row, item in enumerate(items):
            known = [self.tag_index[x] for x in dict.fromkeys(item.tags) if x in self.tag_index][:t]
            tags[row, :len(known)] = known
        return {
            "category": np.array([self.category_index.get(i.category, OOV_INDEX) if i.category
                                  else PAD_INDEX for i in items], dtype=np.int32).reshape(n),
            "brand": np.array([self.brand_index.get(i.brand, OOV_INDEX) if i.brand else PAD_INDEX
                               for i in items], dtype=np.int32).reshape(n),
            "price": np.array([self.encoder.price_bucket(i.price) for i in items],
                              dtype=np.int32).reshape(n),
            "tags": tags,
        }


def item_content_table(space: FeatureSpace, catalogue: dict[str, CatalogItem]) -> dict[str, np.ndarray]:
    """Content indices for every row of the item table (reserved rows and unknown items empty)."""
    rows = len(space.items) + RESERVED
    table = {"category": np.zeros(rows, np.int32), "brand": np.zeros(rows, np.int32),
             "price": np.zeros(rows, np.int32), "tags": np.zeros((rows, space.max_tags), np.int32)}
    known = [(space.item_index[i], catalogue[i]) for i in space.items if i in catalogue]
    if known:
        idx = np.array([r for r, _ in known])
        enc = space.encode_content([it for _, it in known])
        for key, values in enc.items():
            table[key][idx] = values
    return table


@dataclass
class Sequences:
    """Every user's interactions as model item indices, oldest first, in one flat array.

    ``flat[offsets[u]:offsets[u] + lengths[u]]`` is user ``u``'s sequence (``u`` a model index).
    """

    flat: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(cls, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray,
              n_user_rows: int) -> Sequences:
        order = np.lexsort((np.arange(len(user)), timestamp, user))
        lengths = np.bincount(user, minlength=n_user_rows).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(flat=item[order].astype(np.int32), offsets=offsets, lengths=lengths)

    def histories(self, users: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
        """For each user, the ``length`` items before position ``ends`` (left-padded with 0)."""
        start = self.offsets[users]
        idx = (start + ends)[:, None] - length + np.arange(length)[None, :]
        valid = idx >= start[:, None]
        if len(self.flat) == 0:
            return np.zeros((len(users), length), np.int32)
        return np.where(valid, self.flat[np.clip(idx, 0, len(self.flat) - 1)], PAD_INDEX).astype(np.int32)

    def last(self, users: np.ndarray, length: int) -> np.ndarray:
        """Each user's most recent ``length`` items, left-padded (serving-time history)."""
        return self.histories(users, self.lengths[users], length)

    def inverted(self, n_item_rows: int) -> Sequences:
        """Every item's users (model indices) in the same layout: the item graph's adjacency."""
        users = np.repeat(np.arange(len(self.lengths), dtype=np.int32), self.lengths)
        return Sequences.build(self.flat.astype(np.int64), users, np.zeros(len(users), np.int64), n_item_rows)

    def row_means(self, table: np.ndarray) -> np.ndarray:
        """Per row, the mean of ``table`` over its sequence (0 for empty rows): the item graph's input."""
        sums = np.zeros((len(self.lengths), table.shape[1]), np.float64)
        has = np.nonzero(self.lengths)[0]
        if len(has):
            sums[has] = np.add.reduceat(table[self.flat].astype(np.float64), self.offsets[has])
        return (sums / np.maximum(self.lengths, 1)[:, None]).astype(np.float32)

    def sample(self, rows: np.ndarray, k: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``k`` entries of each row's sequence drawn with replacement, ``exclude[j]`` and empty rows as 0."""
        lengths = self.lengths[rows]
        pos = (rng.random((len(rows), k)) * lengths[:, None]).astype(np.int64)
        if len(self.flat) == 0:
            return np.zeros((len(rows), k), np.int32)
        picked = self.flat[np.minimum(self.offsets[rows][:, None] + pos, len(self.flat) - 1)]
        keep = (lengths[:, None] > 0) & (picked != exclude[:, None])
        return np.where(keep, picked, PAD_INDEX).astype(np.int32)


@dataclass
class Examples:
    """Training examples: (user, position in the user's sequence, target item) as model indices."""

    user: np.ndarray
    position: np.ndarray
    item: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])


def build_examples(seqs: Sequences, users: np.ndarray | None = None,
                   min_position: np.ndarray | None = None) -> Examples:
    """One example per interaction of ``users`` (default all), from position ``min_position[u]`` on."""
    if users is None:
        users = np.nonzero(seqs.lengths)[0]
    lengths = seqs.lengths[users]
    starts = np.zeros_like(lengths) if min_position is None else min_position[users]
    counts = np.maximum(lengths - starts, 0)
    ex_user = np.repeat(users, counts).astype(np.int32)
    base = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    ex_pos = (np.arange(counts.sum()) + base).astype(np.int64)
    return Examples(user=ex_user, position=ex_pos,
                    item=seqs.flat[seqs.offsets[ex_user] + ex_pos].astype(np.int32))


@dataclass
class BatchMaker:
    """Turns shuffled examples into feature dicts for :class:`pipelines.training.model.TwoTowerModel`."""

    seqs: Sequences
    content: dict[str, np.ndarray]
    item_probability: np.ndarray  # per item row, for log-Q
    history_length: int
    history_mode: str = "before"
    item_id_dropout: float = 0.0
    user_id_dropout: float = 0.0
    negatives: int = 0  # > 0: add uniformly sampled BPR negatives
    n_item_rows: int = 0
    uniform_negatives: int = 0  # > 0: add items sampled uniformly, shared by the batch (softmax, ccl)
    history_sample: bool = False  # "others": users with more than N items get a random N each time
    graph_neighbors: int = 0  # > 0: "neighbors" [B, K], users of the target item other than the example's
    item_users: Sequences | None = field(init=False, default=None)  # each item row's users (graph_neighbors)

    def __post_init__(self) -> None:
        if self.history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode must be one of {HISTORY_MODES}, got {self.history_mode!r}")
        if self.graph_neighbors:
            self.item_users = self.seqs.inverted(self.n_item_rows)

    def batch(self, ex: Examples, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        users, pos, items = ex.user[rows], ex.position[rows], ex.item[rows]
        if self.history_mode == "before":
            hist = self.seqs.histories(users, pos, self.history_length)
        else:
            hist = self.seqs.last(users, self.history_length)
            if self.history_sample:
                hist = self._sampled_histories(users, hist, rng)
            hist = np.where(hist == items[:, None], PAD_INDEX, hist).astype(np.int32)
        user_in = np.where(rng.random(len(rows)) < self.user_id_dropout, OOV_INDEX, users)
        item_in = np.where(rng.random(len(rows)) < self.item_id_dropout, OOV_INDEX, items)
        n_uniform = self.uniform_negatives
        out = {"user": user_in.astype(np.int32), "history": hist, "item": item_in.astype(np.int32),
               "item_key": items, "sampling_probability": self._mixture_probability(items, len(rows))}
        for key, table in self.content.items():
            out[key] = table[items]
        if self.item_users is not None:
            out["neighbors"] = self.item_users.sample(items, self.graph_neighbors, users, rng)
        if n_uniform:
            mix = rng.integers(RESERVED, self.n_item_rows, size=n_uniform).astype(np.int32)
            out["mix_item"] = mix
            out["mix_probability"] = self._mixture_probability(mix, len(rows))
            for key, table in self.content.items():
                out[f"mix_{key}"] = table[mix]
        if self.negatives:
            neg = rng.integers(RESERVED, self.n_item_rows, size=(len(rows), self.negatives)).astype(np.int32)
            out["neg_item"] = neg
            for key, table in self.content.items():
                out[f"neg_{key}"] = table[neg]
        return out

    def _mixture_probability(self, items: np.ndarray, batch: int) -> np.ndarray:
        """Probability that a batch's candidate column holds each of ``items``.

        A proper probability (<= 1): TFRS clips it to [1e-6, 1] before taking the log, so an
        unnormalised count would silently cap the correction of popular items.
        """
        p = self.item_probability[items]
        if self.uniform_negatives:
            uniform = 1.0 / max(self.n_item_rows - RESERVED, 1)
            p = (batch * p + self.uniform_negatives * uniform) / (batch + self.uniform_negatives)
        return p.astype(np.float32)

    def _sampled_histories(self, users: np.ndarray, last: np.ndarray,
                           rng: np.random.Generator) -> np.ndarray:
        """A random ``N`` of the items of users with more than ``N`` (kept in time order)."""
        n = self.history_length
        lengths = self.seqs.lengths[users]
        big = lengths > n
        if not big.any():
            return last
        pos = np.sort((rng.random((len(users), n)) * lengths[:, None]).astype(np.int64), axis=1)
        sampled = self.seqs.flat[self.seqs.offsets[users][:, None] + np.minimum(pos, lengths[:, None] - 1)]
        return np.where(big[:, None], sampled, last).astype(np.int32)

    def epoch(self, ex: Examples, batch_size: int,
              rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
        order = rng.permutation(len(ex))
        for start in range(0, len(order), batch_size):
            yield self.batch(ex, order[start:start + batch_size], rng)


def fingerprint(user_ids: Sequence[str], item_ids: Sequence[str], user: np.ndarray, item: np.ndarray,
                timestamp: np.ndarray) -> str:
    """A stable hash of the interactions (order-independent)."""
    h = hashlib.sha256()
    order = np.lexsort((item, user, timestamp))
    h.update("\n".join(user_ids).encode())
    h.update(b"\0")
    h.update("\n".join(item_ids).encode())
    for arr in (user[order], item[order], timestamp[order]):
        h.update(np.ascontiguousarray(arr).astype(np.int64).tobytes())
    return h.hexdigest()
