"""Locations of artefacts: a local path or a ``gs://bucket/path`` URI."""

from __future__ import annotations

GS_PREFIX = "gs://"


def is_gcs(uri: str | object) -> bool:
    """True for a ``gs://`` URI (a ``Path`` or other object is compared as its string)."""
    return str(uri).startswith(GS_PREFIX)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; raise ``ValueError`` for anything else."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, path = uri[len(GS_PREFIX):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, path
