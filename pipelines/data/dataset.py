"""In-memory data sets: catalogue items, events and a fast columnar view of the interactions.

A :class:`Dataset` holds ``events`` as :class:`~schemas.events.ProductEvent` objects (sorted by
timestamp). Large loaders (Gowalla: ~1M interactions) build the columnar :class:`Interactions`
first and expose ``events`` as a lazy, read-only sequence that creates each event on access,
so loading takes seconds and memory stays at a few arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from schemas.catalog import CatalogItem
from schemas.clock import now_ms
from schemas.errors import InvalidRecord
from schemas.events import EVENT_TYPES, MAX_FUTURE_SKEW_MS, MIN_TIMESTAMP_MS, ProductEvent, _check_id

EVENT_TYPE_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}


class DataError(ValueError):
    """A data file or directory that cannot be loaded; the message says where and why."""


@dataclass
class Interactions:
    """Columnar interactions: one row per event, ids replaced by vocabulary indices.

    Attributes:
        user_ids: user vocabulary; ``user_idx`` indexes it.
        item_ids: item vocabulary; ``item_idx`` indexes it.
        user_idx: int32 [n] user of each row.
        item_idx: int32 [n] item of each row.
        timestamps: int64 [n] epoch milliseconds.
        event_types: int8 [n] codes into ``schemas.events.EVENT_TYPES`` (0 = view).
        session_ids: optional list of session ids per row (``None`` entries allowed).
    """

    user_ids: list[str]
    item_ids: list[str]
    user_idx: np.ndarray
    item_idx: np.ndarray
    timestamps: np.ndarray
    event_types: np.ndarray
    session_ids: list[str | None] | None = None
    _user_index: dict[str, int] | None = field(default=None, repr=False, compare=False)
    _item_index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.user_idx.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self) -> dict[str, int]:
        """Map user id -> index (built once)."""
        if self._user_index is None:
            self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        return self._user_index

    def item_index(self) -> dict[str, int]:
        """Map item id -> index (built once)."""
        if self._item_index is None:
            self._item_index = {t: i for i, t in enumerate(self.item_ids)}
        return self._item_index

    def event_type_names(self) -> list[str]:
        """Event type of each row as a string."""
        return [EVENT_TYPES[c] for c in self.event_types.tolist()]

    @classmethod
    def from_events(cls, events: Iterable[ProductEvent], user_ids: list[str] | None = None,
                    item_ids: list[str] | None = None) -> Interactions:
        """Columnar view of events; given vocabularies are extended (in place) with new ids."""
        user_ids = [] if user_ids is None else user_ids
        item_ids = [] if item_ids is None else item_ids
        uix = {u: i for i, u in enumerate(user_ids)}
        iix = {t: i for i, t in enumerate(item_ids)}
        us: list[int] = []
        its: list[int] = []
        ts: list[int] = []
        ets: list[int] = []
        sessions: list[str | None] = []
        for ev in events:
            us.append(_intern(uix, user_ids, ev.user_id))
            its.append(_intern(iix, item_ids, ev.item_id))
            ts.append(ev.timestamp)
            ets.append(EVENT_TYPE_CODES[ev.event_type])
            sessions.append(ev.session_id)
        return cls(user_ids=user_ids, item_ids=item_ids, user_idx=np.asarray(us, dtype=np.int32),
                   item_idx=np.asarray(its, dtype=np.int32), timestamps=np.asarray(ts, dtype=np.int64),
                   event_types=np.asarray(ets, dtype=np.int8),
                   session_ids=sessions if any(s is not None for s in sessions) else None)

    def sorted_by_time(self) -> Interactions:
        """The same rows, stably sorted by timestamp."""
        order = np.argsort(self.timestamps, kind="stable")
        return Interactions(
            user_ids=self.user_ids, item_ids=self.item_ids, user_idx=self.user_idx[order],
            item_idx=self.item_idx[order], timestamps=self.timestamps[order],
            event_types=self.event_types[order],
            session_ids=[self.session_ids[i] for i in order.tolist()] if self.session_ids else None,
            _user_index=self._user_index, _item_index=self._item_index)

    def validate_ids(self) -> None:
        """Check every vocabulary id and the timestamp range once, as ``validate_event`` would.

        Raises:
            DataError: naming the offending id or timestamp.
        """
        for name, vocab in (("user_id", self.user_ids), ("item_id", self.item_ids)):
            for value in vocab:
                try:
                    _check_id(name, value)
                except InvalidRecord as e:
                    raise DataError(f"{name} {value!r}: {e.reason}") from e
        if len(self):
            lo, hi = int(self.timestamps.min()), int(self.timestamps.max())
            if lo < MIN_TIMESTAMP_MS:
                raise DataError(f"timestamp {lo} is before 2000-01-01 (epoch milliseconds expected)")
            if hi > now_ms() + MAX_FUTURE_SKEW_MS:
                raise DataError(f"timestamp {hi} is in the future")


class ColumnarEvents(Sequence[ProductEvent]):
    """A read-only sequence of events created on access from :class:`Interactions` rows.

    Event ids are ``f"{prefix}-{user}-{item}-{timestamp}"``; every event is ``view`` unless the
    row's event type says otherwise.
    """

    def __init__(self, prefix: str, columns: Interactions) -> None:
        self._prefix = prefix
        self._c = columns

    def __len__(self) -> int:
        return len(self._c)

    @overload
    def __getitem__(self, index: int) -> ProductEvent: ...

    @overload
    def __getitem__(self, index: slice) -> list[ProductEvent]: ...

    def __getitem__(self, index: int | slice) -> ProductEvent | list[ProductEvent]:
        if isinstance(index, slice):
            return [self._event(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return self._event(index)

    def __iter__(self) -> Iterator[ProductEvent]:
        for i in range(len(self)):
            yield self._event(i)

    def _event(self, row: int) -> ProductEvent:
        c = self._c
        user = c.user_ids[int(c.user_idx[row])]
        item = c.item_ids[int(c.item_idx[row])]
        ts = int(c.timestamps[row])
        session = c.session_ids[row] if c.session_ids else None
        return ProductEvent(event_id=f"{self._prefix}-{user}-{item}-{ts}",
                            event_type=EVENT_TYPES[int(c.event_types[row])], user_id=user,
                            item_id=item, timestamp=ts, session_id=session)


@dataclass
class Dataset:
    """A named data set: catalogue, training/history events, optional fixed test events.

    Attributes:
        name: short name used in event ids and report file names.
        items: every item that appears in the events (a catalogue may hold more).
        events: the training/history events, sorted by timestamp (may be a lazy sequence).
        test_events: held-out events of a data set with a fixed split (Gowalla's test.txt).
        metadata: free-form facts about the data (e.g. the synthetic generator's planted tastes).
    """

    name: str
    items: list[CatalogItem]
    events: Sequence[ProductEvent]
    test_events: Sequence[ProductEvent] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _train: Interactions | None = field(default=None, repr=False, compare=False)
    _test: Interactions | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_columns(cls, name: str, items: list[CatalogItem], train: Interactions,
                     test: Interactions | None = None,
                     metadata: dict[str, Any] | None = None) -> Dataset:
        """A data set whose events are created lazily from columns (which must share vocabularies)."""
        train = train.sorted_by_time()
        test = test.sorted_by_time() if test is not None else None
        return cls(name=name, items=items, events=ColumnarEvents(name, train),
                   test_events=ColumnarEvents(name, test) if test is not None else None,
                   metadata=dict(metadata or {}), _train=train, _test=test)

    def interactions(self) -> Interactions:
        """Columnar view of ``events``; its vocabularies also cover ``test_events``."""
        if self._train is None:
            self._build_columns()
        assert self._train is not None
        return self._train

    def test_interactions(self) -> Interactions | None:
        """Columnar view of ``test_events`` with the same vocabularies, or ``None``."""
        if self.test_events is None:
            return None
        if self._test is None:
            self._build_columns()
        return self._test

    def item_by_id(self) -> dict[str, CatalogItem]:
        """Map item id -> catalogue item."""
        return {it.item_id: it for it in self.items}

    def _build_columns(self) -> None:
        users: list[str] = []
        items: list[str] = []
        train = Interactions.from_events(self.events, users, items)
        test = Interactions.from_events(self.test_events, users, items) if self.test_events else None
        # The test pass may have extended the shared vocabularies; both views see the final lists.
        self._train, self._test = train, test


def _intern(index: dict[str, int], vocab: list[str], value: str) -> int:
    i = index.get(value)
    if i is None:
        i = index[value] = len(vocab)
        vocab.append(value)
    return i


