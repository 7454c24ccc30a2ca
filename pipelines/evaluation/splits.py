"""Train/test splits for offline evaluation, as sparse matrices plus time-ordered histories.

Protocols:

* ``temporal`` (:func:`temporal_split`, synthetic and MovieLens): an interaction is a distinct
  (user, item) pair at the time of its first event. For each user with at least 2 distinct items,
  the newest ``round(test_fraction * n)`` of them (at least 1) are held out; the user's train rows
  are every event strictly before the first held-out one (so nothing from the test period leaks
  into training). Users with fewer than 2 items are train only.
* ``cutoff`` (:func:`cutoff_split`): one global time cutoff; items first seen after it are cold.
* ``fixed`` (:func:`fixed_split`, Gowalla): the data set's own train/test files.

Every split ranks over the same item vocabulary (``item_ids``, covering train and test items);
items with no train interaction are ``cold_items``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pipelines.data.dataset import Dataset, Interactions


@dataclass
class Split:
    """A train/test split over fixed user and item vocabularies.

    Attributes:
        name: data set name.
        protocol: ``temporal``, ``cutoff`` or ``fixed``.
        user_ids / item_ids: vocabularies; matrix rows and columns index them.
        train: binary CSR [n_users, n_items] float32 of train interactions.
        test: binary CSR [n_users, n_items] float32 of held-out items (never in ``train``).
        test_users: int32 users with at least one test item (the users evaluated).
        train_rows: the train events, sorted by (user, time), same vocabularies; with
            ``history_indptr`` a user's history is ``train_rows.item_idx[indptr[u]:indptr[u+1]]``.
        history_indptr: int64 [n_users + 1] offsets into ``train_rows``.
        description: human-readable protocol description for reports.
    """

    name: str
    protocol: str
    user_ids: list[str]
    item_ids: list[str]
    train: sp.csr_matrix
    test: sp.csr_matrix
    test_users: np.ndarray
    train_rows: Interactions
    history_indptr: np.ndarray
    description: str

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def history(self, user: int) -> np.ndarray:
        """Item indices of a user's train events, oldest first (repeats kept)."""
        lo, hi = self.history_indptr[user], self.history_indptr[user + 1]
        return self.train_rows.item_idx[lo:hi]

    def history_times(self, user: int) -> np.ndarray:
        """Epoch-ms times of :meth:`history`."""
        lo, hi = self.history_indptr[user], self.history_indptr[user + 1]
        return self.train_rows.timestamps[lo:hi]

    def item_train_counts(self) -> np.ndarray:
        """Number of train users per item."""
        return np.asarray(self.train.sum(axis=0)).ravel()

    def cold_items(self) -> np.ndarray:
        """Items with no train interaction (only seen in the test period)."""
        return np.flatnonzero(self.item_train_counts() == 0).astype(np.int32)

    def test_items(self, user: int) -> np.ndarray:
        """Held-out item indices of a user."""
        return self.test.indices[self.test.indptr[user]:self.test.indptr[user + 1]]

    @classmethod
    def from_matrices(cls, train: sp.spmatrix, test: sp.spmatrix, name: str = "matrices",
                      user_ids: list[str] | None = None, item_ids: list[str] | None = None) -> Split:
        """A split from binary user x item matrices (train rows get time 0; for tests and tools)."""
        n_users, n_items = train.shape
        user_ids = user_ids or [str(u) for u in range(n_users)]
        item_ids = item_ids or [str(i) for i in range(n_items)]
        tu, ti = sp.csr_matrix(train).nonzero()
        inter = Interactions(user_ids=user_ids, item_ids=item_ids, user_idx=tu.astype(np.int32),
                             item_idx=ti.astype(np.int32), timestamps=np.zeros(tu.size, dtype=np.int64),
                             event_types=np.zeros(tu.size, dtype=np.int8))
        te_u, te_i = sp.csr_matrix(test).nonzero()
        return _build(name, "given", inter, np.arange(tu.size), te_u, te_i, "given matrices")

    def summary(self) -> dict[str, object]:
        """Sizes for reports."""
        return {"protocol": self.protocol, "description": self.description,
                "users": self.n_users, "items": self.n_items, "train_interactions": int(self.train.nnz),
                "test_interactions": int(self.test.nnz), "test_users": int(self.test_users.size),
                "cold_items": int(self.cold_items().size)}


