"""The synthetic generator: determinism, valid events, planted tastes, sessions, new items."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from pipelines.data import generate_synthetic
from schemas.catalog import validate_item
from schemas.events import validate_event


@pytest.fixture(scope="module")
def small():
    return generate_synthetic(n_users=150, n_items=300, mean_events_per_user=30, seed=7)


def test_same_seed_same_data(small) -> None:
    again = generate_synthetic(n_users=150, n_items=300, mean_events_per_user=30, seed=7)
    assert list(again.events) == list(small.events)
    assert again.items == small.items
    assert again.metadata == small.metadata


def test_different_seed_different_data(small) -> None:
    other = generate_synthetic(n_users=150, n_items=300, mean_events_per_user=30, seed=8)
    assert [e.event_id for e in other.events] != [e.event_id for e in small.events]


def test_every_event_and_item_validates(small) -> None:
    for ev in small.events:
        assert validate_event(ev.to_dict()) == ev
    for it in small.items:
        assert validate_item(it.to_dict()) == it
    assert len({e.event_id for e in small.events}) == len(small.events)
    ids = {it.item_id for it in small.items}
    assert {e.item_id for e in small.events} <= ids


def test_events_sorted_and_sized(small) -> None:
    ts = [e.timestamp for e in small.events]
    assert ts == sorted(ts)
    per_user = Counter(e.user_id for e in small.events)
    assert len(per_user) == 150
    assert 20 <= np.mean(list(per_user.values())) <= 40
    types = Counter(e.event_type for e in small.events)
    assert types["view"] > 0.75 * len(small.events)
    assert types["add_to_cart"] > 0 and types["purchase"] > 0


def test_views_follow_planted_categories(small) -> None:
    category = {it.item_id: it.category for it in small.items}
    tastes = small.metadata["user_tastes"]
    shares = []
    for user, evs in _views_by_user(small).items():
        favs = set(tastes[user]["categories"])
        shares.append(np.mean([category[i] in favs for i in evs]))
    # ~80% follow tastes by construction (less once a small favourite category is exhausted).
    assert np.mean(shares) > 0.7
    # Without planted tastes the favourite categories would hold only a small share of views.
    n_cats = len({it.category for it in small.items})
    mean_favs = np.mean([len(t["categories"]) for t in tastes.values()])
    assert np.mean(shares) > 2.5 * mean_favs / n_cats


def test_views_favour_planted_brands(small) -> None:
    item = {it.item_id: it for it in small.items}
    tastes = small.metadata["user_tastes"]
    fav_share, base_share = [], []
    for user, evs in _views_by_user(small).items():
        favs = set(tastes[user]["brands"])
        in_cat = [i for i in evs if item[i].category in tastes[user]["categories"]]
        if not in_cat:
            continue
        fav_share.append(np.mean([item[i].brand in favs for i in in_cat]))
        cat_items = [it for it in small.items if it.category in tastes[user]["categories"]]
        base_share.append(np.mean([it.brand in favs for it in cat_items]))
    assert np.mean(fav_share) > 1.4 * np.mean(base_share)


def test_sessions_are_bursts(small) -> None:
    by_session = defaultdict(list)
    for ev in small.events:
        assert ev.session_id and ev.session_id.startswith(ev.user_id + "-s")
        by_session[ev.session_id].append(ev.timestamp)
    gaps = [b - a for ts in by_session.values() for a, b in zip(ts, ts[1:])]
    assert max(gaps) <= 180_000
    assert len(by_session) < len(small.events) / 2


def test_new_items_appear_only_after_release(small) -> None:
    new_items = set(small.metadata["new_items"])
    release = {it.item_id: it.updated_at for it in small.items}
    assert len(new_items) == 15
    seen_new = [e for e in small.events if e.item_id in new_items]
    assert seen_new, "late items must be viewed after their release"
    assert all(e.timestamp >= release[e.item_id] for e in seen_new)
    assert min(e.timestamp for e in seen_new) >= small.metadata["new_items_from_ms"]


def test_popularity_is_skewed(small) -> None:
    counts = np.array(sorted(Counter(e.item_id for e in small.events).values(), reverse=True))
    top_decile = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.2


def test_start_ms_shifts_times() -> None:
    a = generate_synthetic(n_users=5, n_items=50, seed=1)
    b = generate_synthetic(n_users=5, n_items=50, seed=1, start_ms=1_750_000_000_000)
    assert min(e.timestamp for e in b.events) >= 1_750_000_000_000
    assert [e.item_id for e in a.events] == [e.item_id for e in b.events]


def test_interactions_view_matches_events(small) -> None:
    inter = small.interactions()
    assert len(inter) == len(small.events)
    ev = small.events[10]
    assert inter.user_ids[inter.user_idx[10]] == ev.user_id
    assert inter.item_ids[inter.item_idx[10]] == ev.item_id
    assert inter.timestamps[10] == ev.timestamp
    assert inter.event_type_names()[10] == ev.event_type


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_items"):
        generate_synthetic(n_items=3)


def _views_by_user(ds):
    out = defaultdict(list)
    for ev in ds.events:
        if ev.event_type == "view":
            out[ev.user_id].append(ev.item_id)
    return out
