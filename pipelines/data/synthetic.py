"""Deterministic synthetic shop: a catalogue with content attributes and users with planted tastes.

What is planted, so that a correct personalised model measurably beats popularity:

* Items have a category, a brand (brands belong to one or two categories), a price drawn around a
  per-category level, tags (some specific to the category, some generic) and a title.
* Item popularity is Zipf-like (weight ``1 / rank**0.8`` over a random ranking).
* Each user has 1-3 favourite categories and 1-3 favourite brands (from those categories). A user's
  views come, with probability ``taste_strength`` (0.8), from their favourite categories (favourite
  brands 5x more likely, within-category popularity flattened) and otherwise from the global
  popularity distribution (noise). A user does not view the same item twice.
* Users browse in sessions: bursts of views 20 s-3 min apart; a view is followed by an
  ``add_to_cart`` of the same item with probability 0.12 and that by a ``purchase`` with 0.4.
* ``new_item_fraction`` of the items are released late (between 60% and 90% of the period) and
  can only be seen after their release, which makes a "cold items" split possible.

Everything is drawn from ``numpy.random.default_rng(seed)``: same arguments, same data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.dataset import Dataset
from schemas.catalog import CatalogItem
from schemas.events import ProductEvent

DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: fixed, so output is identical across runs
DAY_MS = 24 * 3600 * 1000
CATEGORY_NAMES = ("electronics", "books", "fashion", "home", "sports", "toys", "beauty", "garden",
                  "grocery", "music", "automotive", "pets", "office", "health", "games", "baby")
CATEGORY_TAG_WORDS = ("classic", "pro", "compact")
GENERIC_TAGS = ("sale", "eco", "premium", "bestseller", "gift", "limited", "bundle", "refurbished")
ADJECTIVES = ("Smart", "Classic", "Ultra", "Essential", "Deluxe", "Compact", "Urban", "Vintage")
ZIPF_EXPONENT = 0.8
BRAND_BOOST = 5.0
CART_PROB = 0.12
PURCHASE_PROB = 0.4
SESSION_LENGTH = 4.0


@dataclass(frozen=True)
class _Catalogue:
    items: list[CatalogItem]
    category: np.ndarray  # int [n_items]
    brand: np.ndarray  # int [n_items]
    popularity: np.ndarray  # float [n_items], sums to 1
    release_ms: np.ndarray  # int64 [n_items]
    category_names: list[str]
    brand_names: list[str]


def generate_synthetic(n_users: int = 2000, n_items: int = 1000, mean_events_per_user: int = 40,
                       seed: int = 0, start_ms: int | None = None, n_categories: int = 12,
                       n_brands: int = 40, days: int = 30, new_item_fraction: float = 0.05,
                       taste_strength: float = 0.8) -> Dataset:
    """Generate the synthetic data set (deterministic given the arguments).

    Args:
        n_users: number of users.
        n_items: catalogue size.
        mean_events_per_user: average events per user (all types).
        seed: random seed.
        start_ms: epoch millis of the period's start (default 2024-01-01, fixed).
        n_categories: number of categories.
        n_brands: number of brands (at least ``n_categories`` recommended).
        days: length of the period the events span.
        new_item_fraction: share of items released late in the period.
        taste_strength: probability that a view follows the user's planted tastes.

    Returns:
        A :class:`Dataset` named ``synthetic``; ``metadata`` holds ``user_tastes``
        (user id -> favourite categories and brands), ``new_items`` and ``new_items_from_ms``.
    """
    if n_users < 1 or n_items < 10 or n_categories < 1 or n_brands < 1 or mean_events_per_user < 3:
        raise ValueError("need n_users >= 1, n_items >= 10, n_categories >= 1, n_brands >= 1, "
                         "mean_events_per_user >= 3")
    if not 0.0 <= new_item_fraction < 1.0 or not 0.0 <= taste_strength <= 1.0:
        raise ValueError("new_item_fraction must be in [0, 1) and taste_strength in [0, 1]")
    rng = np.random.default_rng(seed)
    start = DEFAULT_START_MS if start_ms is None else int(start_ms)
    span = int(days) * DAY_MS
    cat = _make_catalogue(rng, n_items, n_categories, n_brands, start, span, new_item_fraction)
    item_ids = [it.item_id for it in cat.items]
    width = len(str(n_users - 1))
    events: list[ProductEvent] = []
    tastes: dict[str, dict[str, list[str]]] = {}
    by_popularity = np.argsort(-cat.popularity, kind="stable")
    for u in range(n_users):
        user_id = f"u{u:0{width}d}"
        fav_cats, fav_brands = _user_tastes(rng, cat, n_categories)
        tastes[user_id] = {"categories": [cat.category_names[c] for c in fav_cats],
                           "brands": [cat.brand_names[b] for b in fav_brands]}
        probs = _user_item_distribution(cat, fav_cats, fav_brands, taste_strength)
        n_views = _draw_n_views(rng, mean_events_per_user, int(np.count_nonzero(probs)))
        candidates = _weighted_order(rng, probs, min(n_items, 3 * n_views + 10))
        events.extend(_user_events(rng, user_id, item_ids, cat.release_ms, candidates, by_popularity,
                                   n_views, start, span))
    events.sort(key=lambda e: (e.timestamp, e.event_id))
    new_mask = cat.release_ms > start
    return Dataset(
        name="synthetic", items=cat.items, events=events,
        metadata={"user_tastes": tastes,
                  "new_items": [item_ids[i] for i in np.flatnonzero(new_mask)],
                  "new_items_from_ms": int(cat.release_ms[new_mask].min()) if new_mask.any() else None,
                  "params": {"n_users": n_users, "n_items": n_items,
                             "mean_events_per_user": mean_events_per_user, "seed": seed,
                             "start_ms": start, "n_categories": n_categories, "n_brands": n_brands,
                             "days": days, "new_item_fraction": new_item_fraction,
                             "taste_strength": taste_strength}})


def _make_catalogue(rng: np.random.Generator, n_items: int, n_categories: int, n_brands: int,
                    start: int, span: int, new_item_fraction: float) -> _Catalogue:
    cat_names = [CATEGORY_NAMES[c] if c < len(CATEGORY_NAMES) else f"category-{c:02d}"
                 for c in range(n_categories)]
    brand_names = [f"brand-{b:02d}" for b in range(n_brands)]
    # Every brand has a home category; some also sell in a second one.
    brand_cats = [{b % n_categories} for b in range(n_brands)]
    for b in range(n_brands):
        if rng.random() < 0.3:
            brand_cats[b].add(int(rng.integers(n_categories)))
    cat_brands = [[b for b in range(n_brands) if c in brand_cats[b]] or [int(rng.integers(n_brands))]
                  for c in range(n_categories)]
    cat_share = rng.dirichlet(np.full(n_categories, 4.0))
    cat_price = np.exp(rng.uniform(np.log(5.0), np.log(300.0), n_categories))
    category = rng.choice(n_categories, size=n_items, p=cat_share)
    brand = np.array([cat_brands[c][int(rng.integers(len(cat_brands[c])))] for c in category])
    price = np.round(cat_price[category] * np.exp(rng.normal(0.0, 0.4, n_items)), 2)
    rank = rng.permutation(n_items)
    popularity = 1.0 / (rank + 1.0) ** ZIPF_EXPONENT
    popularity /= popularity.sum()
    release = np.full(n_items, start - 30 * DAY_MS, dtype=np.int64)
    n_new = int(round(new_item_fraction * n_items))
    if n_new:
        new = rng.choice(n_items, size=n_new, replace=False)
        release[new] = start + (rng.uniform(0.6, 0.9, n_new) * span).astype(np.int64)
    width = len(str(n_items - 1))
    items = []
    for i in range(n_items):
        c, b = int(category[i]), int(brand[i])
        own = rng.choice(len(CATEGORY_TAG_WORDS), size=int(rng.integers(1, 3)), replace=False)
        generic = rng.choice(len(GENERIC_TAGS), size=int(rng.integers(0, 3)), replace=False)
        tags = tuple([f"{cat_names[c]}-{CATEGORY_TAG_WORDS[k]}" for k in sorted(own)]
                     + [GENERIC_TAGS[k] for k in sorted(generic)])
        title = f"{brand_names[b].title()} {ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]} " \
                f"{cat_names[c]} item {i}"
        items.append(CatalogItem(item_id=f"i{i:0{width}d}", title=title, category=cat_names[c],
                                 brand=brand_names[b], price=float(price[i]), tags=tags,
                                 in_stock=bool(rng.random() < 0.95), updated_at=int(release[i])))
    return _Catalogue(items=items, category=category, brand=brand, popularity=popularity,
                      release_ms=release, category_names=cat_names, brand_names=brand_names)


def _user_tastes(rng: np.random.Generator, cat: _Catalogue,
                 n_categories: int) -> tuple[list[int], list[int]]:
    n_fav = min(n_categories, int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])))
    fav_cats = sorted(int(c) for c in rng.choice(n_categories, size=n_fav, replace=False))
    in_favs = np.isin(cat.category, fav_cats)
    brands, counts = np.unique(cat.brand[in_favs], return_counts=True)
    if len(brands) == 0:
        return fav_cats, []
    n_brands = min(len(brands), int(rng.integers(1, 4)))
    fav_brands = rng.choice(brands, size=n_brands, replace=False, p=counts / counts.sum())
    return fav_cats, sorted(int(b) for b in fav_brands)


def _user_item_distribution(cat: _Catalogue, fav_cats: list[int], fav_brands: list[int],
                            taste_strength: float) -> np.ndarray:
    taste = np.sqrt(cat.popularity) * np.isin(cat.category, fav_cats)
    taste *= np.where(np.isin(cat.brand, fav_brands), BRAND_BOOST, 1.0)
    total = taste.sum()
    if total <= 0:
        return cat.popularity
    return taste_strength * taste / total + (1.0 - taste_strength) * cat.popularity


def _draw_n_views(rng: np.random.Generator, mean_events: int, support: int) -> int:
    mean_views = mean_events / (1.0 + CART_PROB * (1.0 + PURCHASE_PROB))
    n = 2 + int(rng.geometric(1.0 / max(mean_views - 1.0, 1.0)))
    return max(2, min(n, support // 2, 4 * int(mean_views) + 2))


def _weighted_order(rng: np.random.Generator, probs: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` items of a weighted sample without replacement (Gumbel top-k)."""
    with np.errstate(divide="ignore"):
        keys = np.log(probs) + rng.gumbel(size=probs.shape[0])
    top = np.argpartition(-keys, k - 1)[:k] if k < probs.shape[0] else np.arange(probs.shape[0])
    return top[np.argsort(-keys[top], kind="stable")]


