"""Loaders that turn interaction files into catalogue items and product events.

Supported formats (``load_dataset`` detects them from a directory's files):

* MovieLens 100K: ``u.data`` (user, item, rating, seconds) + ``u.item`` (genres as flags).
* MovieLens latest-small: ``ratings.csv`` + ``movies.csv`` (genres separated by ``|``).
* ``user item item ...`` per line (the LightGCN Gowalla split): ``train.txt`` [+ ``test.txt``].
* Event files: ``events.csv`` or ``events.jsonl`` [+ ``items.csv`` / ``items.jsonl``].

Conventions: every rating is a ``view`` at its time; MovieLens times are seconds and become epoch
milliseconds. The contract rejects events before 2000-01-01, so a data set that starts earlier
(MovieLens 100K is from 1997-98) is shifted forward by a whole number of weeks, which keeps the
order, the gaps, weekdays and times of day; the shift is in ``Dataset.metadata["timestamp_shift_ms"]``.
MovieLens content: category = first genre, tags = all genres, brand = decade of release
("1990s"), price = a deterministic tier by release year. Event ids are
``f"{dataset}-{user}-{item}-{timestamp}"``.
"""

from __future__ import annotations

import csv
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from pipelines.data.dataset import EVENT_TYPE_CODES, DataError, Dataset, Interactions, _intern
from pipelines.data.event_files import (
    _make_item,
    _require_columns,
    load_event_files,
    load_events_file,
    sibling_items,
)
from pipelines.data.synthetic import generate_synthetic
from schemas.catalog import CatalogItem
from schemas.events import MIN_TIMESTAMP_MS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
KNOWN_NAMES = ("synthetic", "ml-latest-small", "ml-100k", "gowalla")
WEEK_MS = 7 * 24 * 3600 * 1000
# Synthesised timestamps for formats without time (user-item lines): 2010-01-01, one minute apart.
LINES_BASE_MS = 1_262_304_000_000
LINES_STEP_MS = 60_000
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


# ----------------------------------------------------------------------------- entry point

