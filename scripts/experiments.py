"""Online experiments from the command line: create, stop, show (with the arms' figures), list.

Documents are ``experiments/{id}`` (:class:`schemas.experiments.Experiment`); the recommend
function picks a new, stopped or deleted one up within its ``REFRESH_SECONDS``; the pipeline
writes each arm's figures to ``stats/experiments/{id}/{arm}`` and the comparison to
``stats/experiments/{id}/_summary``::

    python -m scripts.experiments create --id alpha-test --arm control:0.5 --arm cf:0.5:alpha=1.0 \\
        [--start 2026-12-03T08:00:00Z] [--stop ...] [--description "..."] [--replace]
    python -m scripts.experiments create --id alpha-test --file spec.json   # {"arms": [...], ...}
    python -m scripts.experiments stop --id alpha-test
    python -m scripts.experiments show --id alpha-test
    python -m scripts.experiments list

An arm is ``name:share[:key=value,...]`` with keys ``alpha``, ``diversity`` (0..1), ``pool``
(int), ``retrieval`` (exact|ivf|faiss), ``model_version``. Firestore is the project's
(``--project``, else ``GOOGLE_CLOUD_PROJECT``), or the emulator at ``FIRESTORE_EMULATOR_HOST``.
Bad input exits with 2; an existing id without ``--replace``, or an unknown id, with 1.
The functions (``create_experiment``, ``stop_experiment``, ``read_results``, ...) are the demo's too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas import names
from schemas.clock import now_ms
from schemas.errors import InvalidRecord
from schemas.experiments import SUMMARY_DOC, Experiment, is_arm_doc, stats_path

EXIT_BAD_INPUT, EXIT_CONFLICT = 2, 1
_FLOAT_KEYS, _INT_KEYS, _STR_KEYS = ("alpha", "diversity"), ("pool",), ("retrieval", "model_version")


class ExperimentError(RuntimeError):
    """The experiment exists already (create without replace) or does not exist (stop, show)."""


# ----------------------------------------------------------------------------- parsing input
def parse_arm(spec: str) -> dict[str, Any]:
    """``name:share[:key=value,...]`` as an arm document; raise ``InvalidRecord`` saying why not."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0]:
        raise InvalidRecord("arm", f"{spec!r}: expected name:share[:key=value,...]")
    try:
        share = float(parts[1])
    except ValueError as e:
        raise InvalidRecord("arm", f"{spec!r}: share {parts[1]!r} is not a number") from e
    overrides: dict[str, Any] = {}
    for pair in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise InvalidRecord("arm", f"{spec!r}: override {pair!r} is not key=value")
        if key not in _FLOAT_KEYS + _INT_KEYS + _STR_KEYS:
            raise InvalidRecord("arm", f"{spec!r}: unknown override {key!r} (one of "
                                f"{', '.join(_FLOAT_KEYS + _INT_KEYS + _STR_KEYS)})")
        try:
            overrides[key] = (float(value) if key in _FLOAT_KEYS else int(value) if key in _INT_KEYS
                              else value.strip())
        except ValueError as e:
            kind = "an integer" if key in _INT_KEYS else "a number"
            raise InvalidRecord("arm", f"{spec!r}: {key}={value!r} is not {kind}") from e
    return {"name": parts[0], "share": share, "overrides": overrides}


def parse_time(value: str) -> int:
    """Epoch milliseconds, or an ISO-8601 time (UTC when it names no zone), as epoch milliseconds."""
    v = value.strip()
    if v.isdigit():
        return int(v)
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidRecord("time", f"{value!r} is neither epoch ms nor an ISO-8601 time") from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def experiment_from_args(args: argparse.Namespace, now: int | None = None) -> Experiment:
    """The experiment ``create``'s flags (or ``--file``) describe, validated (``from_document``)."""
    now = now_ms() if now is None else now
    if args.file:
        try:
            doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidRecord("file", f"cannot read {args.file}: {e}") from e
        if not isinstance(doc, dict):
            raise InvalidRecord("file", "expected a JSON object")
        doc = dict(doc)
        experiment_id = args.id or doc.pop("id", None)
        doc.pop("id", None)
    else:
        if not args.arm:
            raise InvalidRecord("arms", "give --arm name:share[:key=value,...] at least twice, or --file")
        experiment_id = args.id
        doc = {"arms": [parse_arm(a) for a in args.arm]}
    if not experiment_id:
        raise InvalidRecord("experiment_id", "give --id (or an \"id\" in the file)")
    if args.start:
        doc["start_ms"] = parse_time(args.start)
    doc.setdefault("start_ms", now)
    if args.stop:
        doc["stop_ms"] = parse_time(args.stop)
    if args.description:
        doc["description"] = args.description
    return Experiment.from_document(experiment_id, doc)