def temporal_split(dataset: Dataset | Interactions, test_fraction: float = 0.2,
                   name: str | None = None) -> Split:
    """Hold out each user's newest ``test_fraction`` of distinct items (at least one).

    Args:
        dataset: a data set (its ``events``) or a columnar view.
        test_fraction: share of each user's distinct items held out, rounded half up.
        name: data set name (default: the data set's).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    inter, name = _columns_and_name(dataset, name)
    u, i, t, order = _sorted_by_user_time(inter)
    n_users, n_items = inter.n_users, inter.n_items
    first = _first_occurrence_mask(u, i, n_items)
    first_pos = np.flatnonzero(first)
    fu = u[first_pos]
    n_distinct = np.bincount(fu, minlength=n_users)
    n_test = np.where(n_distinct >= 2,
                      np.maximum(1, np.floor(test_fraction * n_distinct + 0.5)).astype(np.int64), 0)
    starts = np.r_[0, np.cumsum(n_distinct)[:-1]]
    rank = np.arange(first_pos.size) - starts[fu]
    is_test = rank >= (n_distinct - n_test)[fu]
    # A user's train rows end just before their first held-out item's first event.
    cutoff = np.full(n_users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(cutoff, fu[is_test], first_pos[is_test])
    train_mask = np.arange(u.size) < cutoff[u]
    desc = (f"temporal: per user, newest {test_fraction:.0%} of distinct items held out "
            f"(>= 1; users with < 2 items train only); train = events before the first held-out one")
    return _build(name, "temporal", inter, order[train_mask], u[first_pos[is_test]],
                  i[first_pos[is_test]], desc)


def random_split(dataset: Dataset | Interactions, test_fraction: float = 0.1, seed: int = 0,
                 name: str | None = None) -> Split:
    """Hold out a seeded random ``test_fraction`` of each user's distinct items (at least one).

    For data whose event order carries no time (Gowalla's files list items in id order): a
    temporal holdout there would hold out the highest ids. Every event of a held-out (user, item)
    pair leaves train; users with fewer than 2 distinct items are train only.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    inter, name = _columns_and_name(dataset, name)
    u, i, t, order = _sorted_by_user_time(inter)
    first_pos = np.flatnonzero(_first_occurrence_mask(u, i, inter.n_items))
    fu = u[first_pos]
    n_distinct = np.bincount(fu, minlength=inter.n_users)
    n_test = np.where(n_distinct >= 2,
                      np.maximum(1, np.floor(test_fraction * n_distinct + 0.5)).astype(np.int64), 0)
    key = np.random.default_rng(seed).random(first_pos.size)
    by_user_key = np.lexsort((key, fu))  # pairs grouped by user, random order within a user
    starts = np.r_[0, np.cumsum(n_distinct)[:-1]]
    rank = np.empty(first_pos.size, dtype=np.int64)
    rank[by_user_key] = np.arange(first_pos.size) - starts[fu[by_user_key]]
    is_test = rank < n_test[fu]
    pair_key = u.astype(np.int64) * inter.n_items + i
    train_mask = ~np.isin(pair_key, pair_key[first_pos[is_test]])
    desc = (f"random: per user, a seeded random {test_fraction:.0%} of distinct items held out "
            f"(>= 1; users with < 2 items train only)")
    return _build(name, "random", inter, order[train_mask], u[first_pos[is_test]], i[first_pos[is_test]],
                  desc)


def cutoff_split(dataset: Dataset | Interactions, cutoff_ms: int | None = None, test_fraction: float = 0.2,
                 name: str | None = None) -> Split:
    """One global time cutoff: train = events before it, test = new items of known users after it.

    Args:
        dataset: a data set or a columnar view.
        cutoff_ms: the cutoff; default: the time leaving ``test_fraction`` of events after it.
        test_fraction: used when ``cutoff_ms`` is not given.
        name: data set name.
    """
    inter, name = _columns_and_name(dataset, name)
    u, i, t, order = _sorted_by_user_time(inter)
    if cutoff_ms is None:
        cutoff_ms = int(np.quantile(inter.timestamps, 1.0 - test_fraction))
    before = t < cutoff_ms
    known_user = np.bincount(u[before], minlength=inter.n_users) > 0
    after = ~before & known_user[u]  # _build drops items the user already has in train
    desc = f"cutoff: train = events before {cutoff_ms} ms; test = known users' new items after it"
    return _build(name, "cutoff", inter, order[before], u[after], i[after], desc)


def fixed_split(dataset: Dataset, name: str | None = None) -> Split:
    """The data set's own split: ``events`` train, ``test_events`` test (train items excluded)."""
    test_inter = dataset.test_interactions()
    if test_inter is None:
        raise ValueError(f"data set {dataset.name!r} has no fixed test events")
    train_inter = dataset.interactions()
    _, _, _, order = _sorted_by_user_time(train_inter)
    desc = "fixed: the data set's train/test files; all items ranked, train items excluded"
    return _build(name or dataset.name, "fixed", train_inter, order, test_inter.user_idx,
                  test_inter.item_idx, desc)


def split_for(dataset: Dataset, test_fraction: float = 0.2) -> Split:
    """The standard protocol for a data set: fixed if it has test events, else temporal."""
    if dataset.test_events is not None:
        return fixed_split(dataset)
    return temporal_split(dataset, test_fraction)


def _columns_and_name(dataset: Dataset | Interactions, name: str | None) -> tuple[Interactions, str]:
    if isinstance(dataset, Dataset):
        return dataset.interactions(), name or dataset.name
    return dataset, name or "data"


def _sorted_by_user_time(inter: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(len(inter)), inter.timestamps, inter.user_idx))
    return inter.user_idx[order], inter.item_idx[order], inter.timestamps[order], order


