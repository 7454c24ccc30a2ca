"""The current model, hot-reloaded without restarting the pipeline.

Beam's model-update side input needs ``PeriodicImpulse`` (does not translate on the Python
DirectRunner in Beam 2.77) or a side input fed from Pub/Sub (stalled the pipeline here), and a
stateful ``DoFn`` cannot take a side input there either. So the equivalent used here: one
:class:`ModelWatcher` per worker process, shared by the embedding ``DoFn``\\s, reads
``models/current`` at most every ``refresh_seconds`` in a background thread, loads a new version
off the hot path and swaps it in atomically; the old towers keep serving until then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems

from schemas import uris
from schemas.content import ContentEncoder
from schemas.firestore import CurrentModelDoc

LOG = logging.getLogger(__name__)
METADATA_FILE = "metadata.json"
CONTENT_FILE = "content_encoder.json"


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model version: towers (``embed_users``/``embed_items``) and content encoder."""

    version: str
    towers: Any
    content_encoder: ContentEncoder | None


CurrentSource = Callable[[], "CurrentModelDoc | None"]
Loader = Callable[[str], LoadedModel]


def load_model(uri: str) -> LoadedModel:
    """Load towers and content encoder from an artefact directory (local path or ``gs://``)."""
    from pipelines.training.artifact import load_towers  # TensorFlow is imported only when a model is loaded

    towers = load_towers(uri)
    encoder = getattr(towers, "content_encoder", None)
    if encoder is None:
        with FileSystems.open(FileSystems.join(str(uri), CONTENT_FILE)) as f:
            encoder = ContentEncoder.from_json(f.read().decode("utf-8"))
    return LoadedModel(version=str(towers.version), towers=towers, content_encoder=encoder)


def latest_version_dir(model_dir: str) -> str | None:
    """``model_dir`` itself if it is an artefact, else its newest version subdirectory, else None."""
    if FileSystems.exists(FileSystems.join(model_dir, METADATA_FILE)):
        return model_dir
    pattern = FileSystems.join(model_dir, "*", METADATA_FILE)
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        return None
    newest = max(m.path for m in matches)  # versions are v<YYYYmmdd-HHMMSS>-<hash>: sortable
    return str(Path(newest).parent) if not uris.is_gcs(newest) else newest.rsplit("/", 1)[0]


class ModelWatcher:
    """Holds the current :class:`LoadedModel` and refreshes it from ``models/current``.

    Args:
        source: returns the ``models/current`` document (or ``None`` if there is none yet).
        loader: loads an artefact URI.
        refresh_seconds: how often the background thread polls ``source``.
        fallback_uri: artefact (or model directory) used while ``models/current`` does not exist.
    """

    def __init__(self, source: CurrentSource, loader: Loader = load_model,
                 refresh_seconds: float = 10.0, fallback_uri: str | None = None) -> None:
        self._source = source
        self._loader = loader
        self.refresh_seconds = refresh_seconds
        self._fallback_uri = fallback_uri
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0

    def current(self) -> LoadedModel | None:
        """The model to use now (never blocks on a load)."""
        return self._model

    def check_now(self) -> bool:
        """Poll once; load and swap if the current version changed. True if it swapped."""
        with self._lock:
            target = self._target()
            if target is None:
                return False
            version, uri = target
            if self._model is not None and self._model.version == version:
                return False
            model = self._loader(uri)
            self._model = model  # atomic swap: readers see the old or the new model, never half
            self.reloads += 1
            LOG.info("model watcher: now serving %s from %s", model.version, uri)
            return True

    def _target(self) -> tuple[str | None, str] | None:
        doc = self._source()
        if doc is not None:
            return doc.version, doc.artifact_uri
        if self._model is None and self._fallback_uri:
            uri = latest_version_dir(self._fallback_uri)
            if uri is not None:
                return None, uri
        return None

    def start(self) -> None:
        """Load the model now (best effort) and keep polling in a daemon thread."""
        if self._thread is not None:
            return
        self._poll_once_logged()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self._poll_once_logged()

    def _poll_once_logged(self) -> None:
        try:
            self.check_now()
        except Exception as e:  # a broken new version (any error) must not stop the old one serving
            LOG.warning("model watcher: keeping %s, reload failed: %s",
                        self._model.version if self._model else "no model", e)


_watchers: dict[tuple, ModelWatcher] = {}
_watchers_lock = threading.Lock()


def shared_watcher(key: tuple, factory: Callable[[], ModelWatcher]) -> ModelWatcher:
    """One started watcher per process and settings ``key`` (DoFn instances share it)."""
    with _watchers_lock:
        watcher = _watchers.get(key)
        if watcher is None:
            watcher = factory()
            watcher.start()
            _watchers[key] = watcher
        return watcher