# ----------------------------------------------------------------------------- Firestore
def _doc(client: Any, experiment_id: str) -> Any:
    return client.collection(names.EXPERIMENTS).document(experiment_id)


def create_experiment(client: Any, experiment: Experiment, replace: bool = False) -> None:
    """Write ``experiments/{id}``; raise ``ExperimentError`` if it exists and not ``replace``."""
    from google.api_core import exceptions as gexc

    ref = _doc(client, experiment.id)
    if replace:
        ref.set(experiment.to_document())
        return
    try:
        ref.create(experiment.to_document())  # fails if the document exists: no overwrite race
    except gexc.Conflict as e:
        raise ExperimentError(f"experiments/{experiment.id} exists; use --replace to overwrite") from e


def get_experiment(client: Any, experiment_id: str) -> Experiment | None:
    """``experiments/{id}`` validated, or None when it does not exist."""
    snap = _doc(client, experiment_id).get()
    return Experiment.from_document(experiment_id, snap.to_dict() or {}) if snap.exists else None


def stop_experiment(client: Any, experiment_id: str, at_ms: int | None = None) -> Experiment:
    """Set ``stop_ms`` (now by default; never before ``start_ms``); return the stopped experiment."""
    experiment = get_experiment(client, experiment_id)
    if experiment is None:
        raise ExperimentError(f"experiments/{experiment_id} does not exist")
    stop = max(now_ms() if at_ms is None else at_ms, experiment.start_ms)
    _doc(client, experiment_id).update({"stop_ms": stop})
    return Experiment(experiment.id, experiment.arms, experiment.start_ms, stop, experiment.description)


def list_experiments(client: Any) -> list[tuple[str, Experiment | None, str | None]]:
    """Every ``experiments/*`` document: ``(id, experiment, None)``, or ``(id, None, why invalid)``."""
    out: list[tuple[str, Experiment | None, str | None]] = []
    for snap in client.collection(names.EXPERIMENTS).stream():
        try:
            out.append((snap.id, Experiment.from_document(snap.id, snap.to_dict() or {}), None))
        except InvalidRecord as e:
            out.append((snap.id, None, str(e)))
    return sorted(out, key=lambda r: r[0])


def read_results(client: Any, experiment_id: str) -> dict[str, Any]:
    """The pipeline's figures: ``{"arms": {arm: document}, "summary": document or None}``.

    Other documents (the pipeline's ``_dedup``) are bookkeeping (:func:`schemas.experiments.is_arm_doc`).
    """
    col = client.collection(stats_path(experiment_id))
    arms: dict[str, Any] = {}
    summary = None
    for snap in col.stream():
        if snap.id == SUMMARY_DOC:
            summary = snap.to_dict() or {}
        elif is_arm_doc(snap.id):
            arms[snap.id] = snap.to_dict() or {}
    return {"arms": arms, "summary": summary}


# ----------------------------------------------------------------------------- printing
def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt) if isinstance(v, float) else str(v)


def _ci(v: Any) -> str:
    return f"[{v[0]:.4f}, {v[1]:.4f}]" if isinstance(v, (list, tuple)) and len(v) == 2 else "-"


def format_experiment(experiment: Experiment, now: int | None = None) -> str:
    """The experiment's arms and schedule as lines of text."""
    now = now_ms() if now is None else now
    state = "running" if experiment.running(now) else ("stopped" if experiment.stop_ms is not None
                                                       and now >= experiment.stop_ms else "scheduled")
    lines = [f"experiment {experiment.id} ({state}): {experiment.description}".rstrip(": "),
             f"  start {_when(experiment.start_ms)}   stop {_when(experiment.stop_ms)}"]
    for a in experiment.arms:
        over = ", ".join(f"{k}={v}" for k, v in a.overrides.to_dict().items()) or "no overrides"
        lines.append(f"  arm {a.name:<16} share {a.share:.3f}   {over}")
    return "\n".join(lines)


