"""Two-tower model: tower shapes, OOV handling, losses by hand, SGD direction, a planted pattern."""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from pipelines.data import generate_synthetic  # noqa: E402
from pipelines.training.features import OOV_INDEX, PAD_INDEX, Sequences, build_examples  # noqa: E402
from pipelines.training.model import (  # noqa: E402
    CANDIDATE_KEYS,
    BPRTask,
    ModelConfig,
    TowerSizes,
    assign_weights,
    bpr_loss,
    build_model,
    build_towers,
    user_table,
)
from pipelines.training.train import TrainingInput, train  # noqa: E402

SIZES = TowerSizes(users=7, items=9, categories=5, brands=4, price_buckets=3, tags=6)


def _candidates(items, cats, brands=None, prices=None, tags=None):
    n = len(items)
    return {"item": tf.constant(items, tf.int32), "category": tf.constant(cats, tf.int32),
            "brand": tf.constant(brands or [2] * n, tf.int32),
            "price": tf.constant(prices or [1] * n, tf.int32),
            "tags": tf.constant(tags or [[2, 3]] * n, tf.int32)}


def test_tower_output_shapes_and_unit_norm():
    query, candidate = build_towers(SIZES, ModelConfig(dim=16))
    q = query({"user": tf.constant([2, 3, OOV_INDEX], tf.int32),
               "history": tf.constant([[0, 2, 3], [4, 5, 6], [0, 0, 2]], tf.int32)})
    c = candidate(_candidates([2, 3], [2, 3]))
    assert q.shape == (3, 16) and c.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(q.numpy(), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(c.numpy(), axis=1), 1.0, rtol=1e-5)


def test_oov_user_embedding_depends_on_history():
    query, _ = build_towers(SIZES, ModelConfig(dim=16))
    users = tf.constant([OOV_INDEX] * 3, tf.int32)
    hist = tf.constant([[0, 2, 3], [0, 5, 6], [0, 2, 3]], tf.int32)
    q = query({"user": users, "history": hist}).numpy()
    assert not np.allclose(q[0], q[1], atol=1e-4)
    np.testing.assert_allclose(q[0], q[2], rtol=1e-6)
    empty = query({"user": users[:1], "history": tf.zeros([1, 3], tf.int32)}).numpy()
    assert not np.allclose(empty[0], q[0], atol=1e-4)


def test_padding_is_ignored_by_history_pooling():
    query, _ = build_towers(SIZES, ModelConfig(dim=8))
    a = query({"user": tf.constant([2]), "history": tf.constant([[PAD_INDEX, PAD_INDEX, 4]])})
    b = query({"user": tf.constant([2]), "history": tf.constant([[4]])})
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_unseen_item_embedding_comes_from_content():
    _, candidate = build_towers(SIZES, ModelConfig(dim=16))
    c = candidate(_candidates([OOV_INDEX] * 3, [2, 3, 2], brands=[2, 3, 2],
                              tags=[[2, 3], [4, 5], [2, 3]])).numpy()
    assert not np.allclose(c[0], c[1], atol=1e-4)
    np.testing.assert_allclose(c[0], c[2], rtol=1e-6)


def test_bpr_loss_matches_hand_computation():
    pos = tf.constant([1.0, 0.5])
    neg = tf.constant([[0.0, 2.0], [0.5, -1.0]])
    pairs = [1.0 - 0.0, 1.0 - 2.0, 0.5 - 0.5, 0.5 + 1.0]
    expected = sum(math.log(1.0 + math.exp(-d)) for d in pairs) / 4
    assert float(bpr_loss(pos, neg)) == pytest.approx(expected, rel=1e-6)
    q = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    task_loss = BPRTask()(q, tf.constant([[1.0, 3.0], [2.0, 0.5]]),
                          tf.constant([[[0.0, 1.0], [2.0, 0.0]], [[0.0, 0.5], [0.0, -1.0]]]))
    assert float(task_loss) == pytest.approx(expected, rel=1e-6)


