"""Show a few users' recommendations before and after their new views in the live stream.

The point of the demo: recommendations change within seconds of what a user does.
"""

from __future__ import annotations

from typing import Any

from scripts.demo.console import fmt, say
from scripts.demo.data import DemoData
from scripts.demo.figures import Figures


def show_changes(fig: Figures, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
                 data: DemoData) -> None:
    """Print what entered each user's recommendations; record it in ``fig.showcase``."""
    by_id = {i.item_id: i for i in data.items}
    for user, b in before.items():
        a = after[user]
        old = [i["item_id"] for i in b["items"]]
        new = [i["item_id"] for i in a["items"]]
        entered = [i for i in a["items"] if i["item_id"] not in old]
        say(f"\n  user {user}: strategy {b['strategy']} -> {a['strategy']}, "
            f"{len(entered)} of {len(new)} recommendations changed")
        for it in entered[:4]:
            meta = by_id.get(it["item_id"])
            say(f"    + {it['item_id']:<14} score {it['score']:.3f} (cf {fmt(it['cf_score'])}, "
                f"cb {fmt(it['cb_score'])}) {meta.category + ' / ' + meta.brand if meta else ''}")
        fig.showcase.append({"user_id": user, "before": old, "after": new,
                             "entered": entered, "strategy_before": b["strategy"],
                             "strategy_after": a["strategy"]})
