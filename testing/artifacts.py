"""Trained two-tower artefacts on synthetic data, cached by model code and settings.

Training takes seconds (tests) to minutes (the serving benchmark's 100k-item catalogue), so every
artefact is trained once per version of the model code and of its settings, then reused from
``artifacts/cache/<key>/``: one cache for the tests and the benchmarks, keyed one way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "artifacts" / "cache"
# the files whose change makes a cached artefact stale
MODEL_CODE = ("pipelines/training/model.py", "pipelines/training/train.py", "pipelines/training/artifact.py",
              "pipelines/data/synthetic.py")


@dataclass(frozen=True)
class SyntheticModelSpec:
    """What to generate and train: the synthetic generator's and the model's settings."""

    users: int = 200
    items: int = 100
    events_per_user: int = 12
    categories: int = 12
    brands: int = 40
    dim: int = 16
    epochs: int = 1
    batch_size: int = 256
    seed: int = 0

    def key(self) -> str:
        """A hash of the model code files and these settings: the cache directory's name."""
        code = b"".join((ROOT / f).read_bytes() for f in MODEL_CODE)
        blob = code + json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def with_seed(self, seed: int) -> SyntheticModelSpec:
        return replace(self, seed=seed)


TINY = SyntheticModelSpec()


@dataclass
class TrainedArtifact:
    """A freshly trained artefact, with the training data it came from (for callers that derive more)."""

    version_dir: Path
    data: Any  # pipelines.training.train.TrainingInput
    meta: dict[str, Any]


def cache_dir(spec: SyntheticModelSpec, root: Path = CACHE) -> Path:
    return root / spec.key()


def existing_artifact(model_dir: str | Path) -> Path | None:
    """The newest version directory under ``model_dir``, if any."""
    versions = sorted(p.parent for p in Path(model_dir).glob("*/metadata.json"))
    return versions[-1] if versions else None


def train_artifact(spec: SyntheticModelSpec, model_dir: str | Path) -> TrainedArtifact:
    """Generate the synthetic data set, train on it and save the artefact under ``model_dir``."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines.data import generate_synthetic
    from pipelines.training.model import ModelConfig
    from pipelines.training.train import TrainingInput, save, train

    t0 = time.perf_counter()
    dataset = generate_synthetic(n_users=spec.users, n_items=spec.items,
                                 mean_events_per_user=spec.events_per_user, seed=spec.seed,
                                 n_categories=spec.categories, n_brands=spec.brands)
    gen_s = time.perf_counter() - t0
    data = TrainingInput.from_dataset(dataset)
    t1 = time.perf_counter()
    trained = train(data, ModelConfig(epochs=spec.epochs, dim=spec.dim, batch_size=spec.batch_size,
                                      seed=spec.seed))
    train_s = time.perf_counter() - t1
    version_dir = save(trained, model_dir)
    meta = {"spec": asdict(spec), "generate_s": gen_s, "train_s": train_s, "interactions": len(data),
            "final_loss": trained.losses[-1] if trained.losses else None, "version": version_dir.name}
    return TrainedArtifact(version_dir=version_dir, data=data, meta=meta)


def cached_artifact(spec: SyntheticModelSpec = TINY, root: Path = CACHE) -> Path:
    """The artefact's version directory for ``spec``: trained on first use, then reused."""
    model_dir = cache_dir(spec, root)
    return existing_artifact(model_dir) or train_artifact(spec, model_dir).version_dir


def tiny_artifact(seed: int = 0) -> Path:
    """A tiny artefact (200 users, 100 items, dim 16, one epoch) for pipeline tests and bench-stream."""
    return cached_artifact(TINY.with_seed(seed))