def _bpr_features():
    return {"user": tf.constant([2], tf.int32), "history": tf.zeros([1, 3], tf.int32),
            **{k: v for k, v in _candidates([3], [2]).items()},
            "item_key": tf.constant([3], tf.int32), "sampling_probability": tf.constant([0.1]),
            "neg_item": tf.constant([[5]], tf.int32), "neg_category": tf.constant([[3]], tf.int32),
            "neg_brand": tf.constant([[2]], tf.int32), "neg_price": tf.constant([[1]], tf.int32),
            "neg_tags": tf.constant([[[2, 3]]], tf.int32)}


def test_sgd_step_moves_user_embedding_along_negative_hand_gradient():
    cfg = ModelConfig(dim=4, loss="bpr", optimizer="sgd", learning_rate=0.5, normalize=False)
    model = build_model(SIZES, cfg)
    feats = _bpr_features()
    user_table = model.query_tower.get_layer("user_embedding").embeddings
    before = user_table.numpy()[2].copy()
    # Empty history: the query is exactly the user's row; its gradient is -sigmoid(-(s+ - s-)) (c+ - c-).
    q = model.query_tower({"user": feats["user"], "history": feats["history"]}).numpy()[0]
    np.testing.assert_allclose(q, before, rtol=1e-6)
    c_pos = model.candidate_tower({k: feats[k] for k in ("item", "category", "brand", "price", "tags")})
    c_neg = model.candidate_tower({"item": feats["neg_item"][0], "category": feats["neg_category"][0],
                                   "brand": feats["neg_brand"][0], "price": feats["neg_price"][0],
                                   "tags": feats["neg_tags"][0]})
    c_pos, c_neg = c_pos.numpy()[0], c_neg.numpy()[0]
    margin = float(q @ c_pos - q @ c_neg)
    grad = -(1.0 / (1.0 + math.exp(margin))) * (c_pos - c_neg)
    loss_before = float(model.compute_loss(feats))
    assert loss_before == pytest.approx(math.log(1 + math.exp(-margin)), rel=1e-5)
    model.train_step(feats)
    after = user_table.numpy()[2]
    np.testing.assert_allclose(after, before - 0.5 * grad, rtol=1e-4, atol=1e-6)
    assert float(model.compute_loss(feats)) < loss_before


def test_assign_weights_grows_tables_and_keeps_old_rows():
    cfg = ModelConfig(dim=4)
    old_q, old_c = build_towers(SIZES, cfg)
    weights = {v.name: v.numpy() for v in old_c.weights}
    bigger = TowerSizes(users=7, items=12, categories=5, brands=4, price_buckets=3, tags=6)
    _, new_c = build_towers(bigger, cfg)
    assert assign_weights(new_c, weights) == []
    old_tab = old_c.get_layer("item_embedding").embeddings.numpy()
    new_tab = new_c.get_layer("item_embedding").embeddings.numpy()
    np.testing.assert_array_equal(new_tab[:9], old_tab)
    for row in range(9, 12):  # new ids start where an unknown id was
        np.testing.assert_array_equal(new_tab[row], old_tab[OOV_INDEX])


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="loss"):
        ModelConfig(loss="hinge")
    with pytest.raises(ValueError, match="optimizer"):
        ModelConfig(optimizer="rmsprop")


def test_examples_history_strictly_precedes_target():
    users = np.array([2, 2, 2, 3, 3], np.int32)
    items = np.array([5, 6, 7, 5, 8], np.int32)
    ts = np.array([10, 20, 30, 5, 6])
    seqs = Sequences.build(users, items, ts, n_user_rows=4)
    ex = build_examples(seqs)
    hist = seqs.histories(ex.user, ex.position, 2)
    rows = {(int(u), int(i)): h.tolist() for u, i, h in zip(ex.user, ex.item, hist)}
    assert rows[(2, 5)] == [0, 0] and rows[(2, 6)] == [0, 5] and rows[(2, 7)] == [5, 6]
    assert rows[(3, 8)] == [0, 5]


def _recall_at_k(scores: np.ndarray, truth: list[set[int]], k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([len(set(t.tolist()) & s) / min(k, len(s)) for t, s in zip(top, truth) if s]))


