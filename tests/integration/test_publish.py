"""Publishing a model version to the real Firestore emulator."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration

from pipelines.data import generate_synthetic  # noqa: E402
from pipelines.training import publish  # noqa: E402
from pipelines.training.model import ModelConfig  # noqa: E402
from pipelines.training.train import TrainingInput, save, train  # noqa: E402
from schemas import names  # noqa: E402
from schemas.firestore import CurrentModelDoc, HistoryEntry, ItemDoc, ModelDoc, UserDoc  # noqa: E402
from schemas.index_snapshot import IndexSnapshot  # noqa: E402


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    data = TrainingInput.from_dataset(generate_synthetic(n_users=40, n_items=30,
                                                         mean_events_per_user=8, seed=5))
    trained = train(data, ModelConfig(dim=8, history_length=5, epochs=1, batch_size=64))
    return save(trained, tmp_path_factory.mktemp("models"))


class RecordingClient:
    """Wraps a Firestore client and records every batch commit and document write, in order."""

    def __init__(self, client):
        self._client = client
        self.log: list[tuple[str, object]] = []

    def collection(self, name):
        outer = self
        coll = self._client.collection(name)

        class Coll:
            def document(self, doc_id):
                ref = coll.document(doc_id)

                class Ref:
                    path = ref.path
                    _ref = ref

                    def set(self, data, **kw):
                        outer.log.append(("set", ref.path))
                        return ref.set(data, **kw)

                    def update(self, data, **kw):
                        outer.log.append(("update", ref.path))
                        return ref.update(data, **kw)

                return Ref()

            def stream(self):
                return coll.stream()

        return Coll()

    def batch(self):
        outer = self
        batch = self._client.batch()

        class Batch:
            n = 0

            def set(self, ref, data, **kw):
                self.n += 1
                return batch.set(getattr(ref, "_ref", ref), data, **kw)

            def commit(self, **kw):
                outer.log.append(("batch", self.n))
                return batch.commit(**kw)

        return Batch()


def test_publish_writes_items_before_switching_current(version_dir, firestore_client):
    index = IndexSnapshot.load(version_dir / "item_index.npz")
    recorder = RecordingClient(firestore_client)
    doc = publish.publish_version(version_dir, client=recorder, batch_size=7)
    version = version_dir.name
    assert doc.status == "ready"
    current_at = recorder.log.index(("set", f"{names.MODELS}/{names.CURRENT_MODEL_DOC}"))
    batches = [i for i, (kind, _) in enumerate(recorder.log) if kind == "batch"]
    assert sum(recorder.log[i][1] for i in batches) == len(index.item_ids)
    assert max(recorder.log[i][1] for i in batches) <= 7
    assert recorder.log[0] == ("set", f"{names.MODELS}/{version}")
    assert max(batches) < recorder.log.index(("update", f"{names.MODELS}/{version}")) < current_at

    current = CurrentModelDoc.from_document(
        firestore_client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).get().to_dict())
    assert current.version == version and current.index_uri.endswith("item_index.npz")
    model = ModelDoc.from_document(
        firestore_client.collection(names.MODELS).document(version).get().to_dict())
    assert model.status == "ready" and model.item_count == len(index.item_ids) and model.dim == 8

    row = 3
    snap = firestore_client.collection(names.ITEMS).document(str(index.item_ids[row])).get()
    item = ItemDoc.from_document(snap.to_dict())
    assert item.model_version == version and item.indexed_at >= current.switched_at - 60_000
    np.testing.assert_allclose(item.embedding, index.embeddings[row], rtol=1e-6)
    np.testing.assert_allclose(item.content_vector, index.content.rows([row])[0], rtol=1e-6)
    assert len(item.content_vector) == index.content.dim  # the Firestore contract stays dense
    assert item.popularity == pytest.approx(float(index.popularity[row]))
    assert item.item.category == str(index.categories[row]) and item.item.title
    assert len(list(firestore_client.collection(names.ITEMS).stream())) == len(index.item_ids)


def test_publish_users_refreshes_embedding_and_keeps_history(version_dir, firestore_client):
    index = IndexSnapshot.load(version_dir / "item_index.npz")
    hist = tuple(HistoryEntry(f"e{k}", str(index.item_ids[k]), "view", 1000 + k) for k in range(3))
    user = UserDoc(user_id="someone-new", history=hist, last_event_id="e2", last_event_ts=1002,
                   updated_at=5, model_version="old", embedding=(0.0,) * 8, event_count=3)
    firestore_client.collection(names.USERS).document(user.user_id).set(user.to_document())
    publish.publish_version(version_dir, client=firestore_client, publish_users=True)
    got = UserDoc.from_document(
        firestore_client.collection(names.USERS).document(user.user_id).get().to_dict())
    assert got.model_version == version_dir.name and got.history == hist and got.event_count == 3
    from pipelines.training.artifact import load_towers

    expected = load_towers(version_dir).embed_users([user.user_id], [[h.item_id for h in hist]])[0]
    np.testing.assert_allclose(got.embedding, expected, rtol=1e-5)


def test_publish_rejects_oversized_batches(version_dir, firestore_client):
    with pytest.raises(ValueError, match="batch_size"):
        publish.publish_version(version_dir, client=firestore_client, batch_size=501)
    assert not firestore_client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).get().exists
    assert not list(firestore_client.collection(names.MODELS).stream())


@pytest.mark.slow
def test_train_cli_publishes_and_switches_current(tmp_path, firestore_client):
    from pipelines.data import write_events_jsonl
    from pipelines.training.train import run

    ds = generate_synthetic(n_users=20, n_items=25, mean_events_per_user=6, seed=9)
    write_events_jsonl(ds.events, tmp_path / "events.jsonl")
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i.to_dict()) for i in ds.items))
    path = run(["--data", str(tmp_path / "events.jsonl"), "--epochs", "1", "--dim", "8",
                "--model-dir", str(tmp_path / "models"), "--publish", "--project", "demo-project"])
    current = firestore_client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).get().to_dict()
    assert current["version"] == path.name
    assert len(list(firestore_client.collection(names.ITEMS).stream())) == len(ds.items)
    # the measured serving defaults travel with the version (the function reads them from the snapshot)
    defaults = json.loads((path / "metadata.json").read_text())["serving_defaults"]
    assert defaults and CurrentModelDoc.from_document(current).serving_defaults == defaults
    model = firestore_client.collection(names.MODELS).document(path.name).get().to_dict()
    assert ModelDoc.from_document(model).serving_defaults == defaults


def test_init_from_current_warm_starts_from_the_published_version(tmp_path, firestore_client):
    from pipelines.data import write_events_jsonl
    from pipelines.training.train import resolve_init_from, run

    assert resolve_init_from("current", "demo-project", client=firestore_client) is None
    assert resolve_init_from("v1", "demo-project", client=firestore_client) == "v1"
    ds = generate_synthetic(n_users=20, n_items=25, mean_events_per_user=6, seed=11)
    write_events_jsonl(ds.events, tmp_path / "events.jsonl")
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i.to_dict()) for i in ds.items))
    common = ["--data", str(tmp_path / "events.jsonl"), "--epochs", "1", "--dim", "8",
              "--model-dir", str(tmp_path / "models"), "--publish", "--project", "demo-project"]
    first = run([*common, "--init-from", "current"])  # nothing published yet: full training
    assert json.loads((first / "metadata.json").read_text())["parent_version"] is None
    second = run([*common, "--init-from", "current"])
    assert json.loads((second / "metadata.json").read_text())["parent_version"] == first.name
    current = firestore_client.collection(names.MODELS).document(names.CURRENT_MODEL_DOC).get()
    assert current.to_dict()["version"] == second.name
