"""Step 2: build the data and split it into history (for training) and a live stream.

The history trains the model; the live stream is replayed later as if it happened now.
"""

from __future__ import annotations

from scripts.demo.console import say, step
from scripts.demo.context import Context
from scripts.demo.data import DemoData, build_data


def prepare_data(ctx: Context) -> DemoData:
    """Build the data and say how much of it there is."""
    step(2, f"Data: {ctx.cfg.data}")
    data = build_data(ctx.cfg)
    users = {e.user_id for e in data.history}
    say(f"  {len(data.items)} items, {len(users)} users, {len(data.history)} history events "
        f"for training, {len(data.live)} held back for the live stream")
    ctx.fig.events["history"] = len(data.history)
    return data
