"""The recommend function on a real trained artefact (tiny synthetic data, one epoch).

Trains with pipelines.training.train, publishes to the Firestore emulator with pipelines.training.publish,
writes a user whose embedding comes from the artefact's query tower, and checks that the
function (which never imports TensorFlow) ranks exactly like a brute-force dot product over
the artefact's item index.
"""

from __future__ import annotations

import functions_framework
import numpy as np
import pytest

from tests.integration import recommend_data as rd

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_function_serves_a_trained_and_published_model(firestore_client, tmp_path, monkeypatch):
    from pipelines.data import generate_synthetic
    from pipelines.training import artifact, publish
    from pipelines.training.model import ModelConfig
    from pipelines.training.train import TrainingInput, save, train
    from schemas import names
    from schemas.firestore import HistoryEntry, UserDoc

    ds = generate_synthetic(n_users=60, n_items=120, mean_events_per_user=15, seed=3)
    trained = train(TrainingInput.from_dataset(ds), ModelConfig(epochs=1))
    path = save(trained, tmp_path / "models")
    model = publish.publish_version(path, client=firestore_client)
    towers = artifact.Towers(path)
    snap = towers.item_index()

    user = ds.events[-1].user_id
    events = [e for e in ds.events if e.user_id == user][-50:]
    history = [e.item_id for e in events]
    emb = towers.embed_users([user], [history])[0]
    firestore_client.collection(names.USERS).document(user).set(UserDoc(
        user_id=user, history=tuple(HistoryEntry(e.event_id, e.item_id, e.event_type, e.timestamp)
                                    for e in events),
        last_event_id=events[-1].event_id, last_event_ts=events[-1].timestamp, updated_at=0,
        model_version=model.version, embedding=tuple(float(x) for x in emb),
        event_count=len(events)).to_document())

    monkeypatch.setenv("REFRESH_SECONDS", "3600")
    client = functions_framework.create_app("recommend", str(rd.MAIN)).test_client()
    health = client.get("/healthz").get_json()
    assert health["model_version"] == model.version and health["item_count"] == len(snap.item_ids)

    body = client.get(f"/recommendations?user_id={user}&k=5&alpha=1").get_json()
    assert body["strategy"] == "personalized" and body["query"] == "user_embedding"
    assert body["last_event_id"] == events[-1].event_id
    scores = snap.embeddings @ emb
    expected = [str(snap.item_ids[j]) for j in np.argsort(-scores, kind="stable")
                if snap.in_stock[j] and str(snap.item_ids[j]) not in set(history)][:5]
    assert [i["item_id"] for i in body["items"]] == expected
    hybrid = client.get(f"/recommendations?user_id={user}&k=5").get_json()["items"]
    assert len(hybrid) == 5 and all(0 <= i["cb_score"] <= 1 for i in hybrid)
    similar = client.get(f"/similar-items?item_id={snap.item_ids[0]}&k=3").get_json()
    assert similar["basis"] == "embedding" and len(similar["items"]) == 3
