"""Model artefact: layout, save/load round trip, truncation, warm start."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from pipelines.data import generate_synthetic  # noqa: E402
from pipelines.training import artifact  # noqa: E402
from pipelines.training.features import OOV_INDEX  # noqa: E402
from pipelines.training.model import ModelConfig  # noqa: E402
from pipelines.training.train import Parent, TrainingInput, run, save, train, warm_start  # noqa: E402
from schemas.catalog import CatalogItem  # noqa: E402
from schemas.content import ContentEncoder  # noqa: E402
from schemas.index_snapshot import IndexSnapshot  # noqa: E402
from scoring import ann  # noqa: E402

CFG = ModelConfig(dim=16, history_length=5, epochs=1, batch_size=128)


@pytest.fixture(scope="module")
def data() -> TrainingInput:
    return TrainingInput.from_dataset(generate_synthetic(n_users=60, n_items=50,
                                                         mean_events_per_user=12, seed=1))


@pytest.fixture(scope="module")
def trained_and_saved(data, tmp_path_factory):
    trained = train(data, CFG)
    path = save(trained, tmp_path_factory.mktemp("models"))
    return trained, path


def test_layout_and_metadata(trained_and_saved, data):
    trained, path = trained_and_saved
    assert re.fullmatch(r"v\d{8}-\d{6}-[0-9a-f]{6}", path.name)
    for rel in ("query_tower/saved_model.pb", "candidate_tower/saved_model.pb", "vocab/users.txt",
                "vocab/items.txt", "content_encoder.json", "item_index.npz", "metadata.json"):
        assert (path / rel).is_file(), rel
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["version"] == path.name and path.name.endswith(meta["data_fingerprint"][:6])
    assert meta["dim"] == 16 and meta["history_length"] == 5 and meta["parent_version"] is None
    assert meta["params"]["loss"] == "softmax" and meta["metrics"]["n_examples"] == len(data)
    assert (path / "vocab/users.txt").read_text().split("\n") == trained.space.users
    enc = ContentEncoder.load(path / "content_encoder.json")
    index = IndexSnapshot.load(path / "item_index.npz")
    assert index.version == path.name and index.embeddings.shape == (len(data.catalogue), 16)
    np.testing.assert_allclose(index.content.to_dense(), enc.encode_many(data.catalogue), rtol=1e-6)
    assert index.popularity.sum() == pytest.approx(len(data))
    # a 50-item catalogue gets no ANN index (faiss's PQ training needs more rows; exact is as cheap)
    assert len(data.catalogue) < ann.MIN_INDEX_ROWS and not (path / ann.ANN_FILE).exists()


def test_signatures_are_explicit(trained_and_saved):
    _, path = trained_and_saved
    q = tf.saved_model.load(str(path / "query_tower")).signatures["serving_default"]
    c = tf.saved_model.load(str(path / "candidate_tower")).signatures["serving_default"]
    assert set(q.structured_input_signature[1]) == {"user_id", "history"}
    assert set(c.structured_input_signature[1]) == {"item_id", "category", "brand", "price", "tags"}
    assert set(q.structured_outputs) == {"embedding"}
    assert c.structured_input_signature[1]["price"].dtype == tf.float32


def test_round_trip_matches_in_memory_model(trained_and_saved):
    trained, path = trained_and_saved
    towers = artifact.load_towers(str(path))
    assert towers.version == path.name and towers.dim == 16 and towers.history_length == 5
    users = trained.space.users[:6]
    u_idx = trained.space.encode_users(users)
    hist_idx = trained.seqs.last(u_idx, 5)
    items_by_row = {v: k for k, v in trained.space.item_index.items()}
    histories = [[items_by_row[i] for i in row if i] for row in hist_idx]
    np.testing.assert_allclose(towers.embed_users(users, histories),
                               trained.user_embeddings(u_idx, hist_idx), rtol=1e-5, atol=1e-6)
    catalogue = trained.catalogue[:7]
    rows = trained.space.encode_items([i.item_id for i in catalogue])
    np.testing.assert_allclose(towers.embed_items(catalogue), trained.item_embeddings()[rows],
                               rtol=1e-5, atol=1e-6)
    index = towers.item_index()
    np.testing.assert_allclose(index.embeddings[:7], towers.embed_items(catalogue), rtol=1e-5, atol=1e-6)


def test_history_is_truncated_to_most_recent(trained_and_saved):
    trained, path = trained_and_saved
    towers = artifact.load_towers(path)
    items = trained.space.items[:12]
    long = towers.embed_users(["u-x"], [items])
    short = towers.embed_users(["u-x"], [items[-5:]])
    np.testing.assert_allclose(long, short, rtol=1e-6)
    other = towers.embed_users(["u-x"], [items[:5]])
    assert not np.allclose(other, short, atol=1e-4)
    assert towers.embed_users([], []).shape == (0, 16)


def test_new_item_gets_content_embedding(trained_and_saved):
    trained, path = trained_and_saved
    towers = artifact.load_towers(path)
    base = trained.catalogue[0]
    other = next(i for i in trained.catalogue if i.category != base.category and i.brand != base.brand)
    new_a = CatalogItem("brand-new-1", "x", base.category, base.brand, base.price, base.tags, True, 0)
    new_b = CatalogItem("brand-new-2", "y", other.category, other.brand, other.price, other.tags, True, 0)
    new_a2 = CatalogItem("brand-new-3", "z", base.category, base.brand, base.price, base.tags, True, 0)
    emb = towers.embed_items([new_a, new_b, new_a2])
    assert not np.allclose(emb[0], emb[1], atol=1e-3)
    np.testing.assert_allclose(emb[0], emb[2], rtol=1e-5)


def test_serving_defaults_go_to_metadata_and_snapshot(trained_and_saved, tmp_path):
    trained, path = trained_and_saved
    assert json.loads((path / "metadata.json").read_text())["serving_defaults"] is None
    assert IndexSnapshot.load(path / "item_index.npz").serving_defaults is None  # optional
    defaults = {"alpha": 0.9, "min_pool": 100,
                "alpha_by_history": [{"min_history": 0, "alpha": 0.9}, {"min_history": 10, "alpha": 1.0}]}
    again = save(trained, tmp_path, serving_defaults=defaults)
    assert json.loads((again / "metadata.json").read_text())["serving_defaults"] == defaults
    assert IndexSnapshot.load(again / "item_index.npz").serving_defaults == defaults


def test_not_an_artifact(tmp_path):
    with pytest.raises(artifact.ArtifactError, match="not a model artefact"):
        artifact.load_towers(tmp_path)


def _later_events(data: TrainingInput, n_new_users: int = 5) -> TrainingInput:
    """A 'day' of new events after the training data: new users, a new item, old users too."""
    t0 = int(data.timestamps.max()) + 1000
    rng = np.random.default_rng(7)
    old_users = np.unique(data.user_ids.astype(str))[:10]
    old_items = np.unique(data.item_ids.astype(str))
    new_item = CatalogItem("item-new-1", "new", data.catalogue[0].category, data.catalogue[0].brand,
                           10.0, data.catalogue[0].tags, True, t0)
    users, items = [], []
    for u in list(old_users) + [f"new-user-{k}" for k in range(n_new_users)]:
        for it in rng.choice(old_items, size=4, replace=False).tolist() + ["item-new-1"]:
            users.append(u)
            items.append(it)
    return TrainingInput(user_ids=np.array(users, dtype=object), item_ids=np.array(items, dtype=object),
                         timestamps=t0 + np.arange(len(users), dtype=np.int64),
                         catalogue=data.catalogue + [new_item])


@pytest.mark.slow
def test_warm_start_extends_vocab_and_keeps_old_embeddings(trained_and_saved, data, tmp_path):
    trained, path = trained_and_saved
    parent = Parent.load(path)
    new = _later_events(data)
    combined = TrainingInput(np.concatenate([data.user_ids, new.user_ids]),
                             np.concatenate([data.item_ids, new.item_ids]),
                             np.concatenate([data.timestamps, new.timestamps]), new.catalogue)
    child = warm_start(parent, combined, parent.config(epochs=1, learning_rate=1e-3))
    assert child.parent_version == parent.version
    assert child.n_examples == len(new)  # only events after the parent's data are targets
    assert child.space.users[:len(parent.users)] == parent.users
    assert child.space.items[:len(parent.items)] == parent.items
    assert "new-user-0" in child.space.user_index and "item-new-1" in child.space.item_index
    old = trained.item_embeddings()
    fresh = child.item_embeddings()
    n_old = old.shape[0]
    cos = np.sum(old[2:] * fresh[2:n_old], axis=1)  # both unit-normalised
    assert cos.min() > 0.9, cos.min()
    new_row = child.space.item_index["item-new-1"]
    assert new_row >= n_old and not np.allclose(fresh[new_row], fresh[OOV_INDEX], atol=1e-4)
    out = save(child, tmp_path / "models")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["parent_version"] == parent.version
    towers = artifact.load_towers(out)
    assert towers.embed_users(["new-user-0"], [["item-new-1"]]).shape == (1, 16)


@pytest.mark.slow
def test_cli_trains_and_warm_starts(tmp_path, monkeypatch, data):
    events = tmp_path / "events.jsonl"
    from pipelines.data import write_events_jsonl

    ds = generate_synthetic(n_users=30, n_items=30, mean_events_per_user=8, seed=2)
    write_events_jsonl(ds.events, events)
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("\n".join(json.dumps(i.to_dict()) for i in ds.items))
    models = tmp_path / "models"
    first = run(["--data", str(events), "--epochs", "1", "--model-dir", str(models), "--dim", "8"])
    assert (first / "metadata.json").exists()
    first_meta = json.loads((first / "metadata.json").read_text())
    defaults = first_meta["serving_defaults"]  # measured on a validation slice of the events
    assert 0.0 <= defaults["alpha"] <= 1.0 and defaults["min_pool"] in (100, 200, 400)
    assert first_meta["metrics"]["serving_defaults_validation"]["users"] > 0
    assert IndexSnapshot.load(first / "item_index.npz").serving_defaults == defaults
    second = run(["--data", str(events), "--init-from", first.name, "--model-dir", str(models),
                  "--since", "0", "--epochs", "1"])
    meta = json.loads((second / "metadata.json").read_text())
    assert meta["parent_version"] == first.name and meta["dim"] == 8
    assert meta["serving_defaults"] == defaults  # a warm start keeps its parent's
    assert Path(models / second.name).is_dir()


class _FakeBlob:
    def __init__(self, store: dict, bucket: str, name: str) -> None:
        self.store, self.bucket, self.name = store, bucket, name

    def upload_from_filename(self, filename: str) -> None:
        self.store[(self.bucket, self.name)] = Path(filename).read_bytes()

    def download_to_filename(self, filename: str) -> None:
        Path(filename).write_bytes(self.store[(self.bucket, self.name)])


class _FakeBucket:
    def __init__(self, store: dict, name: str) -> None:
        self.store, self.name = store, name

    def blob(self, name: str) -> _FakeBlob:
        return _FakeBlob(self.store, self.name, name)


class _FakeStorageClient:
    """In-memory stand-in for google.cloud.storage.Client (bucket/blob/list_blobs only)."""

    store: dict = {}

    def bucket(self, name: str) -> _FakeBucket:
        return _FakeBucket(self.store, name)

    def list_blobs(self, bucket: str, prefix: str = "") -> list[_FakeBlob]:
        return [_FakeBlob(self.store, b, n) for (b, n) in sorted(self.store)
                if b == bucket and n.startswith(prefix)]


def test_gs_upload_then_load_towers_from_the_cache(trained_and_saved, tmp_path, monkeypatch):
    from google.cloud import storage

    trained, path = trained_and_saved
    _FakeStorageClient.store = {}
    monkeypatch.setattr(storage, "Client", _FakeStorageClient)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
    uri = artifact.upload(path, "gs://bucket/models")
    assert uri == f"gs://bucket/models/{path.name}"
    names = [n for (_, n) in _FakeStorageClient.store]
    assert names[-1].endswith("metadata.json")  # written last: a complete artefact when visible
    towers = artifact.load_towers(uri)
    assert towers.path == tmp_path / "cache" / "bucket" / "models" / path.name
    items = trained.catalogue[:3]
    np.testing.assert_allclose(towers.embed_items(items), artifact.load_towers(path).embed_items(items),
                               rtol=1e-6)
    with pytest.raises(artifact.ArtifactError, match="no artefact"):
        artifact.load_towers("gs://bucket/models/v-missing")


def test_warm_start_keeps_the_parents_attributes_of_items_known_only_from_events(trained_and_saved):
    from pipelines.training.publish import merge_catalogue, read_catalogue

    _, path = trained_and_saved
    parent = read_catalogue(path)
    first = next(i for i in parent.values() if i.category)
    bare = CatalogItem(item_id=first.item_id, title=f"item {first.item_id}", category="", brand="",
                       price=0.0, tags=(), in_stock=True, updated_at=first.updated_at)
    renamed = CatalogItem(item_id="brand-new", title="new", category="c", brand="b", price=1.0, tags=(),
                          in_stock=True, updated_at=first.updated_at)
    merged = {i.item_id: i for i in merge_catalogue(path, [bare, renamed])}
    assert merged[first.item_id] == first  # the parent's attributes, not the event-only placeholder
    assert merged["brand-new"] == renamed and set(parent) <= set(merged)


def test_item_graph_model_serves_the_exact_neighbor_mean(data, tmp_path):
    trained = train(data, ModelConfig(dim=16, history_length=5, epochs=1, batch_size=128, item_graph=4))
    means = trained.neighbor_means()
    users = trained.space.encode_users(data.user_ids.tolist())
    items = trained.space.encode_items(data.item_ids.tolist())
    table = trained.model.query_tower.get_layer("user_embedding").embeddings.numpy()
    for row in np.unique(items):  # every view counts (a repeated view weighs its user more)
        np.testing.assert_allclose(means[row], table[users[items == row]].mean(0), rtol=1e-5, atol=1e-6)
    assert not means[OOV_INDEX].any() and means.shape == (len(trained.space.items) + 2, 16)
    path = save(trained, tmp_path / "models")
    towers = artifact.load_towers(str(path))
    catalogue = trained.catalogue[:9]
    rows = trained.space.encode_items([i.item_id for i in catalogue])
    np.testing.assert_allclose(towers.embed_items(catalogue), trained.item_embeddings()[rows],
                               rtol=1e-5, atol=1e-6)
    new = CatalogItem(item_id="never-seen", title="", category=catalogue[0].category,
                      brand=catalogue[0].brand, price=catalogue[0].price, tags=catalogue[0].tags,
                      in_stock=True, updated_at=0)
    feats = {**trained.space.encode_content([new]), "item": np.array([OOV_INDEX], np.int32),
             "neighbor_mean": np.zeros((1, 16), np.float32)}  # a new item: content, no graph term
    np.testing.assert_allclose(towers.embed_items([new]), trained.model.candidate_tower(feats).numpy(),
                               rtol=1e-5, atol=1e-6)