def _session_starts(rng: np.random.Generator, n_sessions: int, start: int, span: int) -> list[int]:
    first = start + int(rng.uniform(0.0, 0.6) * span)
    return sorted(int(t) for t in rng.integers(first, start + span - 3600_000, size=n_sessions))


def _user_events(rng: np.random.Generator, user_id: str, item_ids: list[str], release_ms: np.ndarray,
                 candidates: np.ndarray, by_popularity: np.ndarray, n_views: int, start: int,
                 span: int) -> list[ProductEvent]:
    n_sessions = max(1, int(round(n_views / SESSION_LENGTH)))
    starts = _session_starts(rng, n_sessions, start, span)
    per_session = np.bincount(rng.integers(0, n_sessions, size=n_views - n_sessions),
                              minlength=n_sessions) + 1
    used: set[int] = set()
    pending = [int(c) for c in candidates]
    out: list[ProductEvent] = []
    cursor = start
    for s, (s_start, n) in enumerate(zip(starts, per_session.tolist())):
        cursor = max(s_start, cursor + 60_000)
        session_id = f"{user_id}-s{s}"
        for _ in range(n):
            item = _next_item(pending, used, release_ms, by_popularity, cursor)
            if item is None:
                break
            used.add(item)
            out.append(_event(user_id, item_ids[item], "view", cursor, session_id))
            cursor += int(rng.integers(20_000, 180_000))
            if rng.random() < CART_PROB:
                out.append(_event(user_id, item_ids[item], "add_to_cart", cursor, session_id))
                cursor += int(rng.integers(10_000, 60_000))
                if rng.random() < PURCHASE_PROB:
                    out.append(_event(user_id, item_ids[item], "purchase", cursor, session_id))
                    cursor += int(rng.integers(30_000, 120_000))
    return out


def _next_item(pending: list[int], used: set[int], release_ms: np.ndarray, by_popularity: np.ndarray,
               now: int) -> int | None:
    """The user's next preferred item already released at ``now`` (popular items as fallback)."""
    for pos, item in enumerate(pending):
        if release_ms[item] <= now and item not in used:
            del pending[pos]
            return item
    for item in by_popularity.tolist():
        if release_ms[item] <= now and item not in used:
            return int(item)
    return None


def _event(user_id: str, item_id: str, event_type: str, ts: int, session_id: str) -> ProductEvent:
    return ProductEvent(event_id=f"synthetic-{user_id}-{item_id}-{ts}", event_type=event_type,
                        user_id=user_id, item_id=item_id, timestamp=ts, session_id=session_id)
