"""Content-feature encoder usable without TensorFlow.

Turns a catalogue item's attributes (category, brand, price bucket, tags) into a
fixed-length, L2-normalised float32 vector. The training job fits it on the
catalogue and saves it as JSON in the model artefact; the pipeline (new items)
and the recommend function (content-based score) load that JSON. Unknown values
map to nothing in their block, so a new brand does not break an old encoder.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas.catalog import CatalogItem

# Relative weight of each block before normalisation: category is the strongest signal.
DEFAULT_WEIGHTS = {"category": 1.0, "brand": 0.7, "price": 0.3, "tags": 0.5}


@dataclass
class ContentEncoder:
    """Vocabulary-based multi-hot encoder with block weights."""

    categories: list[str]
    brands: list[str]
    tags: list[str]
    price_edges: list[float]
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self) -> None:
        self._cat = {v: i for i, v in enumerate(self.categories)}
        self._brand = {v: i for i, v in enumerate(self.brands)}
        self._tag = {v: i for i, v in enumerate(self.tags)}
        n_cat, n_brand, n_price = len(self.categories), len(self.brands), len(self.price_edges) + 1
        self._offsets = {"category": 0, "brand": n_cat, "price": n_cat + n_brand,
                         "tags": n_cat + n_brand + n_price}
        self.dim = n_cat + n_brand + n_price + len(self.tags)

    @classmethod
    def fit(cls, items: Iterable[CatalogItem], max_brands: int = 2000, max_tags: int = 2000,
            price_buckets: int = 8) -> ContentEncoder:
        """Fit the vocabularies (most frequent first) and price quantile edges."""
        items = list(items)
        cats = Counter(i.category for i in items if i.category)
        brands = Counter(i.brand for i in items if i.brand)
        tags = Counter(t for i in items for t in set(i.tags) if t)
        prices = np.array([i.price for i in items], dtype=np.float64)
        edges: list[float] = []
        if len(prices) and price_buckets > 1:
            qs = np.quantile(prices, np.linspace(0, 1, price_buckets + 1)[1:-1])
            edges = sorted(set(float(q) for q in qs))
        return cls(categories=sorted(cats, key=lambda k: (-cats[k], k)),
                   brands=[b for b, _ in sorted(brands.items(), key=lambda kv: (-kv[1], kv[0]))][:max_brands],
                   tags=[t for t, _ in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))][:max_tags],
                   price_edges=edges)

    def price_bucket(self, price: float) -> int:
        return int(np.searchsorted(np.asarray(self.price_edges), price, side="right"))

    def encode(self, item: CatalogItem) -> np.ndarray:
        """One item's L2-normalised content vector (all zeros if nothing is known)."""
        return self.encode_many([item])[0]

    def encode_many(self, items: Sequence[CatalogItem]) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        w = self.weights
        for row, item in enumerate(items):
            if (c := self._cat.get(item.category)) is not None:
                out[row, self._offsets["category"] + c] = w["category"]
            if (b := self._brand.get(item.brand)) is not None:
                out[row, self._offsets["brand"] + b] = w["brand"]
            out[row, self._offsets["price"] + self.price_bucket(item.price)] = w["price"]
            known = [self._tag[t] for t in set(item.tags) if t in self._tag]
            if known:
                out[row, [self._offsets["tags"] + t for t in known]] = w["tags"] / np.sqrt(len(known))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def to_json(self) -> str:
        return json.dumps({"categories": self.categories, "brands": self.brands, "tags": self.tags,
                           "price_edges": self.price_edges, "weights": self.weights})

    @classmethod
    def from_json(cls, text: str) -> ContentEncoder:
        d: Mapping = json.loads(text)
        return cls(categories=list(d["categories"]), brands=list(d["brands"]),
                   tags=list(d["tags"]), price_edges=[float(x) for x in d["price_edges"]],
                   weights=dict(d.get("weights") or DEFAULT_WEIGHTS))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ContentEncoder:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
