"""Rewrite the event archive without the events its tombstones forget (data-protection requests).

A forget request leaves a tombstone line in the archive (``{"kind": "forget", "user_id",
"timestamp", ...}``); the training reader already drops the user's events at or before it. This
command removes them from the files themselves: every file holding such an event is rewritten
without it (to a temporary file in the same directory, then ``os.replace``: a reader sees the
old or the new file, never half of one). Tombstones are kept, so the training reader and a later
compaction still honour them; a second run finds nothing to remove (idempotent). Files modified
less than ``--min-age-seconds`` ago are left alone, since the DirectRunner pipeline may still be
appending to them (the next run compacts them).

    python -m scripts.archive_compact --archive-dir artifacts/events [--min-age-seconds 300]

Prints a JSON report: files scanned, files rewritten, events removed, tombstones, users. Local
directories only (a ``gs://`` archive would rewrite objects the same way; not implemented).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.data.eventio import forget_times, iter_records_jsonl, open_text
from schemas.events import ForgetRequest, ProductEvent


@dataclass
class CompactionReport:
    """What a compaction did."""

    files_scanned: int = 0
    files_rewritten: int = 0
    files_skipped_recent: int = 0
    events_removed: int = 0
    tombstones: int = 0
    forgotten_users: int = 0


def archive_files(directory: Path) -> list[Path]:
    """The archive's JSON-lines files (as :func:`pipelines.data.load_dataset` finds them)."""
    return sorted(p for pattern in ("*.jsonl", "*.jsonl.gz") for p in directory.rglob(pattern)
                  if p.is_file() and not p.name.startswith("items"))


def _line(record: ProductEvent | ForgetRequest) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))


def _rewrite(path: Path, records: Sequence[ProductEvent | ForgetRequest]) -> None:
    """Replace ``path`` atomically by ``records``, one line each."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".compact-", suffix=path.name)
    os.close(fd)
    try:
        with open_text(tmp, "w") as f:  # gzip again if the name ends with .gz
            f.writelines(_line(r) + "\n" for r in records)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compact(directory: str | Path, min_age_s: float = 0.0, now_s: float | None = None) -> CompactionReport:
    """Remove forgotten events from every archive file under ``directory``; see the module doc."""
    directory = Path(directory)
    files = archive_files(directory)
    contents = {p: list(iter_records_jsonl(p)) for p in files}
    forgotten = forget_times(r for records in contents.values() for r in records)
    report = CompactionReport(files_scanned=len(files), forgotten_users=len(forgotten),
                              tombstones=sum(isinstance(r, ForgetRequest)
                                             for records in contents.values() for r in records))
    now = time.time() if now_s is None else now_s
    for path, records in contents.items():
        kept = [r for r in records if isinstance(r, ForgetRequest)
                or r.timestamp > forgotten.get(r.user_id, 0)]
        if len(kept) == len(records):
            continue
        if now - path.stat().st_mtime < min_age_s:
            report.files_skipped_recent += 1
            continue
        _rewrite(path, kept)
        report.files_rewritten += 1
        report.events_removed += len(records) - len(kept)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive-dir", required=True, help="the pipeline's --archive-dir (local)")
    parser.add_argument("--min-age-seconds", type=float, default=300.0,
                        help="leave files modified more recently alone (the pipeline may append)")
    args = parser.parse_args(argv)
    if not Path(args.archive_dir).is_dir():
        parser.error(f"{args.archive_dir}: not a directory")
    print(json.dumps(asdict(compact(args.archive_dir, args.min_age_seconds)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
