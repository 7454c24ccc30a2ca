"""Step 1: start fresh Pub/Sub and Firestore emulators on the demo's own ports.

Own ports and state so the demo neither uses nor disturbs a stack started by ``make stack``.
"""

from __future__ import annotations

import os
import time

from scripts import local_stack
from scripts.demo.console import say, step
from scripts.demo.context import Context


def start_emulators(ctx: Context) -> None:
    """Start both emulators, stop them at the end of the run, point the clients at them."""
    step(1, "Local GCP stack: Pub/Sub and Firestore emulators")
    state_dir = ctx.cfg.work_dir / "stack"
    local_stack.stop(state_dir)  # a previous run that was killed hard
    t0 = time.monotonic()
    state = local_stack.start(ctx.stack, state_dir=state_dir)
    ctx.exits.callback(local_stack.stop_state, state)
    os.environ.update(ctx.env)
    ctx.fig.timings_s["emulators_start"] = round(time.monotonic() - t0, 2)
    say(f"  Pub/Sub {ctx.stack.pubsub_host}, Firestore {ctx.stack.firestore_host} "
        f"({ctx.fig.timings_s['emulators_start']} s)")
