"""The serving benchmark's IVF grids (numpy and faiss) on another trained artefact, with its users.

The synthetic catalogue's clusters are the generator's, so the grid (recall@10 vs exact, CPU) is
also measured on a model trained on real data to see that the served settings hold there.

    python -m bench.serving.ivf_recall --recall-on ARTIFACT_VERSION_DIR --data gowalla

Writes ``reports/bench/serving_ivf_<data>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from bench import measure
from bench.serving.compute import measure_faiss_grid, measure_ivf
from bench.serving.config import BenchConfig


def ivf_recall_on_artifact(artifact: Path, data: str, users: int = 1000, seed: int = 0,
                           nlists: tuple[int, ...] | None = None,
                           nprobes: tuple[int, ...] = (4, 8, 12, 16, 24, 32)) -> dict:
    """The IVF grid (recall@10 vs exact, CPU) on a trained artefact and users of its data set.

    Users: ``users`` drawn at random from the data set, each with their last ``history_length``
    items (in file order) as history, embedded by the artefact's query tower; the same grid as
    ``make bench-serving`` (:func:`bench.serving.compute.measure_ivf`).
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines.training.artifact import Towers
    from pipelines.training.train import load_input
    from schemas.firestore import HistoryEntry, UserDoc

    towers = Towers(artifact)
    snap = towers.item_index()
    inp = load_input(data)
    order = np.lexsort((np.arange(len(inp)), inp.timestamps, inp.user_ids.astype(str)))
    u_sorted, i_sorted = inp.user_ids.astype(str)[order], inp.item_ids.astype(str)[order]
    uniq, starts = np.unique(u_sorted, return_index=True)
    ends = np.append(starts[1:], len(u_sorted))
    pick = np.sort(np.random.default_rng(seed).choice(len(uniq), size=min(users, len(uniq)), replace=False))
    ids = [str(uniq[u]) for u in pick]
    hists = [i_sorted[max(starts[u], ends[u] - towers.history_length):ends[u]].tolist() for u in pick]
    emb = np.concatenate([towers.embed_users(ids[s:s + 2048], hists[s:s + 2048])
                          for s in range(0, len(ids), 2048)])
    docs = [UserDoc(user_id=u, history=tuple(HistoryEntry(event_id=f"e{j}", item_id=h, event_type="view",
                                                          timestamp=j) for j, h in enumerate(hist)),
                    last_event_id="e", last_event_ts=0, updated_at=0, model_version=snap.version,
                    embedding=tuple(float(x) for x in e), event_count=len(hist))
            for u, hist, e in zip(ids, hists, emb)]
    n = len(snap.item_ids)
    root = int(round(np.sqrt(n)))
    cfg = BenchConfig(items=n, dim=int(snap.embeddings.shape[1]),
                         ivf_nlists=nlists or (max(1, root * 4 // 5), root, 2 * root), ivf_nprobes=nprobes)
    grid = measure_ivf(cfg, snap, docs, sample_users=len(docs))
    faiss_grid = measure_faiss_grid(cfg, snap, docs, sample_users=len(docs))
    return {"artifact": str(artifact), "data": data, "items": n, "dim": cfg.dim,
            "users": len(docs), **grid, "faiss_grid": faiss_grid}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recall-on", metavar="ARTIFACT", required=True,
                   help="the trained artefact's version directory")
    p.add_argument("--data", default="gowalla")
    a = p.parse_args(argv)
    out = ivf_recall_on_artifact(Path(a.recall_on), a.data)
    path = measure.write_report({**out, "loadavg": measure.load_average()},
                                measure.REPORTS / f"serving_ivf_{Path(a.data).name}.json")
    for kind, grid in (("numpy IVF", out["grid"]), ("faiss", out["faiss_grid"]["grid"])):
        for g in grid:
            print(f"{kind} nlist {g['nlist']:>5} nprobe {g['nprobe']:>3}: recall@10 served "
                  f"{g['recall_at_10']:.3f} CF {g['cf_recall_at_10']:.3f}, "
                  f"retrieval {g['retrieval_ms']:.3f} ms CPU")
    print(f"exact retrieval {out['exact_retrieval_ms']:.3f} ms CPU; written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