def load_dataset(name_or_path: str, data_dir: str | None = None) -> Dataset:
    """Load a data set by name or from a path.

    Args:
        name_or_path: ``synthetic``, ``ml-latest-small``, ``ml-100k``, ``gowalla``, or a path to a
            directory (format detected from its files) or to an events/lines file.
        data_dir: where named data sets live: either the parent directory holding ``<name>/``
            or that directory itself (if it is called ``<name>``). Defaults to ``$DATA_DIR``,
            then ``../shared/data`` (relative to the repository root).

    Raises:
        DataError: unknown name, missing directory or unrecognised files.
    """
    if name_or_path == "synthetic":
        return generate_synthetic()
    if name_or_path in KNOWN_NAMES:
        return load_directory(_named_directory(name_or_path, data_dir), name=name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_directory(path)
    if path.is_file():
        if path.name.endswith(".txt"):
            return load_user_item_lines(path)
        return load_events_file(path)
    raise DataError(f"{name_or_path!r} is neither a known data set ({', '.join(KNOWN_NAMES)}) "
                    f"nor an existing file or directory")


def load_directory(directory: str | Path, name: str | None = None) -> Dataset:
    """Load a directory in any supported format, detected by its files."""
    d = Path(directory)
    name = name or d.resolve().name
    if (d / "ratings.csv").is_file() and (d / "movies.csv").is_file():
        return load_movielens_latest_small(d, name=name)
    if (d / "u.data").is_file() and (d / "u.item").is_file():
        return load_movielens_100k(d, name=name)
    if (d / "train.txt").is_file():
        test = d / "test.txt"
        return load_user_item_lines(d / "train.txt", test if test.is_file() else None, name=name)
    for candidate in ("events.jsonl", "events.jsonl.gz", "events.csv"):
        if (d / candidate).is_file():
            return load_events_file(d / candidate, name=name)
    archive = _archive_files(d)
    if archive:
        return load_event_files(archive, name=name, items_path=sibling_items(d / "events.jsonl"))
    raise DataError(f"{d}: no supported files (ratings.csv+movies.csv, u.data+u.item, "
                    f"train.txt[+test.txt], events.csv, events.jsonl, or *.jsonl[.gz] event files)")


def _archive_files(d: Path) -> list[Path]:
    """JSON-lines event files anywhere under ``d`` (the pipeline's archive), items files excluded."""
    files = [p for pattern in ("*.jsonl", "*.jsonl.gz") for p in d.rglob(pattern)
             if p.is_file() and not p.name.startswith("items")]
    return sorted(files)


def _named_directory(name: str, data_dir: str | None) -> Path:
    root = data_dir or os.environ.get("DATA_DIR") or str(DEFAULT_DATA_ROOT)
    for candidate in (Path(root) / name, Path(root)):
        if candidate.name == name and candidate.is_dir() and _has_known_files(candidate):
            return candidate
    raise DataError(f"data set {name!r} not found under {root!r} (looked for {Path(root) / name}); "
                    f"set DATA_DIR or pass data_dir")


def _has_known_files(d: Path) -> bool:
    return any((d / f).is_file() for f in ("ratings.csv", "u.data", "train.txt", "events.csv",
                                           "events.jsonl", "events.jsonl.gz"))


# ----------------------------------------------------------------------------- MovieLens

def load_movielens_100k(directory: str | Path, name: str = "ml-100k") -> Dataset:
    """MovieLens 100K: ``u.data`` (tab-separated) and ``u.item`` (``|``-separated, Latin-1)."""
    d = Path(directory)
    genres = _ml100k_genres(d / "u.genre")
    movies: dict[str, tuple[str, list[str], int | None]] = {}
    with open(d / "u.item", encoding="latin-1") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("|")
            if len(parts) < 5 + len(genres):
                raise DataError(f"{d / 'u.item'}:{line_no}: expected {5 + len(genres)} fields, "
                                f"got {len(parts)}")
            flags = parts[5:5 + len(genres)]
            movie_genres = [g for g, flag in zip(genres, flags) if flag.strip() == "1"]
            movies[parts[0]] = (parts[1], movie_genres, _year_of_date(parts[2]) or _year_of_title(parts[1]))
    users, items, seconds = _read_columns(d / "u.data", delimiter="\t", header=False,
                                          columns=(0, 1, 3))
    return _movielens_dataset(name, users, items, seconds, movies)


def load_movielens_latest_small(directory: str | Path, name: str = "ml-latest-small") -> Dataset:
    """MovieLens latest(-small): ``ratings.csv`` and ``movies.csv`` with headers."""
    d = Path(directory)
    movies: dict[str, tuple[str, list[str], int | None]] = {}
    with open(d / "movies.csv", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        _require_columns(d / "movies.csv", reader.fieldnames, ("movieId", "title", "genres"))
        for row in reader:
            genres = [g for g in (row["genres"] or "").split("|") if g and g != "(no genres listed)"]
            movies[row["movieId"]] = (row["title"], genres, _year_of_title(row["title"]))
    users, items, seconds = _read_columns(d / "ratings.csv", delimiter=",", header=True,
                                          columns=("userId", "movieId", "timestamp"))
    return _movielens_dataset(name, users, items, seconds, movies)


def _movielens_dataset(name: str, users: list[str], items: list[str], seconds: np.ndarray,
                       movies: dict[str, tuple[str, list[str], int | None]]) -> Dataset:
    ts, shift = _shift_to_contract(seconds * 1000)
    train = _columns(users, items, ts)
    first_seen = _first_seen(train)
    catalogue = []
    for idx, item_id in enumerate(train.item_ids):
        title, genres, year = movies.get(item_id, (f"movie {item_id}", [], None))
        catalogue.append(_make_item(item_id, title=title, category=genres[0] if genres else "",
                                    brand=f"{year // 10 * 10}s" if year else "", price=_price_for(year),
                                    tags=genres, updated_at=int(first_seen[idx])))
    return _finish(name, catalogue, train, None, {"timestamp_shift_ms": shift,
                                                  "missing_item_metadata": sum(
                                                      1 for i in train.item_ids if i not in movies)})


def _ml100k_genres(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return ML100K_GENRES
    pairs = []
    with open(path, encoding="latin-1") as f:
        for line in f:
            if "|" in line:
                genre, idx = line.strip().rsplit("|", 1)
                pairs.append((int(idx), genre))
    return tuple(g for _, g in sorted(pairs)) or ML100K_GENRES


def _year_of_title(title: str) -> int | None:
    m = _YEAR_IN_TITLE.search(title.strip())
    return int(m.group(1)) if m else None


def _year_of_date(text: str) -> int | None:
    """Year of a u.item release date like ``01-Jan-1995``."""
    try:
        return datetime.strptime(text.strip(), "%d-%b-%Y").year
    except ValueError:
        return None


def _price_for(year: int | None) -> float:
    """A deterministic rental-price tier by release year (newer films cost more)."""
    if year is None or year < 1970:
        return 2.99
    if year < 1990:
        return 3.99
    return 4.99 if year < 2005 else 5.99


# ----------------------------------------------------------------------------- user-item lines

def load_user_item_lines(train_path: str | Path, test_path: str | Path | None = None,
                         name: str | None = None) -> Dataset:
    """``user item item ...`` per line; test lines become ``test_events``.

    Timestamps are synthesised deterministically: a user's k-th train item is at
    ``2010-01-01 + k minutes``; test items continue after the user's train items.
    """
    train_path = Path(train_path)
    name = name or train_path.resolve().parent.name
    users: list[str] = []
    items: list[str] = []
    uix: dict[str, int] = {}
    iix: dict[str, int] = {}
    # Train and test share (and extend) the same vocabularies.
    train = _lines_columns(_read_lines(train_path, users, items, uix, iix), users, items, None)
    test = None
    if test_path is not None:
        test_rows = _read_lines(Path(test_path), users, items, uix, iix)
        n_train = np.bincount(train.user_idx, minlength=len(users)).astype(np.int64)
        test = _lines_columns(test_rows, users, items, n_train)
    first_seen = _first_seen(train, test)
    catalogue = [_make_item(item_id, title=f"item {item_id}", category="", brand="", price=0.0,
                            tags=[], updated_at=int(first_seen[i])) for i, item_id in enumerate(items)]
    return _finish(name, catalogue, train, test, {"timestamps": "synthesised: one minute per position"})


def _read_lines(path: Path, users: list[str], items: list[str], uix: dict[str, int],
                iix: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(user index, item index) rows of a ``user item item ...`` file, interning new ids."""
    user_col: list[int] = []
    item_col: list[int] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 2:
                    continue  # blank line or a user with no items in this file
                u = _intern(uix, users, parts[0])
                idx = [_intern(iix, items, t) for t in parts[1:]]
                user_col.extend([u] * len(idx))
                item_col.extend(idx)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return np.asarray(user_col, dtype=np.int32), np.asarray(item_col, dtype=np.int32)


def _lines_columns(rows: tuple[np.ndarray, np.ndarray], users: list[str], items: list[str],
                   start_pos: np.ndarray | None) -> Interactions:
    """Columns with synthesised times: a row's position in its user's line, after ``start_pos``."""
    user_idx, item_idx = rows
    n = user_idx.shape[0]
    if n:
        new_run = np.r_[True, user_idx[1:] != user_idx[:-1]]
        run_start = np.flatnonzero(new_run)
        pos = np.arange(n) - run_start[np.cumsum(new_run) - 1]
    else:
        pos = np.zeros(0, dtype=np.int64)
    offset = np.zeros(len(users), dtype=np.int64)
    if start_pos is not None:
        offset[:start_pos.shape[0]] = start_pos
    ts = LINES_BASE_MS + (offset[user_idx] + pos) * LINES_STEP_MS
    return Interactions(user_ids=users, item_ids=items, user_idx=user_idx, item_idx=item_idx,
                        timestamps=ts.astype(np.int64), event_types=np.zeros(n, dtype=np.int8))


# ----------------------------------------------------------------------------- event files

def _read_columns(path: Path, delimiter: str, header: bool,
                  columns: tuple) -> tuple[list[str], list[str], np.ndarray]:
    """User ids, item ids and integer times from a delimited ratings file."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        if header:
            head = next(reader, None) or []
            _require_columns(path, head, columns)
            cols = [head.index(c) for c in columns]
            start = 2
        else:
            cols, start = list(columns), 1
        u_col, i_col, t_col = cols
        for line_no, row in enumerate(reader, start=start):
            if not row:
                continue
            try:
                users.append(row[u_col].strip())
                items.append(row[i_col].strip())
                times.append(int(float(row[t_col])))
            except (IndexError, ValueError) as e:
                raise DataError(f"{path}:{line_no}: cannot read user, item and time from "
                                f"{delimiter.join(row)[:80]!r}: {e}") from e
    return users, items, np.asarray(times, dtype=np.int64)


def _columns(users: list[str], items: list[str], ts: np.ndarray) -> Interactions:
    user_ids: list[str] = []
    item_ids: list[str] = []
    uix: dict[str, int] = {}
    iix: dict[str, int] = {}
    u = np.fromiter((_intern(uix, user_ids, x) for x in users), dtype=np.int32, count=len(users))
    i = np.fromiter((_intern(iix, item_ids, x) for x in items), dtype=np.int32, count=len(items))
    return Interactions(user_ids=user_ids, item_ids=item_ids, user_idx=u, item_idx=i,
                        timestamps=ts.astype(np.int64),
                        event_types=np.full(len(users), EVENT_TYPE_CODES["view"], dtype=np.int8))


def _shift_to_contract(ts_ms: np.ndarray) -> tuple[np.ndarray, int]:
    """Shift times forward by whole weeks if they start before the contract's 2000-01-01."""
    if ts_ms.size == 0 or int(ts_ms.min()) >= MIN_TIMESTAMP_MS:
        return ts_ms, 0
    shift = -(-(MIN_TIMESTAMP_MS - int(ts_ms.min())) // WEEK_MS) * WEEK_MS
    return ts_ms + shift, shift


def _first_seen(train: Interactions, test: Interactions | None = None) -> np.ndarray:
    """Earliest timestamp of each item over train (and test) rows."""
    first = np.full(train.n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, train.item_idx, train.timestamps)
    if test is not None:
        np.minimum.at(first, test.item_idx, test.timestamps)
    first[first == np.iinfo(np.int64).max] = MIN_TIMESTAMP_MS
    return first


def _finish(name: str, catalogue: list[CatalogItem], train: Interactions, test: Interactions | None,
            metadata: dict[str, object]) -> Dataset:
    try:
        train.validate_ids()
        if test is not None:
            test.validate_ids()
    except DataError as e:
        raise DataError(f"{name}: {e}") from e
    return Dataset.from_columns(name, catalogue, train, test, metadata=metadata)

