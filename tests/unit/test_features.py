"""Training examples: leak-free histories, sampled histories, mixed-negative probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.training.features import BatchMaker, Sequences, build_examples


def _seqs() -> Sequences:
    users = np.array([2] * 8 + [3] * 3, np.int32)
    items = np.array([10, 11, 12, 13, 14, 15, 16, 17, 10, 20, 21], np.int32)
    return Sequences.build(users, items, np.arange(len(users)), n_user_rows=4)


def _maker(seqs: Sequences, **kw) -> BatchMaker:
    rows = 30
    content = {"category": np.zeros(rows, np.int32), "brand": np.zeros(rows, np.int32),
               "price": np.zeros(rows, np.int32), "tags": np.zeros((rows, 2), np.int32)}
    prob = np.full(rows, 1.0 / rows, np.float32)
    return BatchMaker(seqs=seqs, content=content, item_probability=prob, n_item_rows=rows, **kw)


def test_others_mode_removes_the_target_from_the_history():
    seqs = _seqs()
    ex = build_examples(seqs)
    batch = _maker(seqs, history_length=4, history_mode="others").batch(
        ex, np.arange(len(ex)), np.random.default_rng(0))
    for hist, target in zip(batch["history"], batch["item_key"]):
        assert target not in hist.tolist()
    user3 = batch["history"][ex.user == 3]
    assert {tuple(sorted(set(h) - {0})) for h in user3} == {(20, 21), (10, 21), (10, 20)}


def test_history_sampling_draws_from_the_users_items_without_the_target():
    seqs = _seqs()
    ex = build_examples(seqs)
    maker = _maker(seqs, history_length=3, history_mode="others", history_sample=True)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(20):
        batch = maker.batch(ex, np.arange(len(ex)), rng)
        for u, hist, target in zip(ex.user, batch["history"], batch["item_key"]):
            assert target not in hist.tolist()
            if u == 2:
                assert set(hist.tolist()) - {0} <= set(range(10, 18))
                seen.update(hist.tolist())
    assert {10, 11, 12} <= seen  # old items are drawn too, not only the last three


def test_mixed_negatives_probability_is_the_mixture():
    seqs = _seqs()
    ex = build_examples(seqs)
    maker = _maker(seqs, history_length=3, uniform_negatives=5)
    batch = maker.batch(ex, np.arange(4), np.random.default_rng(0))
    assert batch["mix_item"].shape == (5,) and batch["mix_tags"].shape == (5, 2)
    assert np.all(batch["mix_item"] >= 2)
    expected = (4 * (1.0 / 30) + 5 / 28) / (4 + 5)
    np.testing.assert_allclose(batch["sampling_probability"], expected, rtol=1e-6)
    np.testing.assert_allclose(batch["mix_probability"], expected, rtol=1e-6)


def test_unknown_history_mode_is_rejected():
    with pytest.raises(ValueError, match="history_mode"):
        _maker(_seqs(), history_length=3, history_mode="future")


def test_item_users_are_the_inverted_sequences():
    adjacency = _seqs().inverted(30)
    users_of = {i: sorted(adjacency.flat[adjacency.offsets[i]:adjacency.offsets[i] + adjacency.lengths[i]])
                for i in range(30) if adjacency.lengths[i]}
    assert users_of == {10: [2, 3], **{i: [2] for i in range(11, 18)}, 20: [3], 21: [3]}


def test_graph_neighbors_are_the_items_other_users_never_the_examples_own():
    seqs = _seqs()
    ex = build_examples(seqs)
    maker = _maker(seqs, history_length=3, history_mode="others", graph_neighbors=6)
    rng = np.random.default_rng(2)
    drawn: dict[tuple[int, int], set[int]] = {}
    for _ in range(10):
        batch = maker.batch(ex, np.arange(len(ex)), rng)
        assert batch["neighbors"].shape == (len(ex), 6) and batch["neighbors"].dtype == np.int32
        for u, item, row in zip(ex.user, batch["item_key"], batch["neighbors"]):
            drawn.setdefault((int(u), int(item)), set()).update(row.tolist())
    assert drawn[(2, 10)] == {0, 3} and drawn[(3, 10)] == {0, 2}  # item 10: users 2, 3 (own one -> 0)
    assert drawn[(2, 11)] == {0} and drawn[(3, 20)] == {0}  # only the example's own user: all padding
    assert "neighbors" not in _maker(seqs, history_length=3).batch(ex, np.arange(3), rng)
