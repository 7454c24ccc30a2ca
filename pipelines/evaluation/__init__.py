"""Offline evaluation: splits, full-ranking metrics, baselines and the model-runner registry.

>>> from pipelines.data import load_dataset
>>> from pipelines.evaluation import baselines, evaluate, split_for
>>> split = split_for(load_dataset("ml-latest-small"))
>>> evaluate(baselines.popularity(split.train), split)   # {"recall@10": ..., "ndcg@20": ..., ...}
"""

from pipelines.evaluation.metrics import Scorer, evaluate, top_k
from pipelines.evaluation.registry import REQUIRED_KEYS, RunOptions, entry, register, runners
from pipelines.evaluation.resources import ResourceMonitor
from pipelines.evaluation.splits import Split, cutoff_split, fixed_split, split_for, temporal_split

__all__ = ["REQUIRED_KEYS", "ResourceMonitor", "RunOptions", "Scorer", "Split", "cutoff_split", "entry",
           "evaluate", "fixed_split", "register", "runners", "split_for", "temporal_split", "top_k"]
