"""Settings of the recommend function, read once from environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass

from httpfn.settings import ConfigError, env_choice, env_float, env_int, env_str
from schemas import names

__all__ = ["ConfigError", "Settings"]


@dataclass(frozen=True)
class Settings:
    """Everything tunable about serving; defaults suit the local stack and the cloud alike."""

    project: str = names.DEFAULT_PROJECT
    database: str = "(default)"
    users_collection: str = names.USERS
    items_collection: str = names.ITEMS
    models_collection: str = names.MODELS
    stats_collection: str = names.STATS
    current_model_doc: str = names.CURRENT_MODEL_DOC
    trending_doc: str = names.TRENDING_DOC
    index_uri: str = ""  # used only when models/current cannot be read at cold start
    default_alpha: float = 0.7
    default_diversity: float = 0.0  # MMR λ of a request without one (0: the top-k by hybrid score)
    default_k: int = 10
    max_k: int = 100
    min_pool: int = 200  # candidate pool for hybrid ranking: max(min_pool, pool_factor * k)
    pool_factor: int = 4
    max_session_items: int = 50
    max_categories: int = 20
    refresh_seconds: float = 5.0
    trending_ttl_seconds: float = 30.0
    firestore_timeout_seconds: float = 1.0
    items_poll_limit: int = 500
    # Retrieval: "faiss" (the training job's compiled IVF index, loaded with the snapshot), "ivf"
    # (numpy partitions built at index load) or "exact" (full scan). Either approximate index applies
    # only to catalogues of at least ivf_min_items; ivf_nlist 0 = about sqrt(N) (numpy IVF only);
    # ivf_nprobe: partitions probed per request (both); 0 = the index's own (faiss: chosen by the
    # training job for its size, scoring.ann.default_nprobe; numpy IVF: the same rule).
    retrieval: str = "faiss"
    ivf_nlist: int = 0
    ivf_nprobe: int = 0
    ivf_min_items: int = 20_000
    # When the IVF partitions of a freshly loaded snapshot are built: "startup" (cold start, before
    # gunicorn forks, shared by the workers) or "background" (each process, after its first request).
    ivf_build: str = "startup"
    experiments_collection: str = names.EXPERIMENTS
    # Served records (recommender/served.py): one per answered list on this topic (a name in
    # ``project``, or projects/P/topics/T); "" = off. Queued without blocking (at most
    # served_queue_max, then dropped and counted), published in batches by a background thread.
    served_topic: str = ""
    served_queue_max: int = 10_000
    served_batch_max: int = 500
    served_batch_latency_seconds: float = 0.25  # how long a batch waits for more records
    served_publish_timeout_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> Settings:
        """Read and validate the settings; raise ``ConfigError`` naming a bad variable."""
        return cls(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")
            or names.DEFAULT_PROJECT,
            database=env_str("FIRESTORE_DATABASE", "(default)"),
            users_collection=env_str("USERS_COLLECTION", names.USERS),
            items_collection=env_str("ITEMS_COLLECTION", names.ITEMS),
            models_collection=env_str("MODELS_COLLECTION", names.MODELS),
            stats_collection=env_str("STATS_COLLECTION", names.STATS),
            index_uri=env_str("INDEX_URI", ""),
            default_alpha=env_float("DEFAULT_ALPHA", 0.7, 0.0, 1.0),
            default_diversity=env_float("DEFAULT_DIVERSITY", 0.0, 0.0, 1.0),
            default_k=env_int("DEFAULT_K", 10, 1, 100),
            min_pool=env_int("MIN_POOL", 200, 1, 100_000),
            pool_factor=env_int("POOL_FACTOR", 4, 1, 100),
            max_session_items=env_int("MAX_SESSION_ITEMS", 50, 1, 1000),
            max_categories=env_int("MAX_CATEGORIES", 20, 1, 1000),
            refresh_seconds=env_float("REFRESH_SECONDS", 5.0, 0.0, 86_400.0),
            trending_ttl_seconds=env_float("TRENDING_TTL_SECONDS", 30.0, 0.0, 86_400.0),
            firestore_timeout_seconds=env_float("FIRESTORE_TIMEOUT_SECONDS", 1.0, 0.05, 60.0),
            items_poll_limit=env_int("ITEMS_POLL_LIMIT", 500, 1, 10_000),
            retrieval=env_choice("RETRIEVAL", "faiss", ("faiss", "ivf", "exact")),
            ivf_nlist=env_int("IVF_NLIST", 0, 0, 1_000_000),
            ivf_nprobe=env_int("IVF_NPROBE", 0, 0, 1_000_000),
            ivf_min_items=env_int("IVF_MIN_ITEMS", 20_000, 1, 1_000_000_000),
            ivf_build=env_choice("IVF_BUILD", "startup", ("startup", "background")),
            experiments_collection=env_str("EXPERIMENTS_COLLECTION", names.EXPERIMENTS),
            served_topic=env_str("SERVED_TOPIC", "").strip(),
            served_queue_max=env_int("SERVED_QUEUE_MAX", 10_000, 1, 10_000_000),
            served_batch_max=env_int("SERVED_BATCH_MAX", 500, 1, 1000),
            served_batch_latency_seconds=env_float("SERVED_BATCH_LATENCY_SECONDS", 0.25, 0.0, 10.0),
            served_publish_timeout_seconds=env_float("SERVED_PUBLISH_TIMEOUT_SECONDS", 5.0, 0.1, 600.0),
        )

    @property
    def served_topic_path(self) -> str | None:
        """``SERVED_TOPIC`` as a full topic path, or None when served records are off."""
        if not self.served_topic:
            return None
        if self.served_topic.startswith("projects/"):
            return self.served_topic
        return f"projects/{self.project}/topics/{self.served_topic}"
