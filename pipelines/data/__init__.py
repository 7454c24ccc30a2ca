"""Data: the synthetic generator, loaders for public interaction data sets, event files.

>>> from pipelines.data import generate_synthetic, load_dataset
>>> ds = generate_synthetic(n_users=50, n_items=100)
>>> inter = ds.interactions()   # columnar view for training and evaluation
"""

from pipelines.data.dataset import ColumnarEvents, DataError, Dataset, Interactions
from pipelines.data.event_files import load_events_file
from pipelines.data.eventio import iter_events_jsonl, read_events_jsonl, write_events_jsonl
from pipelines.data.loaders import (
                                    KNOWN_NAMES,
                                    load_dataset,
                                    load_directory,
                                    load_movielens_100k,
                                    load_movielens_latest_small,
                                    load_user_item_lines,
)
from pipelines.data.synthetic import generate_synthetic

__all__ = [
    "KNOWN_NAMES", "ColumnarEvents", "DataError", "Dataset", "Interactions", "generate_synthetic",
    "iter_events_jsonl", "load_dataset", "load_directory", "load_events_file", "load_movielens_100k",
    "load_movielens_latest_small", "load_user_item_lines", "read_events_jsonl", "write_events_jsonl",
]