@pytest.mark.slow
def test_model_learns_planted_tastes_and_beats_popularity():
    ds = generate_synthetic(n_users=400, n_items=300, mean_events_per_user=30, seed=3,
                            new_item_fraction=0.0)
    data = TrainingInput.from_dataset(ds)
    # hold out each user's last 5 interactions
    order = np.lexsort((data.timestamps, data.user_ids.astype(str)))
    users_sorted = data.user_ids[order].astype(str)
    rank_from_end = np.zeros(len(order), int)
    for u in np.unique(users_sorted):
        idx = np.nonzero(users_sorted == u)[0]
        rank_from_end[idx] = np.arange(len(idx))[::-1]
    test_mask = np.zeros(len(order), bool)
    test_mask[order[rank_from_end < 5]] = True
    train_in = TrainingInput(data.user_ids[~test_mask], data.item_ids[~test_mask],
                             data.timestamps[~test_mask], data.catalogue)
    trained = train(train_in, ModelConfig(dim=32, epochs=8, batch_size=256, learning_rate=1e-2),
                    history_mode="before")
    space = trained.space
    eval_users = np.array(sorted(space.user_index.values()), np.int32)
    seen = [set() for _ in eval_users]
    truth = [set() for _ in eval_users]
    pos = {u: k for k, u in enumerate(eval_users)}
    for u, i, m in zip(space.encode_users(data.user_ids.tolist()),
                       space.encode_items(data.item_ids.tolist()), test_mask):
        if u not in pos:  # a user whose every interaction is held out: not evaluated
            continue
        (truth if m else seen)[pos[u]].add(int(i))
    truth = [t - s for t, s in zip(truth, seen)]
    q = trained.user_embeddings(eval_users, trained.seqs.last(eval_users, trained.config.history_length))
    scores = q @ trained.item_embeddings().T
    pop = np.bincount(space.encode_items(train_in.item_ids.tolist()), minlength=scores.shape[1])
    pop_scores = np.tile(pop.astype(float), (len(eval_users), 1))
    for s_mat in (scores, pop_scores):
        s_mat[:, :2] = -np.inf
        for row, s in enumerate(seen):
            s_mat[row, list(s)] = -np.inf
    model_recall = _recall_at_k(scores, truth, 10)
    pop_recall = _recall_at_k(pop_scores, truth, 10)
    print(f"recall@10 model {model_recall:.3f} popularity {pop_recall:.3f}")
    assert model_recall > 1.3 * pop_recall, (model_recall, pop_recall)


def test_lazy_adam_updates_only_rows_in_the_batch_by_adam_first_step():
    from pipelines.training.model import LazyAdam

    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))
    opt = LazyAdam(learning_rate=0.1)
    grad = tf.IndexedSlices(tf.constant([[1.0, -2.0, 0.5], [1.0, 1.0, 1.0]]), tf.constant([1, 1]))
    before = table.numpy().copy()
    opt.apply_gradients([(grad, table)])
    after = table.numpy()
    np.testing.assert_array_equal(after[[0, 2, 3]], before[[0, 2, 3]])
    # Adam's first step is lr * g / (|g| + eps) = lr * sign(g) for the summed duplicate rows.
    np.testing.assert_allclose(after[1], before[1] - 0.1 * np.sign([2.0, -1.0, 1.5]), rtol=1e-5)


def _mixed_negative_features() -> dict:
    """Two examples (items 3, 4) and three uniform negatives (5, 3, 7): item 3 is an accidental hit."""
    return {"user": tf.constant([2, 3], tf.int32), "history": tf.constant([[0, 4], [5, 6]], tf.int32),
            **_candidates([3, 4], [2, 3]), "item_key": tf.constant([3, 4], tf.int32),
            "sampling_probability": tf.constant([0.2, 0.1]),
            "mix_item": tf.constant([5, 3, 7], tf.int32), "mix_category": tf.constant([2, 2, 3], tf.int32),
            "mix_brand": tf.constant([2, 2, 2], tf.int32), "mix_price": tf.constant([1, 1, 1], tf.int32),
            "mix_tags": tf.constant([[2, 3]] * 3, tf.int32), "mix_probability": tf.constant([0.05, 0.2, 0.3])}


