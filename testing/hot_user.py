"""One user sending ``rate`` events per second: how often its ``users/{id}`` document is written.

Shared by ``tests/integration/test_streaming_hot_user.py`` (a short run) and ``python -m bench.crash``
(``--hot-user-seconds``). Writes are observed as the document's distinct commit times
(``update_time``), polled every ~10 ms: writes at least a second apart are all seen, and writes
closer than the poll interval would show as a gap below a second anyway.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from schemas import names
from schemas.events import ProductEvent
from testing.crash import CrashStack, Pacer


class WriteWatcher(threading.Thread):
    """Records each distinct ``update_time`` of one document."""

    def __init__(self, db: Any, user: str, poll_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.ref = db.collection(names.USERS).document(user)
        self.poll_s = poll_s
        self.times: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        last = None
        while not self._halt.is_set():
            snap = self.ref.get(field_paths=["event_count"])
            if snap.exists and snap.update_time != last:
                last = snap.update_time
                self.times.append(snap.update_time.timestamp())
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def run_hot_user(stack: CrashStack, db: Any, user: str, item: str, rate: float, seconds: float,
                 settle_timeout_s: float = 60.0) -> dict[str, Any]:
    """Start the pipeline, publish ``rate`` x ``seconds`` events of ``user``, wait until all are
    counted; the document's writes per second and the event count."""
    stack.start()
    prefix = f"hot-{uuid.uuid4().hex[:6]}"
    start_ms = int(time.time() * 1000)
    events = [ProductEvent(f"{prefix}-{i}", "view", user, item, start_ms + i)
              for i in range(int(rate * seconds))]
    stack.publish(events[:1])
    ref = db.collection(names.USERS).document(user)
    deadline = time.monotonic() + 120
    while not ref.get().exists:
        if time.monotonic() > deadline or stack.proc.poll() is not None:
            raise RuntimeError(f"the pipeline never wrote {user}:\n{stack.log()}")
        time.sleep(0.1)
    base = int(ref.get().to_dict()["event_count"])  # 1 (or more, if the document existed)
    watcher = WriteWatcher(db, user)
    watcher.start()
    try:
        t0 = time.time()
        pacer = Pacer(stack, events[1:], rate)
        pacer.start()
        pacer.join(timeout=seconds * 3 + 60)
        publish_s = time.time() - t0
        deadline = time.monotonic() + settle_timeout_s
        while time.monotonic() < deadline:
            if int(ref.get().to_dict()["event_count"]) - base >= len(events) - 1:
                break
            time.sleep(0.2)
        time.sleep(1.5)
    finally:
        watcher.stop()
        exit_code = stack.stop()
    writes = [t for t in watcher.times if t >= t0]
    gaps = [b - a for a, b in zip(writes, writes[1:])]
    per_second: dict[int, int] = {}
    for t in writes:
        per_second[int(t - t0)] = per_second.get(int(t - t0), 0) + 1
    counted = int(ref.get().to_dict()["event_count"]) - base + 1
    return {"rate_per_s": rate, "seconds": seconds, "publish_s": round(publish_s, 1),
            "published": len(events), "counted": counted, "writes": len(writes),
            "writes_per_s": round(len(writes) / max(writes[-1] - t0, 1e-6), 2) if writes else 0.0,
            "max_writes_in_a_second": max(per_second.values()) if per_second else 0,
            "min_gap_s": round(min(gaps), 3) if gaps else None, "last_exit_code": exit_code}
