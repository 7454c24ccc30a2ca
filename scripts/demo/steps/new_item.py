"""Step 6 (second part): publish a catalogue item never seen in training; is it recommended?

New items are embedded from their attributes, so they can be recommended without retraining.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

from schemas.catalog import CatalogItem
from schemas.clock import now_ms
from schemas.firestore import UserDoc
from scripts.demo.console import say, wait_until
from scripts.demo.context import Context
from scripts.demo.data import DemoData
from scripts.demo.steps.services import Services


def _share(doc: UserDoc, by_id: dict[str, CatalogItem], category: str) -> float:
    cats = [by_id[h.item_id].category for h in doc.history if h.item_id in by_id]
    return cats.count(category) / len(cats) if cats else 0.0


def new_item(ctx: Context, data: DemoData, services: Services) -> None:
    """Publish an unseen item like a showcase user's favourite; is it recommended?"""
    say("\n  New catalogue item, never seen in training:")
    fig, rec, users = ctx.fig, services.recommend, services.users
    target_user = (fig.showcase[0]["user_id"] if fig.showcase
                   else data.live[0].user_id)
    doc = users.get(target_user)
    by_id = {i.item_id: i for i in data.items}
    liked = [by_id[h.item_id] for h in (doc.history if doc else ()) if h.item_id in by_id]
    fav_cat = Counter(i.category for i in liked).most_common(1)[0][0]
    fav_brand = Counter(i.brand for i in liked if i.category == fav_cat).most_common(1)[0][0]
    template = next(i for i in reversed(liked) if i.category == fav_cat)
    item = CatalogItem(item_id=f"new-{uuid.uuid4().hex[:8]}", title=f"New {template.title}",
                       category=fav_cat, brand=fav_brand, price=template.price,
                       tags=template.tags, in_stock=True, updated_at=now_ms())
    t0 = time.monotonic()
    services.publisher.publish_item(item).result()
    wait_until("the function to index the new item",
               lambda: rec.session.get(f"{rec.base_url}/similar-items",
                                       params={"item_id": item.item_id, "k": 3},
                                       timeout=5).status_code == 200, ctx.cfg.timeout_s)
    indexed_s = time.monotonic() - t0
    matching = [u for u in {e.user_id for e in data.history}
                if (d := users.get(u)) is not None and _share(d, by_id, fav_cat) >= 0.5][:20] \
        if not ctx.cfg.short else [target_user]
    ranks = {}
    for u in matching or [target_user]:
        items = [i["item_id"] for i in rec.recommend(u, k=20, category=fav_cat)["items"]]
        ranks[u] = items.index(item.item_id) + 1 if item.item_id in items else None
    hits = sum(r is not None for r in ranks.values())
    fig.new_item = {"item": item.to_dict(), "indexed_s": round(indexed_s, 2),
                    "matching_users": len(ranks), "recommended_to": hits,
                    "ranks": ranks, "k": 20, "category_filter": fav_cat}
    say(f"    {item.item_id} ({fav_cat} / {fav_brand}) indexed by the function in "
        f"{indexed_s:.1f} s; in the top 20 ({fav_cat}) of {hits} of {len(ranks)} users "
        f"whose history is mostly {fav_cat}")