def _first_occurrence_mask(u: np.ndarray, i: np.ndarray, n_items: int) -> np.ndarray:
    key = u.astype(np.int64) * n_items + i
    _, first = np.unique(key, return_index=True)
    mask = np.zeros(u.size, dtype=bool)
    mask[first] = True
    return mask


def _build(name: str, protocol: str, inter: Interactions, train_rows: np.ndarray, test_u: np.ndarray,
           test_i: np.ndarray, description: str) -> Split:
    """Assemble a split from train row indices (into ``inter``, in user/time order) and test pairs."""
    n_users, n_items = inter.n_users, inter.n_items
    tu, ti = inter.user_idx[train_rows], inter.item_idx[train_rows]
    train = _binary_csr(tu, ti, n_users, n_items)
    test = _binary_csr(test_u, test_i, n_users, n_items)
    test = test - test.multiply(train)  # never evaluate an item the user has in train
    test.eliminate_zeros()
    test = _binary_csr(*test.nonzero(), n_users, n_items)
    rows = Interactions(
        user_ids=inter.user_ids, item_ids=inter.item_ids, user_idx=tu, item_idx=ti,
        timestamps=inter.timestamps[train_rows], event_types=inter.event_types[train_rows],
        session_ids=[inter.session_ids[r] for r in train_rows.tolist()] if inter.session_ids else None)
    indptr = np.r_[0, np.cumsum(np.bincount(tu, minlength=n_users))].astype(np.int64)
    test_users = np.flatnonzero(np.diff(test.indptr) > 0).astype(np.int32)
    return Split(name=name, protocol=protocol, user_ids=inter.user_ids, item_ids=inter.item_ids,
                 train=train, test=test, test_users=test_users, train_rows=rows,
                 history_indptr=indptr, description=description)


def _binary_csr(u: np.ndarray, i: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (np.asarray(u), np.asarray(i))),
                      shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m
