"""The TFRS two-tower retrieval model: a history-aware query tower and a content-aware candidate tower.

The towers work on integer indices (fast training); :mod:`pipelines.training.artifact` wraps them in
string-keyed serving signatures. Index conventions shared by training and serving, for every
vocabulary (users, items, categories, brands, tags): ``0`` is the padding / empty string, ``1`` the
out-of-vocabulary bucket and ``vocab[i]`` maps to ``i + 2``. Price is bucketised with the content
encoder's quantile edges (``np.searchsorted(edges, price, side="right")``).

* Query tower: ``user_emb(user) + W · pool(item_emb(history))``; the pool is a (recency-weighted)
  mean over the non-padding history items, so a user outside the vocabulary (OOV bucket) with a
  history still gets a personalised embedding.
* Candidate tower: ``item_emb(item) + Dense([category, brand, price bucket, mean(tags)])``; an item
  outside the vocabulary maps to the OOV row, so its embedding comes from its content. Training drops
  item ids to the OOV row with probability ``item_id_dropout`` so the content path learns to stand alone.
  With ``item_graph`` > 0 it adds a one-hop graph term, ``G · mean(user_emb(users of the item))``
  (the user table shared with the query tower, as one LightGCN layer on the item side): training
  samples ``item_graph`` of the item's users per example, never the example's own user; serving
  uses the exact mean over all its training users (``neighbor_mean`` input, zero for a new item).
* Losses: ``softmax`` (TFRS in-batch sampled softmax, optional popularity log-Q correction,
  temperature), ``bpr`` (pairwise with uniformly sampled negatives) or ``ccl`` (SimpleX's cosine
  contrastive loss; negatives: the batch's other items and its shared uniform ones).

Run ``python -m pipelines.training --help`` to train one.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from pipelines.training.features import OOV_INDEX, PAD_INDEX, RESERVED  # noqa: E402

__all__ = ["OOV_INDEX", "PAD_INDEX", "RESERVED", "ModelConfig", "TowerSizes", "TwoTowerModel",
           "build_model", "build_towers", "bpr_loss", "candidate_vectors", "user_table"]

LOSSES = ("softmax", "bpr", "ccl")
OPTIMIZERS = ("adam", "lazy_adam", "adagrad", "sgd")
HISTORY_POOLING = ("mean", "recency")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class ModelConfig:
    """Every hyper-parameter of the model and its training (stored in the artefact's metadata)."""

    dim: int = 64
    history_length: int = 50
    max_tags: int = 8
    loss: str = "softmax"
    optimizer: str = "lazy_adam"
    learning_rate: float = 5e-3
    lr_schedule: str = "constant"
    temperature: float = 0.1
    normalize: bool = True
    logq: bool = True
    bpr_negatives: int = 16
    ccl_margin: float = 0.9  # cosine above which a negative is penalised (loss "ccl")
    ccl_negative_weight: float = 150.0  # weight of the mean negative term (loss "ccl")
    uniform_negatives: int = 0
    history_sample: bool = False
    item_id_dropout: float = 0.1
    user_id_dropout: float = 0.1
    history_pooling: str = "mean"
    recency_decay: float = 0.9
    share_item_embeddings: bool = True
    item_graph: int = 0  # users sampled per item for the candidate tower's graph term (0: off)
    batch_size: int = 1024
    epochs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.history_pooling not in HISTORY_POOLING:
            raise ValueError(f"history_pooling must be one of {HISTORY_POOLING}, "
                             f"got {self.history_pooling!r}")
        if self.item_graph < 0:
            raise ValueError(f"item_graph must be >= 0, got {self.item_graph}")
        if self.item_graph and (self.loss != "softmax" or self.uniform_negatives):
            raise ValueError("item_graph needs loss 'softmax' without uniform_negatives")
        if self.uniform_negatives < 0:
            raise ValueError(f"uniform_negatives must be >= 0, got {self.uniform_negatives}")
        if self.loss == "ccl" and not (self.normalize and self.uniform_negatives):
            raise ValueError("loss 'ccl' needs normalize and uniform_negatives >= 1")
        if not -1.0 < self.ccl_margin < 1.0 or self.ccl_negative_weight < 0:
            raise ValueError("ccl_margin must be in (-1, 1) and ccl_negative_weight >= 0")
        for name in ("dim", "history_length", "max_tags", "batch_size", "bpr_negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not (self.learning_rate > 0 and self.temperature > 0):
            raise ValueError("learning_rate and temperature must be > 0")
        for name in ("item_id_dropout", "user_id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class TowerSizes:
    """Vocabulary sizes including the two reserved rows (padding, OOV)."""

    users: int
    items: int
    categories: int
    brands: int
    price_buckets: int
    tags: int


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam that updates only the embedding rows present in a sparse gradient (as TF Addons' LazyAdam).

    Keras' Adam decays the moments of every row of a table at every step, which on this 2-core
    machine doubled the step time of the Gowalla model (41k x 64 item table); rows absent from a
    batch keep their moments here. Dense gradients get the ordinary Adam update.
    """

    def update_step(self, gradient: tf.Tensor | tf.IndexedSlices, variable: tf.Variable) -> None:
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step))
                 / (1 - tf.pow(beta_1, step)))
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        rows, position = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
        return None


def epoch_learning_rate(config: ModelConfig, epoch: int) -> float:
    """Learning rate of an epoch (0-based): constant, or cosine decay from the full rate towards 0."""
    if config.lr_schedule == "constant" or config.epochs <= 1:
        return config.learning_rate
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))


def make_optimizer(config: ModelConfig) -> tf.keras.optimizers.Optimizer:
    """The optimiser named in the config."""
    lr = config.learning_rate
    if config.optimizer == "adam":
        return tf.keras.optimizers.Adam(learning_rate=lr)
    if config.optimizer == "lazy_adam":
        return LazyAdam(learning_rate=lr)
    if config.optimizer == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate=lr)
    return tf.keras.optimizers.SGD(learning_rate=lr)


def _embedding(rows: int, dim: int, name: str) -> tf.keras.layers.Embedding:
    return tf.keras.layers.Embedding(
        rows, dim, name=name,
        embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))


class HistoryPooling(tf.keras.layers.Layer):
    """(Recency-weighted) mean of the history's item embeddings, ignoring padding (index 0).

    The history is oldest first; with ``recency`` the most recent item has weight 1 and each
    older one ``decay`` times the next.
    """

    def __init__(self, pooling: str = "mean", decay: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pooling = pooling
        self.decay = decay

    def call(self, history: tf.Tensor, embedded: tf.Tensor) -> tf.Tensor:
        weights = tf.cast(history > PAD_INDEX, tf.float32)
        if self.pooling == "recency":
            length = tf.shape(history)[1]
            age = tf.cast(tf.range(length - 1, -1, -1), tf.float32)
            weights = weights * tf.pow(tf.constant(self.decay, tf.float32), age)[tf.newaxis, :]
        total = tf.reduce_sum(weights, axis=1, keepdims=True)
        pooled = tf.reduce_sum(embedded * weights[..., tf.newaxis], axis=1)
        return tf.math.divide_no_nan(pooled, total)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pooling": self.pooling, "decay": self.decay}


def build_item_embedding(sizes: TowerSizes, config: ModelConfig) -> tf.keras.layers.Embedding:
    """The item-id embedding table (shared by both towers when ``share_item_embeddings``)."""
    return _embedding(sizes.items, config.dim, "item_embedding")


def build_query_tower(sizes: TowerSizes, config: ModelConfig,
                      item_embedding: tf.keras.layers.Embedding | None = None) -> tf.keras.Model:
    """Query tower on indices: ``user [B] int32, history [B, N] int32 -> [B, D]``."""
    user = tf.keras.Input(shape=(), dtype=tf.int32, name="user")
    history = tf.keras.Input(shape=(None,), dtype=tf.int32, name="history")
    if item_embedding is None:
        item_embedding = _embedding(sizes.items, config.dim, "history_item_embedding")
    user_vec = _embedding(sizes.users, config.dim, USER_EMBEDDING)(user)
    pooled = HistoryPooling(config.history_pooling, config.recency_decay,
                            name="history_pooling")(history, item_embedding(history))
    hist_vec = tf.keras.layers.Dense(config.dim, use_bias=False, name="history_projection",
                                     kernel_initializer="identity")(pooled)
    out = tf.keras.layers.Add(name="query_sum")([user_vec, hist_vec])
    if config.normalize:
        out = tf.keras.layers.UnitNormalization(name="query_norm")(out)
    return tf.keras.Model(inputs={"user": user, "history": history}, outputs=out, name="query_tower")


def build_candidate_tower(sizes: TowerSizes, config: ModelConfig,
                          item_embedding: tf.keras.layers.Embedding | None = None) -> tf.keras.Model:
    """Candidate tower on indices: item, category, brand, price bucket [B], tags [B, T] -> [B, D]."""
    item = tf.keras.Input(shape=(), dtype=tf.int32, name="item")
    category = tf.keras.Input(shape=(), dtype=tf.int32, name="category")
    brand = tf.keras.Input(shape=(), dtype=tf.int32, name="brand")
    price = tf.keras.Input(shape=(), dtype=tf.int32, name="price")
    tags = tf.keras.Input(shape=(None,), dtype=tf.int32, name="tags")
    inputs = {"item": item, "category": category, "brand": brand, "price": price, "tags": tags}
    if item_embedding is None:
        item_embedding = build_item_embedding(sizes, config)
    content = tf.keras.layers.Concatenate(name="content_concat")([
        _embedding(sizes.categories, config.dim, "category_embedding")(category),
        _embedding(sizes.brands, config.dim, "brand_embedding")(brand),
        _embedding(sizes.price_buckets, config.dim, "price_embedding")(price),
        HistoryPooling("mean", name="tag_pooling")(
            tags, _embedding(sizes.tags, config.dim, "tag_embedding")(tags)),
    ])
    content_vec = tf.keras.layers.Dense(config.dim, name="content_projection")(content)
    parts = [item_embedding(item), content_vec]
    if config.item_graph:
        inputs["neighbor_mean"] = tf.keras.Input(shape=(config.dim,), dtype=tf.float32, name="neighbor_mean")
        parts.append(tf.keras.layers.Dense(config.dim, use_bias=False, name="graph_projection",
                                           kernel_initializer="identity")(inputs["neighbor_mean"]))
    out = tf.keras.layers.Add(name="candidate_sum")(parts)
    if config.normalize:
        out = tf.keras.layers.UnitNormalization(name="candidate_norm")(out)
    return tf.keras.Model(inputs=inputs, outputs=out, name="candidate_tower")


def build_towers(sizes: TowerSizes, config: ModelConfig) -> tuple[tf.keras.Model, tf.keras.Model]:
    """Both towers, sharing the item-id table when the config says so."""
    shared = build_item_embedding(sizes, config) if config.share_item_embeddings else None
    return (build_query_tower(sizes, config, shared),
            build_candidate_tower(sizes, config, shared))


def bpr_loss(positive_scores: tf.Tensor, negative_scores: tf.Tensor) -> tf.Tensor:
    """Mean of ``-log sigmoid(s+ - s-)`` over every (example, negative) pair.

    Args:
      positive_scores: ``[B]`` scores of the observed items.
      negative_scores: ``[B, K]`` scores of sampled negatives.
    """
    diff = positive_scores[:, tf.newaxis] - negative_scores
    return tf.reduce_mean(tf.nn.softplus(-diff))


class BPRTask(tf.keras.layers.Layer):
    """Pairwise BPR task: the observed item should outscore each sampled negative."""

    def __init__(self, temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = temperature

    def call(self, query: tf.Tensor, positive: tf.Tensor, negatives: tf.Tensor) -> tf.Tensor:
        pos = tf.reduce_sum(query * positive, axis=-1) / self.temperature
        neg = tf.einsum("bd,bkd->bk", query, negatives) / self.temperature
        return bpr_loss(pos, neg)


def ccl_loss(positive: tf.Tensor, negative: tf.Tensor, mask: tf.Tensor, margin: float,
             negative_weight: float) -> tf.Tensor:
    """Cosine contrastive loss (SimpleX): ``relu(1 - s+) + w * mean relu(s- - margin)``, batch mean.

    Args:
      positive: ``[B]`` cosine of each example with its item.
      negative: ``[B, M]`` cosines with the negatives.
      mask: ``[B, M]`` 1 for a real negative, 0 for an accidental hit (the example's own item).
    """
    hinge = tf.nn.relu(negative - margin) * mask
    mean_negative = tf.math.divide_no_nan(tf.reduce_sum(hinge, axis=1), tf.reduce_sum(mask, axis=1))
    return tf.reduce_mean(tf.nn.relu(1.0 - positive) + negative_weight * mean_negative)


CANDIDATE_KEYS = ("item", "category", "brand", "price", "tags")
USER_EMBEDDING = "user_embedding"  # the query tower's user table (the item graph term pools it)


def candidate_vectors(tower: tf.keras.Model, features: dict[str, np.ndarray],
                      neighbor_means: np.ndarray | None) -> np.ndarray:
    """The candidate tower's output; with the item graph, each row's neighbour mean by its item index."""
    if neighbor_means is not None:
        features = {**features, "neighbor_mean": neighbor_means[features["item"]]}
    return tower(features, training=False).numpy()


def user_table(query_tower: tf.keras.Model) -> np.ndarray:
    """The query tower's user-id embedding table ``[user rows, D]``."""
    return query_tower.get_layer(USER_EMBEDDING).embeddings.numpy()


class TwoTowerModel(tfrs.Model):
    """The retrieval model. Features (all int32 indices, see the module docstring):

    ``user [B]``, ``history [B, N]``, ``item``/``category``/``brand``/``price [B]``, ``tags [B, T]``,
    ``sampling_probability [B]`` (float32, for log-Q), for BPR ``neg_*`` with an extra ``K`` axis,
    and with ``uniform_negatives`` ``mix_*`` (``[M]``, items sampled uniformly, shared by the batch,
    with ``mix_probability``). With mixed negatives the log-Q correction uses the mixture
    ``(B * p(item) + M / n_items) / (B + M)`` for every column (in-batch and uniform).
    """

    def __init__(self, query_tower: tf.keras.Model, candidate_tower: tf.keras.Model,
                 config: ModelConfig) -> None:
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.config = config
        self.neighbor_pooling = HistoryPooling("mean", name="neighbor_pooling")
        if config.loss == "ccl":
            self.task = None  # compute_loss applies ccl_loss directly
        elif config.loss == "softmax":
            self.task = tfrs.tasks.Retrieval(
                temperature=config.temperature if config.normalize else None,
                remove_accidental_hits=True)
        else:
            self.task = BPRTask(temperature=config.temperature if config.normalize else 1.0)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        query = self.query_tower({"user": features["user"], "history": features["history"]})
        candidate_in = {k: features[k] for k in CANDIDATE_KEYS}
        if self.config.item_graph:
            users = self.query_tower.get_layer(USER_EMBEDDING)
            neighbors = features["neighbors"]
            candidate_in["neighbor_mean"] = self.neighbor_pooling(neighbors, users(neighbors))
        candidate = self.candidate_tower(candidate_in)
        if self.config.loss == "bpr":
            return self.task(query, candidate, self._embed_negatives(features))
        # columns: the batch's items, then the uniform negatives it shares (softmax, ccl)
        columns, probability, ids = candidate, features["sampling_probability"], features["item_key"]
        if self.config.uniform_negatives:
            extra = self.candidate_tower({k: features[f"mix_{k}"] for k in CANDIDATE_KEYS})
            columns = tf.concat([candidate, extra], axis=0)
            probability = tf.concat([probability, features["mix_probability"]], axis=0)
            ids = tf.concat([ids, features["mix_item"]], axis=0)
        if self.config.loss == "ccl":
            hits = tf.equal(features["item_key"][:, tf.newaxis], ids[tf.newaxis, :])
            return ccl_loss(tf.reduce_sum(query * candidate, axis=1),
                            tf.matmul(query, columns, transpose_b=True), 1.0 - tf.cast(hits, tf.float32),
                            self.config.ccl_margin, self.config.ccl_negative_weight)
        return self.task(query, columns,
                         candidate_sampling_probability=probability if self.config.logq else None,
                         candidate_ids=ids, compute_metrics=False, compute_batch_metrics=False)

    def _embed_negatives(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        neg_items = features["neg_item"]
        batch, k = tf.shape(neg_items)[0], tf.shape(neg_items)[1]
        flat = {key: tf.reshape(features[f"neg_{key}"], [batch * k]) for key in CANDIDATE_KEYS
                if key != "tags"}
        flat["tags"] = tf.reshape(features["neg_tags"], [batch * k, -1])
        emb = self.candidate_tower(flat)
        return tf.reshape(emb, [batch, k, -1])


def build_model(sizes: TowerSizes, config: ModelConfig) -> TwoTowerModel:
    """A compiled two-tower model with freshly initialised weights."""
    tf.keras.utils.set_random_seed(config.seed)
    query, candidate = build_towers(sizes, config)
    model = TwoTowerModel(query, candidate, config)
    model.compile(optimizer=make_optimizer(config))
    return model


def tower_weights(tower: tf.keras.Model) -> dict[str, np.ndarray]:
    """A tower's variables as ``{variable path: array}`` (for warm start)."""
    return {v.name: v.numpy() for v in tower.weights}


def assign_weights(tower: tf.keras.Model, weights: dict[str, np.ndarray],
                   new_row_init: dict[str, int] | None = None) -> list[str]:
    """Copy saved variables into ``tower``, growing embedding tables when the vocabulary grew.

    Rows ``[0, old_rows)`` keep their learned values; each new row is initialised from row
    ``new_row_init[layer name]`` of the old table (e.g. the OOV row), so a new id starts where an
    unknown id was. Returns the names of the variables that were not found.
    """
    new_row_init = new_row_init or {}
    missing = []
    for var in tower.weights:
        old = weights.get(var.name)
        if old is None:
            missing.append(var.name)
            continue
        target = var.shape.as_list()
        if list(old.shape) == target:
            var.assign(old)
            continue
        if len(old.shape) != 2 or old.shape[1] != target[1] or old.shape[0] > target[0]:
            raise ValueError(f"cannot grow {var.name} from {old.shape} to {target}")
        init_row = next((row for name, row in new_row_init.items() if name in var.name), OOV_INDEX)
        grown = np.repeat(old[init_row:init_row + 1], target[0], axis=0)
        grown[: old.shape[0]] = old
        var.assign(grown)
    return missing
