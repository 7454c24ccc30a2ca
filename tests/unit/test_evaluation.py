"""Evaluation harness: metrics against hand-computed values, baselines on tiny matrices, splits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.data import generate_synthetic, load_user_item_lines, write_events_jsonl
from pipelines.evaluation import (
    ResourceMonitor,
    Split,
    baselines,
    cutoff_split,
    evaluate,
    fixed_split,
    registry,
    temporal_split,
    top_k,
)
from pipelines.evaluation.metrics import evaluate_lists, ndcg_per_user
from pipelines.evaluation.splits import random_split

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "data"


def _csr(rows: list[list[int]]) -> sp.csr_matrix:
    return sp.csr_matrix(np.array(rows, dtype=np.float32))


# ----------------------------------------------------------------------------- metrics

@pytest.fixture
def tiny_split() -> Split:
    train = _csr([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    test = _csr([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    return Split.from_matrices(train, test)


SCORES = np.array([[9, 8, 1, 7, 2], [5, 9, 9, 1, 6], [1, 2, 3, 4, 5]], dtype=np.float32)


def test_metrics_hand_computed(tiny_split: Split) -> None:
    m = evaluate(lambda users: SCORES[users], tiny_split, ks=(1, 2))
    # u0 top-2 (item 0 masked) = [1, 3]: both hits. u1 (1, 2 masked) = [4, 0]: hit at rank 2.
    # u2 = [4, 3]: hit at rank 1.
    assert m["users"] == 3
    assert m["recall@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["ndcg@1"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3) + 1) / 3)
    assert m["coverage"] == pytest.approx(4 / 5)  # items 0, 1, 3, 4 appear in some top-2


def test_recall_uses_all_test_items_as_denominator() -> None:
    split = Split.from_matrices(_csr([[0, 0, 0, 0]]), _csr([[1, 1, 1, 0]]))
    m = evaluate(lambda u: np.array([[4, 3, 2, 1]], dtype=np.float32)[np.zeros(len(u), int)], split, ks=(1,))
    assert m["recall@1"] == pytest.approx(1 / 3)  # LightGCN: hits / |test|, not / min(K, |test|)
    assert m["ndcg@1"] == pytest.approx(1.0)


def test_train_items_are_never_recommended(tiny_split: Split) -> None:
    # A scorer that loves the train items: they are masked, so metrics equal a scorer without them.
    loves_train = SCORES + 100 * tiny_split.train.toarray()
    assert evaluate(lambda u: loves_train[u], tiny_split) == evaluate(lambda u: SCORES[u], tiny_split)


def test_batching_does_not_change_results(tiny_split: Split) -> None:
    full = evaluate(lambda u: SCORES[u], tiny_split, ks=(1, 2))
    one_by_one = evaluate(lambda u: SCORES[u], tiny_split, ks=(1, 2), max_batch_bytes=1)
    assert one_by_one == pytest.approx(full)


def test_target_items_restrict_test_set(tiny_split: Split) -> None:
    m = evaluate(lambda u: SCORES[u], tiny_split, ks=(1,), target_items=np.array([3]))
    assert m["users"] == 1  # only u0 has item 3 in test
    assert m["recall@1"] == 0.0  # u0's top-1 is item 1


def test_wrong_scorer_shape_is_an_error(tiny_split: Split) -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: np.zeros((len(u), 4)), tiny_split)


def test_top_k_order_and_ties() -> None:
    scores = np.array([[1.0, 5.0, 5.0, 0.0, 3.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 4]]


# ----------------------------------------------------------------------------- baselines

def test_popularity_counts_train_users() -> None:
    x = _csr([[1, 1, 0], [1, 0, 0], [1, 0, 1]])
    scores = baselines.popularity(x)(np.array([0, 2]))
    assert scores.tolist() == [[3, 1, 1], [3, 1, 1]]


def test_item_knn_cosine_hand_computed() -> None:
    x = _csr([[1, 1, 0], [1, 1, 1], [0, 0, 1]])
    # cos(0,1) = 2/(√2·√2) = 1, cos(0,2) = cos(1,2) = 1/(√2·√2) = 0.5
    sim = baselines.cosine_neighbours(x, k=2).toarray()
    assert sim == pytest.approx(np.array([[0, 1, .5], [1, 0, .5], [.5, .5, 0]]))
    scores = baselines.item_knn(x, k=2)(np.array([2, 0]))
    assert scores == pytest.approx(np.array([[.5, .5, 0], [1, 1, 1]]))
    top1 = baselines.cosine_neighbours(x, k=1).toarray()
    assert top1[:, 0] == pytest.approx([0, 1, 0]) and top1[:, 1] == pytest.approx([1, 0, 0])


def test_ease_hand_computed() -> None:
    # G = XᵀX = [[3, 2], [2, 2]], λ = 1: B01 = c/(a+λ) = 2/4, B10 = c/(b+λ) = 2/3.
    x = _csr([[1, 1], [1, 0], [1, 1]])
    b = baselines.ease_weights(x, lam=1.0)
    assert b == pytest.approx(np.array([[0, 0.5], [2 / 3, 0]]))
    scores = baselines.ease(x, lam=1.0)(np.array([1]))
    assert scores == pytest.approx(np.array([[0, 0.5]]))


def test_ease_matches_the_closed_form_and_restricts_items() -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float32))
    p = np.linalg.inv((x.T @ x).toarray() + 5.0 * np.eye(12))
    expected = p / -np.diag(p)
    np.fill_diagonal(expected, 0.0)
    assert baselines.ease_weights(x, 5.0) == pytest.approx(expected, abs=1e-9)
    assert baselines.ease_weights(x, 5.0, np.float32) == pytest.approx(expected, abs=1e-5)
    restricted = baselines.ease(x, lam=5.0, max_items=5)(np.arange(3))
    kept = baselines.ease_items(x, 5)
    assert kept.size == 5 and np.isneginf(np.delete(restricted, kept, axis=1)).all()


def test_baselines_beat_popularity_on_planted_tastes() -> None:
    ds = generate_synthetic(n_users=400, n_items=300, mean_events_per_user=30, seed=1)
    split = temporal_split(ds)
    pop = evaluate(baselines.popularity(split.train), split)["ndcg@10"]
    for scorer in (baselines.item_knn(split.train), baselines.ease(split.train, lam=100.0),
                   baselines.als(split.train, factors=16, iterations=10, regularization=1.0, alpha=1.0)):
        assert evaluate(scorer, split)["ndcg@10"] > 1.3 * pop


# ----------------------------------------------------------------------------- splits

@pytest.fixture(scope="module")
def synth():
    return generate_synthetic(n_users=120, n_items=200, mean_events_per_user=25, seed=5)


def test_temporal_split_has_no_leakage(synth) -> None:
    split = temporal_split(synth)
    inter = synth.interactions()
    first_seen: dict[tuple[int, int], int] = {}
    for u, i, t in zip(inter.user_idx.tolist(), inter.item_idx.tolist(), inter.timestamps.tolist()):
        first_seen[(u, i)] = min(t, first_seen.get((u, i), t))
    for u in range(split.n_users):
        test_items = split.test_items(u)
        train_items = split.train[u].indices
        n_distinct = len({i for (uu, i) in first_seen if uu == u})
        assert len(test_items) == max(1, math.floor(0.2 * n_distinct + 0.5))
        assert not set(test_items) & set(train_items)
        oldest_test = min(first_seen[(u, i)] for i in test_items)
        assert (split.history_times(u) < oldest_test).all()  # nothing from the test period
        assert set(split.history(u)) == set(train_items)
        assert np.all(np.diff(split.history_times(u)) >= 0)  # histories oldest first
    # Items re-seen after the cut (cart/purchase of a train item) are dropped, never moved to test.
    assert split.train.nnz + split.test.nnz <= len(first_seen)


def test_temporal_split_small_users_train_only() -> None:
    from pipelines.data import Interactions

    inter = Interactions(user_ids=["a", "b"], item_ids=["x", "y", "z"],
                         user_idx=np.array([0, 1, 1, 1], dtype=np.int32),
                         item_idx=np.array([0, 0, 1, 2], dtype=np.int32),
                         timestamps=np.array([5, 1, 3, 2], dtype=np.int64),
                         event_types=np.zeros(4, dtype=np.int8))
    split = temporal_split(inter)
    assert split.test_users.tolist() == [1]
    assert split.test_items(1).tolist() == [1]  # b's newest item (t=3)
    assert split.history(1).tolist() == [0, 2] and split.history(0).tolist() == [0]


def test_cutoff_split_has_cold_items(synth) -> None:
    cutoff = synth.metadata["new_items_from_ms"]
    split = cutoff_split(synth, cutoff_ms=cutoff)
    cold = split.cold_items()
    new_in_test = {split.item_ids[i] for i in split.test.nonzero()[1]} & set(synth.metadata["new_items"])
    assert new_in_test and new_in_test <= {split.item_ids[i] for i in cold}
    assert (split.item_train_counts()[cold] == 0).all()
    assert (split.train_rows.timestamps < cutoff).all()
    pop = evaluate(baselines.popularity(split.train), split, target_items=cold)
    assert pop["users"] > 0 and pop["recall@20"] == 0


def test_fixed_split_uses_test_file() -> None:
    ds = load_user_item_lines(FIXTURES / "lines" / "train.txt", FIXTURES / "lines" / "test.txt")
    split = fixed_split(ds)
    items = split.item_ids
    assert {(split.user_ids[u], items[i]) for u, i in zip(*split.test.nonzero())} == \
        {("0", "3"), ("1", "0"), ("1", "4"), ("3", "5")}
    assert [items[i] for i in split.history(0)] == ["0", "1", "2"]
    assert split.test_users.tolist() == [0, 1, 3]


# ----------------------------------------------------------------------------- resources, registry, bench

def test_resource_monitor_sees_numpy_memory() -> None:
    with ResourceMonitor() as mon:
        block = np.ones(200 * 2**20 // 8)
        block += 1
        time.sleep(0.05)  # the monitor samples every 10 ms
        del block
    assert mon.peak_rss_mb > 150
    assert mon.seconds > 0


def test_missing_plugin_is_reported_and_broken_plugin_fails(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "PLUGIN_MODULES", ("no_such_runner_module_xyz",))
    assert "not found" in registry.load_plugins()[0]
    (tmp_path / "broken_runner_xyz.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "PLUGIN_MODULES", ("broken_runner_xyz",))
    with pytest.raises(ImportError):
        registry.load_plugins()
    sys.modules.pop("broken_runner_xyz", None)


def test_bench_quality_writes_report(tmp_path: Path) -> None:
    # run as the Makefile runs it (tests do not import a benchmark)
    data = tmp_path / "tinyshop"
    ds = generate_synthetic(n_users=80, n_items=120, mean_events_per_user=20, seed=2)
    write_events_jsonl(ds.events, data / "events.jsonl")
    out = tmp_path / "bench"
    subprocess.run([sys.executable, "-m", "bench.quality", "--data", str(data), "--models",
                    "popularity,item_knn,ease", "--out-dir", str(out), "--opt", "ease.lambda=50"],
                   check=True, cwd=ROOT, capture_output=True, timeout=120)
    report = json.loads((out / "quality-tinyshop.json").read_text())
    assert set(report) == {"dataset", "protocol", "machine", "models"}
    assert list(report["models"]) == ["popularity", "item_knn", "ease"]
    for entry in report["models"].values():
        assert set(entry) == set(registry.REQUIRED_KEYS)
        assert 0 <= entry["ndcg@10"] <= 1
    assert report["models"]["item_knn"]["ndcg@10"] > report["models"]["popularity"]["ndcg@10"]
    details = json.loads((out / "quality-tinyshop.details.json").read_text())
    assert "eval_seconds" in details["models"]["ease"]


# ----------------------------------------------------------------------------- ranked lists

def test_evaluate_lists_matches_evaluate_for_the_same_ranking(tiny_split: Split) -> None:
    # the lists evaluate() would take from SCORES (train items masked, best first)
    masked = SCORES.copy()
    masked[tiny_split.train.toarray() > 0] = -np.inf
    lists = top_k(masked, 2)
    users = np.arange(3)
    assert evaluate_lists(lists, users, tiny_split, ks=(1, 2)) == pytest.approx(
        evaluate(lambda u: SCORES[u], tiny_split, ks=(1, 2)))


def test_evaluate_lists_scores_lists_as_returned(tiny_split: Split) -> None:
    # u0 gets its train item 0 first: a miss that takes a slot (nothing is masked); -1 pads
    lists = np.array([[0, 1], [0, -1], [4, 3]])
    m = evaluate_lists(lists, np.arange(3), tiny_split, ks=(1, 2))
    assert m["recall@1"] == pytest.approx((0 + 1 + 1) / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) / (1 + 1 / math.log2(3)) + 1 + 1) / 3)
    assert ndcg_per_user(lists, np.arange(3), tiny_split, 1).tolist() == [0.0, 1.0, 1.0]


def test_random_split_holds_out_a_random_share_of_each_users_items() -> None:
    ds = generate_synthetic(n_users=60, n_items=80, mean_events_per_user=15, seed=4)
    a, b = random_split(ds, 0.2, seed=1), random_split(ds, 0.2, seed=2)
    assert a.protocol == "random" and a.test.nnz > 0
    assert a.train.multiply(a.test).nnz == 0  # no held-out pair keeps a train event
    assert (a.test != b.test).nnz > 0  # the seed decides which items
    n_items = np.diff((a.train + a.test).indptr)
    n_test = np.diff(a.test.indptr)
    many = n_items >= 5
    assert np.all(np.abs(n_test[many] - 0.2 * n_items[many]) <= 1)
