"""The cold-start A/B benchmark's baseline file: the old dense layout, readable by both loaders."""

from __future__ import annotations

import numpy as np

from schemas.content import SparseRows
from schemas.index_snapshot import IndexSnapshot
from scripts.bench_serving_coldstart import production_env, save_dense_layout


def test_dense_layout_is_the_old_format_and_still_loads(tmp_path):
    dense = np.zeros((3, 5), dtype=np.float32)
    dense[0, 1], dense[2, [0, 4]] = 1.0, [0.6, 0.8]
    snap = IndexSnapshot(version="v1", created_at=5, item_ids=np.array(["a", "b", "c"]),
                         embeddings=np.eye(3, 4, dtype=np.float32), content=SparseRows.from_dense(dense),
                         categories=np.array(["x", "y", "x"]), in_stock=np.array([True, False, True]),
                         popularity=np.array([3.0, 2.0, 1.0], dtype=np.float32))
    path = tmp_path / "item_index.npz"
    save_dense_layout(snap, path)
    with np.load(path) as z:
        assert "content_indptr" not in z.files
        np.testing.assert_array_equal(z["content"], dense)
    back = IndexSnapshot.load(path)
    np.testing.assert_array_equal(back.content.to_dense(), dense)
    assert back.item_ids.tolist() == ["a", "b", "c"] and back.in_stock.tolist() == [True, False, True]


def test_production_env_reads_serving_env():
    env = production_env()
    assert int(env["WORKERS"]) >= 1 and int(env["THREADS"]) >= 1 and env["RETRIEVAL"] in ("ivf", "exact")
