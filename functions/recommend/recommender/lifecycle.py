"""The item index's lifecycle: cold start, hot reload, item polling, ANN load / IVF build, trending, health.

One :class:`IndexManager` per process. It loads the current model's item-index snapshot
at cold start, then (at most every ``refresh_seconds``, in a background thread started
by a request, so no request waits) follows ``models/current`` to a new version and
polls ``items`` for documents indexed since, swapping in a new :class:`ItemIndex`.
Every swap is one reference assignment, so a request reads one consistent index.

The same refresh reads ``experiments/*`` (:mod:`recommender.experiments`) and keeps loaded the
snapshot of every model version an experiment arm names (``overrides.model_version``): read from
``models/{version}``, served as that snapshot alone (items added since go to the current version's
index), retried after :data:`ARM_RETRY_SECONDS` when it cannot be loaded, dropped when no running
or pending arm names it. Until it is loaded its arm is ranked by the current version.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from schemas.firestore import TrendingDoc
from scoring.ann import AnnUnavailable

from .config import Settings
from .experiments import ExperimentParser, ExperimentSet, ExperimentStore
from .index import ItemIndex, SnapshotLoadError, read_snapshot
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

ARM_RETRY_SECONDS = 60.0  # an arm's model version that failed to load is tried again after this


class IndexManager:
    """Holds the current :class:`ItemIndex` and trending list, and keeps them fresh."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._index: ItemIndex | None = None
        self._seen_at_through: frozenset[str] = frozenset()
        self._trending: TrendingDoc | None = None
        self._trending_at = 0.0
        self._last_check = 0.0
        self._refresh_lock = threading.Lock()
        self._defer_ivf = False
        self._ivf_thread: threading.Thread | None = None
        self._experiments = ExperimentSet()
        self._parser = ExperimentParser()
        self._arm_indexes: dict[str, ItemIndex] = {}
        self._arm_retry_at: dict[str, float] = {}

    @property
    def index(self) -> ItemIndex | None:
        """The index requests rank with (None before the first snapshot is loaded)."""
        return self._index

    @property
    def trending(self) -> TrendingDoc | None:
        """The last ``stats/trending`` read (None before the pipeline wrote one)."""
        return self._trending

    @property
    def experiments(self) -> ExperimentSet:
        """The experiments last read from ``experiments/*`` (empty before the first read)."""
        return self._experiments

    def index_for(self, version: str | None) -> ItemIndex | None:
        """The index of ``version`` if it is loaded (current or an arm's), else the current one."""
        index = self._index
        if version is None or (index is not None and version == index.version):
            return index
        return self._arm_indexes.get(version, index)

    @property
    def ivf_thread(self) -> threading.Thread | None:
        """The background IVF build started by :meth:`maybe_build_ivf`, if any."""
        return self._ivf_thread

    # ------------------------------------------------------------------ loading
    def start(self) -> None:
        """Cold start: load the current model's snapshot (or ``INDEX_URI``) and trending.

        With ``IVF_BUILD=background`` the IVF partitions are not built here: the first request of
        each serving process starts that in the background (gunicorn forks its workers after this
        import, and a thread does not cross a fork) and requests use the exact scan until it is
        swapped in. With ``startup`` (default) they are built now, once, shared by the workers.
        """
        self._defer_ivf = self.settings.ivf_build == "background"
        try:
            self.refresh()
            if self._index is None and self.settings.index_uri:
                try:
                    snap = read_snapshot(self.settings.index_uri)
                    self.install(self.with_ann_loaded(ItemIndex.from_snapshot(snap), self.settings.index_uri,
                                                      snap.version))
                except SnapshotLoadError as e:
                    log.error("cold start: %s", e)
        finally:
            self._defer_ivf = False

    def install(self, index: ItemIndex, seen: frozenset[str] = frozenset()) -> None:
        """Serve ``index`` from now on (with its IVF partitions built unless deferred)."""
        if not self._defer_ivf:
            index = self.with_ivf_built(index)
        self._index, self._seen_at_through = index, seen  # one reference swap each: atomic

    # ------------------------------------------------------------------ ANN / IVF
    def with_ann_loaded(self, index: ItemIndex, index_uri: str, snapshot_version: str) -> ItemIndex:
        """With ``RETRIEVAL=faiss``: ``index`` with the training job's faiss index next to the snapshot.

        Loaded, never built: a missing or mismatched file leaves the exact scan (logged as an error).
        """
        s = self.settings
        if s.retrieval != "faiss" or index.size < s.ivf_min_items:
            return index
        t = time.perf_counter()
        try:
            index = index.with_ann(index_uri, snapshot_version, s.ivf_nprobe or None)
        except AnnUnavailable as e:
            log.error("serving the exact scan: %s", e)
            return index
        log.info("faiss index: %d partitions, nprobe %d, loaded in %.2f s", index.ivf.nlist,
                 index.ivf.nprobe, time.perf_counter() - t)
        return index

    def with_ivf_built(self, index: ItemIndex) -> ItemIndex:
        """``index`` with the configured retrieval: IVF partitions built here (at load, not per request).

        ``RETRIEVAL=exact``, or a catalogue under ``IVF_MIN_ITEMS``, leaves it an exact scan.
        """
        s = self.settings
        if s.retrieval == "ivf" and index.ivf is None and index.size >= s.ivf_min_items:
            t = time.perf_counter()
            index = index.with_ivf(s.ivf_nlist, s.ivf_nprobe)
            log.info("IVF index: %d partitions, nprobe %d, built in %.2f s", index.ivf.nlist,
                     index.ivf.nprobe, time.perf_counter() - t)
        elif s.retrieval == "exact" and index.ivf is not None:
            index = dataclasses.replace(index, ivf=None)
        return index

    def _ivf_due(self, index: ItemIndex | None) -> bool:
        s = self.settings
        return (s.retrieval == "ivf" and index is not None and index.ivf is None
                and index.size >= s.ivf_min_items)

    def maybe_build_ivf(self) -> bool:
        """Start building the IVF partitions of the current index in the background if due."""
        if not self._ivf_due(self._index) or (self._ivf_thread is not None and self._ivf_thread.is_alive()):
            return False
        self._ivf_thread = threading.Thread(target=self._build_ivf, name="ivf-build", daemon=True)
        self._ivf_thread.start()
        return True

    def _build_ivf(self) -> None:
        index = self._index
        if not self._ivf_due(index):
            return
        built = self.with_ivf_built(index)
        with self._refresh_lock:
            if self._index is index:  # a refresh in between installed its own (already with IVF)
                self._index = built

    # ------------------------------------------------------------------ refreshing
    def refresh(self) -> dict[str, Any]:
        """Follow ``models/current``, apply new items, renew trending; return what changed."""
        changed: dict[str, Any] = {"version": None, "items": 0, "trending": False}
        with self._refresh_lock:
            self._last_check = self._clock()
            try:
                changed["version"] = self._follow_current_model()
                changed["items"] = self._apply_new_items()
                changed["trending"] = self._renew_trending(force=False)
            except StoreUnavailable as e:
                log.warning("refresh skipped: %s", e)
            except SnapshotLoadError as e:
                log.error("refresh: %s", e)
            changed.update(self._refresh_experiments())
        return changed

    def _refresh_experiments(self) -> dict[str, Any]:
        """Re-read ``experiments/*`` and load the arms' model versions; a failed read keeps the last set."""
        store = self.store
        if not isinstance(store, ExperimentStore):
            return {}
        try:
            self._experiments = self._parser.parse(store.list_experiments())
        except StoreUnavailable as e:
            log.warning("experiments not re-read, keeping the last %d: %s",
                        len(self._experiments.experiments), e)
        return {"experiments": len(self._experiments.experiments),
                "arm_versions": self._load_arm_versions(store)}

    def _load_arm_versions(self, store: ExperimentStore) -> list[str]:
        """Load the snapshots of the versions running arms name; drop the ones none names."""
        current = self._index.version if self._index is not None else None
        wanted = self._experiments.model_versions(int(self._clock() * 1000)) - {current}
        keep = {v: ix for v, ix in self._arm_indexes.items() if v in wanted}
        loaded = []
        for version in sorted(wanted - keep.keys()):
            if self._clock() < self._arm_retry_at.get(version, 0.0):
                continue
            try:
                model = store.get_model(version)
                if model is None:
                    raise SnapshotLoadError(f"models/{version} does not exist")
                keep[version] = self.with_ivf_built(self.load_version(model.index_uri, version))
                loaded.append(version)
                log.info("loaded arm model %s: %d items", version, keep[version].size)
            except (StoreUnavailable, SnapshotLoadError) as e:
                self._arm_retry_at[version] = self._clock() + ARM_RETRY_SECONDS
                log.error("arm model %s not loaded (its arm is ranked by the current version): %s",
                          version, e)
        self._arm_indexes = keep  # one reference swap
        return loaded

    def maybe_refresh(self) -> bool:
        """Start a background refresh if one is due and none is running; never waits."""
        if self._clock() - self._last_check < self.settings.refresh_seconds:
            return False
        if self._refresh_lock.locked():
            return False
        self._last_check = self._clock()
        threading.Thread(target=self.refresh, name="index-refresh", daemon=True).start()
        return True

    def _follow_current_model(self) -> str | None:
        current = self.store.get_current_model()
        if current is None or (self._index is not None and current.version == self._index.version):
            return None
        # The publish step rewrites every item of the version (indexed_at = publish time) before it
        # switches models/current; those are in the snapshot already, so polling starts at the switch.
        index = self.load_version(current.index_uri, current.version, items_from=current.switched_at)
        self.install(index)
        log.info("loaded model %s: %d items", current.version, index.size)
        return current.version

    def load_version(self, index_uri: str, version: str, items_from: int | None = None) -> ItemIndex:
        """The snapshot at ``index_uri`` as ``version``'s index, with its ANN index loaded.

        Why: ``models/current`` and an experiment arm's ``models/{version}`` load alike.
        """
        snap = read_snapshot(index_uri)
        snapshot_version = snap.version
        if snap.version != version:
            log.warning("snapshot %s says version %s; serving it as %s", index_uri, snap.version, version)
            snap.version = version
        return self.with_ann_loaded(ItemIndex.from_snapshot(snap, items_from=items_from), index_uri,
                                    snapshot_version)

    def _apply_new_items(self) -> int:
        index = self._index
        if index is None:
            return 0
        rows = self.store.items_since(index.updated_through, self.settings.items_poll_limit)
        fresh = [(i, t, d) for i, t, d in rows
                 if not (t == index.updated_through and i in self._seen_at_through)]
        if not fresh:
            return 0
        docs = [d for _, _, d in fresh if d is not None]
        through = max(index.updated_through, max(t for _, t, _ in fresh))
        seen = frozenset(i for i, t, _ in rows if t == through)
        new_index = dataclasses.replace(index.with_items(docs), updated_through=through)
        if self._index is index:  # a version switch in between wins
            self.install(new_index, seen)
        return len(docs)

    def _renew_trending(self, force: bool) -> bool:
        if not force and self._clock() - self._trending_at < self.settings.trending_ttl_seconds:
            return False
        doc = self.store.get_trending()
        self._trending, self._trending_at = doc, self._clock()
        return True

    def ensure_trending(self) -> None:
        """Read trending once if it never was (a cold start whose read failed); never raises."""
        if self._trending_at != 0.0:
            return
        try:
            self._renew_trending(force=True)
        except StoreUnavailable as e:
            log.warning("trending unavailable: %s", e)
            self._trending_at = self._clock()

    # ------------------------------------------------------------------ health
    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status, body)``: 200 when an index (or at least trending) is available, else 503."""
        index, now, trending = self._index, self._clock(), self._trending
        has_trending = trending is not None and bool(trending.items)
        body: dict[str, Any] = {
            "status": "ok" if index is not None else ("degraded" if has_trending else "unavailable"),
            "model_version": index.version if index is not None else None,
            "item_count": index.size if index is not None else 0,
            "items_added_since_snapshot": index.added if index is not None else 0,
            "index_created_at": index.created_at if index is not None else None,
            "index_age_s": round(now - index.created_at / 1000.0, 3) if index is not None else None,
            "index_loaded_at": round(index.loaded_at, 3) if index is not None else None,
            "items_indexed_through": index.updated_through if index is not None else None,
            "trending_items": len(trending.items) if trending is not None else 0,
            "retrieval": index.retrieval if index is not None else None,
            "experiments": [e.id for e in self._experiments.running(int(now * 1000))],
            "arm_model_versions": sorted(self._arm_indexes),
        }
        return (200 if index is not None or has_trending else 503), body
