"""Micro-benchmark: what a ``users/{id}`` document costs per history encoding.

Starts its own Firestore emulator (``--firestore-port``), then per round builds ``--users``
user documents with ``--history``-entry histories and, for each encoding in a shuffled order
(interleaved, so a change of machine load hits every encoding alike):

* ``maps``: the history as a list of ``{event_id, item_id, event_type, timestamp}`` maps
  (the layout before it was packed);
* ``json``: :class:`schemas.firestore.UserDoc` as stored now (one JSON string of rows);
* ``arrays``: four parallel arrays (``history_event_ids`` ...);
* ``bytes``: the same JSON as a bytes value.

it measures client encoding (``to_document`` + :func:`set_write_pb`), the commit (batches as
:func:`commit_in_batches` makes them) with the emulator's CPU over it (``/proc``), the read
(``get_all`` + ``to_dict``) and the decode to ``UserDoc``. Prints per-document means and writes
``reports/bench/user_docs.json``::

    python -m scripts.bench_user_docs --firestore-port 19020 --rounds 25
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.streaming import firestore_io
from schemas.firestore import HistoryEntry, UserDoc, pack_history, unpack_history
from scripts import local_stack
from scripts.bench_stream import group_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "bench" / "user_docs.json"


def make_docs(rng: random.Random, n_users: int, history: int, round_: int, now: int) -> list[UserDoc]:
    docs = []
    for u in range(n_users):
        hist = tuple(HistoryEntry(f"evt-{u}-{round_}-{i:03d}-{rng.getrandbits(32):08x}",
                                  f"item-{rng.randrange(5000)}", rng.choice(("view", "view", "add_to_cart")),
                                  now + round_ * 1000 + i) for i in range(history))
        docs.append(UserDoc(f"user-{u}", hist, hist[-1].event_id, hist[-1].timestamp, now + round_,
                            "v1", tuple(rng.random() for _ in range(16)), 100 + round_))
    return docs


def _with_history(d: UserDoc, **fields: Any) -> dict[str, Any]:
    doc = d.to_document()
    del doc["history"]
    doc.update(fields)
    return doc


def _from_history(doc: dict[str, Any], history: tuple[HistoryEntry, ...]) -> UserDoc:
    user = UserDoc.from_document({**doc, "history": None})
    return UserDoc(user.user_id, history, user.last_event_id, user.last_event_ts, user.updated_at,
                   user.model_version, user.embedding, user.event_count)


def _arrays(d: UserDoc) -> dict[str, Any]:
    h = d.history
    return _with_history(d, history_event_ids=[e.event_id for e in h],
                         history_item_ids=[e.item_id for e in h],
                         history_event_types=[e.event_type for e in h],
                         history_timestamps=[e.timestamp for e in h])


def _from_arrays(doc: dict[str, Any]) -> UserDoc:
    rows = zip(doc["history_event_ids"], doc["history_item_ids"], doc["history_event_types"],
               doc["history_timestamps"])
    return _from_history(doc, tuple(HistoryEntry(str(a), str(b), str(c), int(t)) for a, b, c, t in rows))


# name -> (encode, decode); a bytes-valued "history" is set on the raw protobuf after encoding
ENCODINGS: dict[str, tuple[Callable[[UserDoc], dict[str, Any]], Callable[[dict[str, Any]], UserDoc]]] = {
    "maps": (lambda d: _with_history(d, history=[h.to_document() for h in d.history]), UserDoc.from_document),
    "json": (UserDoc.to_document, UserDoc.from_document),
    "arrays": (_arrays, _from_arrays),
    "bytes": (lambda d: _with_history(d, history=pack_history(d.history).encode()),
              lambda doc: _from_history(doc, unpack_history(doc["history"]))),
}


def write_pbs(coll: Any, docs: list[UserDoc], encode: Callable[[UserDoc], dict[str, Any]]) -> list[Any]:
    pbs = []
    for d in docs:
        data = encode(d)
        raw = data.pop("history") if isinstance(data.get("history"), bytes) else None
        pb = firestore_io.set_write_pb(coll.document(d.user_id)._document_path, data)
        if raw is not None:
            type(pb).pb(pb).update.fields["history"].bytes_value = raw
        pbs.append(pb)
    return pbs


def commit_pbs(client: Any, pbs: list[Any], parallelism: int = 4) -> None:
    """The commits :func:`commit_in_batches` makes, for already built ``Write`` messages."""
    size = min(firestore_io.MAX_BATCH_WRITES,
               max(firestore_io.MIN_CONCURRENT_CHUNK, -(-len(pbs) // parallelism)))

    def commit(chunk: list[Any]) -> None:
        batch = client.batch()
        batch._add_write_pbs(chunk)
        batch.commit()

    futures = [firestore_io._commit_pool.submit(commit, pbs[i:i + size]) for i in range(0, len(pbs), size)]
    for f in futures:
        f.result()


def measure(client: Any, pgid: int, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    rng = random.Random(args.seed)
    now = int(time.time() * 1000)
    names_ = [n for n in ENCODINGS if n in args.encodings]
    out = {n: {k: [] for k in ("encode_s", "commit_s", "emulator_cpu_s", "read_s", "decode_s", "write_bytes")}
           for n in names_}
    for round_ in range(args.rounds + 1):  # round 0 warms up every encoding and is not counted
        docs = make_docs(rng, args.users, args.history, round_, now)
        rng.shuffle(names_)
        for name in names_:
            encode, decode = ENCODINGS[name]
            coll = client.collection(f"bench_users_{name}")
            t0 = time.perf_counter()
            pbs = write_pbs(coll, docs, encode)
            t1 = time.perf_counter()
            cpu0 = group_cpu_seconds([pgid])
            t2 = time.perf_counter()
            commit_pbs(client, pbs)
            t3 = time.perf_counter()
            cpu1 = group_cpu_seconds([pgid])
            t4 = time.perf_counter()
            stored = [s.to_dict() for s in client.get_all([coll.document(d.user_id) for d in docs])]
            t5 = time.perf_counter()
            decoded = {u.user_id: u for u in map(decode, stored)}
            t6 = time.perf_counter()
            if any(decoded[d.user_id] != d for d in docs):
                raise AssertionError(f"{name}: a document did not read back as written")
            if round_ == 0:
                continue
            for key, value in (("encode_s", t1 - t0), ("commit_s", t3 - t2), ("emulator_cpu_s", cpu1 - cpu0),
                               ("read_s", t5 - t4), ("decode_s", t6 - t5),
                               ("write_bytes", sum(type(p).pb(p).ByteSize() for p in pbs))):
                out[name][key].append(value)
    return out


def summarise(raw: dict[str, dict[str, list[float]]], n_docs: int) -> dict[str, dict[str, float]]:
    """Per-document means over all rounds (ms, bytes); emulator CPU ticks are 10 ms, so a sum
    over rounds is the only honest resolution."""
    summary = {}
    for name, series in raw.items():
        docs = n_docs * len(series["commit_s"])
        summary[name] = {f"{k[:-2]}_ms_per_doc" if k.endswith("_s") else "write_bytes_per_doc":
                         round(sum(v) / docs * (1000 if k.endswith("_s") else 1), 4)
                         for k, v in series.items()}
    if "maps" in summary:
        maps = summary["maps"]
        for s in summary.values():
            for key in ("emulator_cpu", "commit", "encode"):
                s[f"{key}_vs_maps"] = round(s[f"{key}_ms_per_doc"] / max(maps[f"{key}_ms_per_doc"], 1e-9), 3)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--firestore-port", type=int, default=19020)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--encodings", default=",".join(ENCODINGS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPORT))
    args = parser.parse_args(argv)
    args.encodings = args.encodings.split(",")

    config = local_stack.StackConfig(project="bench-user-docs", firestore_port=args.firestore_port)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-user-docs-"))
    pgid = local_stack.start_emulator("firestore", config, log_dir)
    try:
        os.environ.update(config.client_env())
        from google.cloud import firestore

        client = firestore.Client(project=config.project)
        load_before = os.getloadavg()[0]
        raw = measure(client, pgid, args)
        load_after = os.getloadavg()[0]
    finally:
        local_stack._kill_group(pgid)
        shutil.rmtree(log_dir, ignore_errors=True)

    summary = summarise(raw, args.users)
    print(f"users/{{id}} encodings: {args.users} docs x {args.rounds} rounds, "
          f"{args.history}-entry histories, load {load_before:.2f} -> {load_after:.2f} (per document, means)")
    print(f"  {'encoding':8} {'encode ms':>10} {'commit ms':>10} {'emu CPU ms':>11} {'read ms':>8} "
          f"{'decode ms':>10} {'bytes':>7}")
    for name, s in summary.items():
        print(f"  {name:8} {s['encode_ms_per_doc']:10.3f} {s['commit_ms_per_doc']:10.3f} "
              f"{s['emulator_cpu_ms_per_doc']:11.3f} {s['read_ms_per_doc']:8.3f} "
              f"{s['decode_ms_per_doc']:10.3f} {s['write_bytes_per_doc']:7.0f}")
    result = {"users": args.users, "history": args.history, "rounds": args.rounds,
              "cpu_count": os.cpu_count(), "load_avg_1m": [round(load_before, 2), round(load_after, 2)],
              "method": "per round, encodings in shuffled order on the same documents; "
                        "encode = to_document + set_write_pb, commit = batches of commit_in_batches' "
                        "size, emulator CPU from /proc over the commit, read = get_all + to_dict, "
                        "decode = to UserDoc; means per document",
              "per_doc": summary, "raw": raw}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