def format_results(experiment: Experiment, results: dict[str, Any]) -> str:
    """The per-arm figures (and the comparison against the first arm) as a table."""
    head = (f"{'arm':<16}{'served':>8}{'shown':>9}{'clicks':>8}{'carts':>7}{'purch.':>7}"
            f"{'CTR':>9}  {'CTR 95% CI':<18}{'conv.':>9}  {'conv. 95% CI':<18}")
    lines = [head, "-" * len(head)]
    arms = results.get("arms", {})
    for a in experiment.arms:
        d = arms.get(a.name)
        if d is None:
            lines.append(f"{a.name:<16}  (no figures yet)")
            continue
        lines.append(f"{a.name:<16}{_num(d.get('served')):>8}{_num(d.get('shown')):>9}"
                     f"{_num(d.get('clicks')):>8}{_num(d.get('carts')):>7}{_num(d.get('purchases')):>7}"
                     f"{_num(d.get('ctr')):>9}  {_ci(d.get('ctr_ci95')):<18}{_num(d.get('conversion')):>9}"
                     f"  {_ci(d.get('conversion_ci95')):<18}")
    summary = results.get("summary") or {}
    for c in summary.get("comparisons") or []:
        lines.append(f"{c.get('arm')} vs {summary.get('control')}: "
                     f"CTR diff {_num(c.get('ctr_diff'), '+.4f')} (p {_num(c.get('ctr_p_value'))}), "
                     f"conversion diff "
                     f"{_num(c.get('conversion_diff'), '+.4f')} (p {_num(c.get('conversion_p_value'))})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.experiments",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--project", default=None, help="GCP project (default GOOGLE_CLOUD_PROJECT)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="write experiments/{id}")
    c.add_argument("--id", default=None)
    c.add_argument("--arm", action="append", default=[],
                   help="name:share[:key=value,...], repeated (e.g. control:0.5, cf:0.5:alpha=1.0)")
    c.add_argument("--file", default=None, help="a JSON document {arms, start_ms?, stop_ms?, description?}")
    c.add_argument("--start", default=None, help="epoch ms or ISO-8601 (default now)")
    c.add_argument("--stop", default=None, help="epoch ms or ISO-8601 (default: until stopped)")
    c.add_argument("--description", default="")
    c.add_argument("--replace", action="store_true", help="overwrite an existing experiment")
    for name, text in (("stop", "set stop_ms to now"), ("show", "the experiment and its figures")):
        sub.add_parser(name, help=text).add_argument("--id", required=True)
    sub.add_parser("list", help="every experiment")
    return p


def _client(project: str | None) -> Any:
    from google.cloud import firestore

    return firestore.Client(project=project or os.environ.get("GOOGLE_CLOUD_PROJECT")
                            or names.DEFAULT_PROJECT)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        experiment = experiment_from_args(args) if args.command == "create" else None
    except InvalidRecord as e:
        print(f"error: invalid experiment: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    client = _client(args.project)
    try:
        if experiment is not None:
            create_experiment(client, experiment, replace=args.replace)
            print(f"created experiments/{experiment.id}\n{format_experiment(experiment)}")
        elif args.command == "stop":
            print(f"stopped\n{format_experiment(stop_experiment(client, args.id))}")
        elif args.command == "show":
            found = get_experiment(client, args.id)
            if found is None:
                raise ExperimentError(f"experiments/{args.id} does not exist")
            print(format_experiment(found))
            print(format_results(found, read_results(client, args.id)))
        else:
            for experiment_id, found, problem in list_experiments(client):
                print(format_experiment(found) if found is not None
                      else f"experiment {experiment_id}: INVALID ({problem})")
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFLICT
    except InvalidRecord as e:
        print(f"error: experiments/{getattr(args, 'id', '')} is invalid: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
