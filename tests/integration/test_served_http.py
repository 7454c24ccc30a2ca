"""served_http equals served: the real recommend function over HTTP, on the Firestore emulator,
returns the lists the offline served ranking computes, and so the same metrics (to 1e-6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration

from pipelines.data import generate_synthetic  # noqa: E402
from pipelines.evaluation import served  # noqa: E402
from pipelines.evaluation.served_http import served_http_metrics  # noqa: E402
from pipelines.evaluation.splits import temporal_split  # noqa: E402
from pipelines.training.artifact import load_towers  # noqa: E402
from pipelines.training.model import ModelConfig  # noqa: E402
from pipelines.training.train import TrainingInput, save, train  # noqa: E402
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot  # noqa: E402
from scoring.rank import RetrievalConfig, ScoringDefaults  # noqa: E402

DEFAULTS = ScoringDefaults(alpha=0.6, min_pool=50, alpha_by_history=((0, 0.6), (8, 0.9)))


def test_served_http_equals_served(firestore_client, emulators, tmp_path):
    ds = generate_synthetic(n_users=260, n_items=150, mean_events_per_user=14, seed=3)
    split = temporal_split(ds)
    r = split.train_rows
    data = TrainingInput(user_ids=np.asarray(r.user_ids, dtype=object)[r.user_idx],
                         item_ids=np.asarray(r.item_ids, dtype=object)[r.item_idx],
                         timestamps=np.asarray(r.timestamps), catalogue=list(ds.items))
    trained = train(data, ModelConfig(dim=8, history_length=10, epochs=1, batch_size=256))
    path = save(trained, tmp_path, serving_defaults=DEFAULTS.to_dict())
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["serving_defaults"] == DEFAULTS.to_dict()

    config = RetrievalConfig(backend="exact")  # 150 items: the function scans exactly too (< IVF_MIN_ITEMS)
    catalogue = served.ServedCatalogue.from_snapshot(IndexSnapshot.load(path / INDEX_FILE),
                                                     split.item_ids, config)
    assert catalogue.defaults == DEFAULTS
    users = split.test_users
    histories = served.stored_history(split, users)
    queries = load_towers(path).embed_users([split.user_ids[u] for u in users], histories)
    su = served.served_users(catalogue, users, histories, queries)
    _, lists = served.evaluate_served(catalogue, su, split, (10, 20))

    http = served_http_metrics(path, split, su, histories, lists, (10, 20), n_users=200,
                               env=emulators.client_env())
    assert http["users"] >= 150
    assert http["lists_identical_share"] == 1.0
    assert http["ndcg@10"] == pytest.approx(http["served_ndcg@10_same_users"], abs=1e-6)
    assert http["recall@20"] == pytest.approx(http["served_recall@20_same_users"], abs=1e-6)