def _tower_outputs(model, feats: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query, positive-candidate and uniform-negative embeddings of ``feats``."""
    return (model.query_tower({"user": feats["user"], "history": feats["history"]}).numpy(),
            model.candidate_tower({k: feats[k] for k in CANDIDATE_KEYS}).numpy(),
            model.candidate_tower({k: feats[f"mix_{k}"] for k in CANDIDATE_KEYS}).numpy())


def test_softmax_loss_with_mixed_negatives_matches_hand_computation():
    model = build_model(SIZES, ModelConfig(dim=4, temperature=0.5, uniform_negatives=3))
    feats = _mixed_negative_features()
    q, c, m = _tower_outputs(model, feats)
    cands = np.concatenate([c, m])
    logits = q @ cands.T / 0.5 - np.log([0.2, 0.1, 0.05, 0.2, 0.3])[None, :]
    ids = np.array([3, 4, 5, 3, 7])
    # accidental hit: column 3 is item 3 again, a false negative for row 0 -> removed
    logits[0, 3] = -np.inf
    expected = sum(-(logits[r, r] - np.log(np.sum(np.exp(logits[r][np.isfinite(logits[r])]))))
                   for r in range(2))
    assert ids[3] == ids[0]
    assert float(model.compute_loss(feats)) == pytest.approx(expected, rel=1e-4)


def test_ccl_loss_matches_hand_computation():
    with pytest.raises(ValueError, match="ccl"):
        ModelConfig(dim=4, loss="ccl")  # needs uniform negatives
    with pytest.raises(ValueError, match="ccl_margin"):
        ModelConfig(dim=4, loss="ccl", uniform_negatives=2, ccl_margin=1.0)
    model = build_model(SIZES, ModelConfig(dim=4, loss="ccl", uniform_negatives=3, ccl_margin=-0.5,
                                           ccl_negative_weight=2.0))
    feats = _mixed_negative_features()
    q, c, m = _tower_outputs(model, feats)
    cos = q @ np.concatenate([c, m]).T  # negatives: the batch's items (3, 4) and the uniform (5, 3, 7)
    ids = np.array([3, 4, 5, 3, 7])
    expected = 0.0
    for r, own in enumerate((3, 4)):
        negatives = cos[r][ids != own]  # the example's own item is no negative, wherever it appears
        expected += max(0.0, 1.0 - cos[r, r]) + 2.0 * np.mean(np.maximum(0.0, negatives + 0.5))
    assert float(model.compute_loss(feats)) == pytest.approx(expected / 2, rel=1e-5)


def test_training_with_ccl_draws_uniform_negatives_and_lowers_the_loss():
    ds = generate_synthetic(n_users=60, n_items=40, mean_events_per_user=10, seed=1, new_item_fraction=0.0)
    cfg = ModelConfig(dim=8, loss="ccl", uniform_negatives=16, ccl_margin=0.3, ccl_negative_weight=5.0,
                      epochs=3, batch_size=64, learning_rate=1e-2)
    trained = train(TrainingInput.from_dataset(ds), cfg)
    assert all(math.isfinite(x) for x in trained.losses)
    assert trained.losses[-1] < trained.losses[0]


def test_item_graph_term_adds_the_projected_neighbor_mean():
    config = ModelConfig(dim=8, item_graph=4)
    with pytest.raises(ValueError, match="item_graph"):
        ModelConfig(dim=8, item_graph=4, loss="bpr")
    with pytest.raises(ValueError, match="item_graph"):
        ModelConfig(dim=8, item_graph=-1)
    model = build_model(SIZES, config)
    feats = _candidates([5, 5], [2, 2])
    means = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    feats["neighbor_mean"] = np.stack([np.zeros(8, np.float32), means[1]])
    out = model.candidate_tower(feats).numpy()
    projection = model.candidate_tower.get_layer("graph_projection").kernel.numpy()
    np.testing.assert_allclose(projection, np.eye(8), atol=1e-7)  # starts as plain addition
    feats["neighbor_mean"] = np.zeros((2, 8), np.float32)
    plain = model.candidate_tower(feats).numpy()
    np.testing.assert_allclose(out[0], plain[0], atol=1e-6)
    assert not np.allclose(out[1], plain[1], atol=1e-3)
    # the loss pools the shared user table over the sampled neighbours (padding ignored)
    users = model.query_tower.get_layer("user_embedding")
    pooled = model.neighbor_pooling(np.array([[3, 4, 0]], np.int32), users(np.array([[3, 4, 0]])))
    np.testing.assert_allclose(pooled.numpy()[0], user_table(model.query_tower)[[3, 4]].mean(0), atol=1e-6)
