"""The recommend function with RETRIEVAL=faiss: the training job's index loaded at cold start, new items."""

from __future__ import annotations

import numpy as np
import pytest

from recommender.config import Settings
from recommender.params import RecommendParams
from recommender.service import Recommender
from schemas.catalog import CatalogItem
from schemas.firestore import ItemDoc
from schemas.index_snapshot import IndexSnapshot
from scoring import ann
from scoring.rank import retriever_for
from testing.fakes import EmptyStore

pytest.importorskip("faiss")

N, D = 3000, 16




def _artefact(tmp_path, with_ann: bool = True):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, D)).astype(np.float32)
    emb = centres[rng.integers(20, size=N)] + 0.2 * rng.standard_normal((N, D)).astype(np.float32)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    snap = IndexSnapshot(version="v1", created_at=0, item_ids=np.array([f"i{i}" for i in range(N)]),
                         embeddings=emb, content=np.ones((N, 4), np.float32) / 2.0,
                         categories=np.array(["c"] * N), in_stock=np.ones(N, bool),
                         popularity=np.ones(N, np.float32))
    snap.save(tmp_path / "item_index.npz")
    if with_ann:
        ann.write_index(tmp_path, emb, "v1", nlist=30, nprobe=8)
    return tmp_path / "item_index.npz", emb


def _service(path, **settings) -> Recommender:
    service = Recommender(Settings(index_uri=str(path), ivf_min_items=1000, refresh_seconds=3600.0,
                                   **settings), EmptyStore())
    service.start()
    return service


def test_cold_start_loads_the_training_jobs_index(tmp_path):
    path, _ = _artefact(tmp_path)
    service = _service(path)
    assert isinstance(service.index.ivf, ann.FaissIvf) and service.index.ivf.nlist == 30
    assert service.index.ivf.nprobe == 8  # IVF_NPROBE=0 (default): the training job's choice, in the file
    assert _service(path, ivf_nprobe=24).index.ivf.nprobe == 24  # an explicit IVF_NPROBE wins
    assert service.health()[1]["retrieval"] == "faiss"
    body = service.recommend(RecommendParams(user_id=None, k=5, alpha=1.0, session_items=("i1", "i2")))
    assert body["strategy"] == "session" and len(body["items"]) == 5
    assert not {"i1", "i2"} & {i["item_id"] for i in body["items"]}


def test_missing_index_serves_the_exact_scan(tmp_path):
    path, _ = _artefact(tmp_path, with_ann=False)
    service = _service(path)
    assert service.index.ivf is None and service.health()[1]["retrieval"] == "exact"
    body = service.recommend(RecommendParams(user_id=None, k=5, alpha=1.0, session_items=("i1",)))
    assert len(body["items"]) == 5


def test_new_items_join_the_faiss_index_as_an_exact_tail(tmp_path):
    path, emb = _artefact(tmp_path)
    service = _service(path)
    index = service.index
    item = CatalogItem(item_id="new", title="t", category="c", brand="b", price=1.0, tags=(),
                       in_stock=True, updated_at=1)
    doc = ItemDoc(item=item, embedding=tuple(float(x) for x in emb[1] * 3.0), content_vector=None,
                  popularity=0.0, model_version="v1", indexed_at=5)
    grown = index.with_items([doc])
    assert isinstance(grown.ivf, ann.FaissIvf) and grown.ivf.tail.tolist() == [N]
    rows, _ = retriever_for(grown.embeddings, grown.ivf).search(emb[1], 20, None)
    assert grown.item_ids[rows[0]] == "new"
    assert index.ivf.tail.size == 0  # the served index is untouched until the swap
