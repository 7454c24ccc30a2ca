"""The experiment contract: ``experiments/{id}`` documents, arm assignment, served records, arm figures.

One source for every part that the CLI (``scripts/experiments.py``), the recommend function (which
assigns and serves), the pipeline (which attributes events to served lists) and the demo share:

* :class:`Experiment` / :class:`Arm` / :class:`ArmOverrides`: the document a team writes;
* :func:`assign`: the deterministic arm of a user (or anonymous session) in an experiment;
* :class:`ServedRecord`: what the function publishes on ``recommendations-served`` per list
  (``served_record.avsc``);
* :class:`ArmCounts` and :func:`arm_figures` / :func:`compare_arms`: the per-arm counts the
  pipeline keeps and the rates, 95 % intervals (Wilson) and two-proportion tests it writes to
  ``stats/experiments/{experiment_id}/{arm}``.

Rates are per impression: an item shown in a served list is one trial, a view of it carrying the
list's ``recommendation_id`` a click, an add-to-cart or purchase of it a conversion.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas import names
from schemas._avro import decode_json_payload, load_schema, unwrap_unions, validate_record
from schemas.errors import InvalidRecord
from schemas.ids import check_id

SERVED_SCHEMA_FILE = "served_record.avsc"
ARM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # a Firestore document id, never "_summary"
SUMMARY_DOC = "_summary"  # stats/experiments/{id}/_summary: the comparison of the arms
MAX_ARMS = 10
RETRIEVAL_BACKENDS = ("exact", "ivf", "faiss")
SHARE_TOLERANCE = 1e-6
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class ArmOverrides:
    """What an arm changes for its requests; ``None`` keeps the request's or the function's value."""

    alpha: float | None = None
    model_version: str | None = None
    retrieval: str | None = None  # one of RETRIEVAL_BACKENDS
    pool: int | None = None  # candidate pool size
    diversity: float | None = None  # MMR λ in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("alpha", self.alpha), ("model_version", self.model_version),
                                  ("retrieval", self.retrieval), ("pool", self.pool),
                                  ("diversity", self.diversity)) if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ArmOverrides:
        """Validate; raise ``InvalidRecord`` naming the bad override."""
        d = dict(d or {})
        unknown = set(d) - {"alpha", "model_version", "retrieval", "pool", "diversity"}
        if unknown:
            raise InvalidRecord("overrides", f"unknown override(s): {', '.join(sorted(unknown))}")
        for name in ("alpha", "diversity"):
            v = d.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not 0.0 <= float(v) <= 1.0):
                raise InvalidRecord(f"overrides.{name}", "must be a number in [0, 1]")
        pool = d.get("pool")
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int)
                                 or not 1 <= pool <= 100_000):
            raise InvalidRecord("overrides.pool", "must be an integer in [1, 100000]")
        retrieval = d.get("retrieval")
        if retrieval is not None and retrieval not in RETRIEVAL_BACKENDS:
            raise InvalidRecord("overrides.retrieval", f"must be one of {', '.join(RETRIEVAL_BACKENDS)}")
        version = d.get("model_version")
        if version is not None:
            check_id("overrides.model_version", version)
        return cls(alpha=None if d.get("alpha") is None else float(d["alpha"]), model_version=version,
                   retrieval=retrieval, pool=pool,
                   diversity=None if d.get("diversity") is None else float(d["diversity"]))


@dataclass(frozen=True)
class Arm:
    """One arm: a name, its share of the traffic (shares sum to 1) and its overrides."""

    name: str
    share: float
    overrides: ArmOverrides = field(default_factory=ArmOverrides)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "share": self.share, "overrides": self.overrides.to_dict()}


@dataclass(frozen=True)
class Experiment:
    """``experiments/{id}``: arms, and when it runs (``stop_ms`` None: until stopped)."""

    id: str
    arms: tuple[Arm, ...]
    start_ms: int
    stop_ms: int | None = None
    description: str = ""

    def running(self, now_ms: int) -> bool:
        """True while requests at ``now_ms`` are assigned to its arms."""
        return self.start_ms <= now_ms and (self.stop_ms is None or now_ms < self.stop_ms)

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)

    def to_document(self) -> dict[str, Any]:
        return {"arms": [a.to_dict() for a in self.arms], "start_ms": self.start_ms,
                "stop_ms": self.stop_ms, "description": self.description}

    @classmethod
    def from_document(cls, experiment_id: str, doc: Mapping[str, Any]) -> Experiment:
        """Validate a stored (or CLI-given) document; raise ``InvalidRecord`` saying why not."""
        check_id("experiment_id", experiment_id)
        if "/" in experiment_id or experiment_id.startswith("__"):
            raise InvalidRecord("experiment_id", "must be a Firestore document id (no '/', no '__' prefix)")
        raw_arms = doc.get("arms")
        if not isinstance(raw_arms, list) or not 2 <= len(raw_arms) <= MAX_ARMS:
            raise InvalidRecord("arms", f"expected a list of 2 to {MAX_ARMS} arms")
        arms = []
        for i, a in enumerate(raw_arms):
            if not isinstance(a, Mapping):
                raise InvalidRecord(f"arms[{i}]", "expected an object")
            name, share = a.get("name"), a.get("share")
            if not isinstance(name, str) or not ARM_NAME.match(name):
                raise InvalidRecord(f"arms[{i}].name", f"must match {ARM_NAME.pattern}")
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
                raise InvalidRecord(f"arms[{i}].share", "must be a number in (0, 1]")
            arms.append(Arm(name, float(share), ArmOverrides.from_dict(a.get("overrides"))))
        if len({a.name for a in arms}) != len(arms):
            raise InvalidRecord("arms", "arm names must be unique")
        if abs(sum(a.share for a in arms) - 1.0) > SHARE_TOLERANCE:
            raise InvalidRecord("arms", "shares must sum to 1")
        start, stop = doc.get("start_ms"), doc.get("stop_ms")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InvalidRecord("start_ms", "expected epoch milliseconds")
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < start):
            raise InvalidRecord("stop_ms", "expected epoch milliseconds, not before start_ms")
        description = doc.get("description") or ""
        if not isinstance(description, str):
            raise InvalidRecord("description", "expected a string")
        return cls(experiment_id, tuple(arms), start, stop, description)


def is_arm_doc(doc_id: str) -> bool:
    """Whether a ``stats/experiments/{id}`` document holds an arm's figures, not bookkeeping.

    Why: arm names never start with ``_`` (:data:`ARM_NAME`); ``_summary`` and the pipeline's
    ``_dedup`` memory do, so every reader tells them apart by this one rule.
    """
    return not doc_id.startswith("_")


def stats_path(experiment_id: str) -> str:
    """``stats/experiments/{experiment_id}``: the collection of its arm and ``_summary`` documents."""
    return f"{names.STATS}/{names.EXPERIMENT_STATS_DOC}/{experiment_id}"


def bucket(experiment_id: str, unit_id: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment, user or session): SHA-256, not ``hash()``."""
    digest = hashlib.sha256(f"{experiment_id}\x00{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(experiment: Experiment, unit_id: str) -> Arm:
    """The arm of ``unit_id`` (user id, else session id): the same on every instance and restart."""
    u, edge = bucket(experiment.id, unit_id), 0.0
    for a in experiment.arms:
        edge += a.share
        if u < edge:
            return a
    return experiment.arms[-1]  # shares sum to 1 within SHARE_TOLERANCE


# ----------------------------------------------------------------------------- served records


@dataclass(frozen=True)
class ServedRecord:
    """One list the function answered: who, which arm, which items at which positions, when."""

    recommendation_id: str
    timestamp: int  # epoch ms
    items: tuple[str, ...]  # position 0 first
    model_version: str | None = None
    strategy: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    experiment: str | None = None
    arm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"recommendation_id": self.recommendation_id, "timestamp": self.timestamp,
                "items": list(self.items), "model_version": self.model_version,
                "strategy": self.strategy, "user_id": self.user_id, "session_id": self.session_id,
                "experiment": self.experiment, "arm": self.arm}

    def to_pubsub_data(self) -> bytes:
        body = {k: v for k, v in self.to_dict().items() if v is not None}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def pubsub_attributes(self) -> dict[str, str]:
        attrs = {"recommendation_id": self.recommendation_id}
        if self.experiment is not None:
            attrs["experiment"] = self.experiment
        return attrs


def served_schema() -> dict[str, Any]:
    return load_schema(SERVED_SCHEMA_FILE)


def validate_served(record: Mapping[str, Any]) -> ServedRecord:
    """Validate a decoded served record; raise ``InvalidRecord``."""
    if not isinstance(record, Mapping):
        raise InvalidRecord("payload", f"expected a JSON object, got {type(record).__name__}")
    schema = served_schema()
    rec = unwrap_unions(dict(record), schema)
    validate_record(rec, schema)
    check_id("recommendation_id", rec["recommendation_id"])
    for name in ("user_id", "session_id", "experiment", "arm", "model_version"):
        if rec.get(name) is not None:
            check_id(name, rec[name])
    for i, item in enumerate(rec["items"]):
        check_id(f"items[{i}]", item)
    if (rec.get("experiment") is None) != (rec.get("arm") is None):
        raise InvalidRecord("arm", "experiment and arm are both set or both absent")
    return ServedRecord(recommendation_id=rec["recommendation_id"], timestamp=int(rec["timestamp"]),
                        items=tuple(rec["items"]), model_version=rec.get("model_version"),
                        strategy=rec.get("strategy"), user_id=rec.get("user_id"),
                        session_id=rec.get("session_id"), experiment=rec.get("experiment"),
                        arm=rec.get("arm"))


def parse_served(data: bytes | str) -> ServedRecord:
    """Parse a ``recommendations-served`` message body; raise ``InvalidRecord``."""
    return validate_served(decode_json_payload(data))


# ----------------------------------------------------------------------------- arm figures


@dataclass(frozen=True)
class ArmCounts:
    """What the pipeline counts per arm (``stats/experiments/{id}/{arm}``, with the figures)."""

    served: int = 0  # lists
    shown: int = 0  # impressions: items in those lists
    clicks: int = 0  # distinct (list, item) views
    carts: int = 0  # distinct (list, item) add-to-carts
    purchases: int = 0  # distinct (list, item) purchases
    click_positions: tuple[int, ...] = ()  # clicks per position, position 0 first

    def plus(self, other: ArmCounts) -> ArmCounts:
        n = max(len(self.click_positions), len(other.click_positions))
        pos = tuple((self.click_positions[i] if i < len(self.click_positions) else 0)
                    + (other.click_positions[i] if i < len(other.click_positions) else 0) for i in range(n))
        return ArmCounts(self.served + other.served, self.shown + other.shown, self.clicks + other.clicks,
                         self.carts + other.carts, self.purchases + other.purchases, pos)

    def to_dict(self) -> dict[str, Any]:
        return {"served": self.served, "shown": self.shown, "clicks": self.clicks, "carts": self.carts,
                "purchases": self.purchases, "click_positions": list(self.click_positions)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArmCounts:
        return cls(int(d.get("served", 0)), int(d.get("shown", 0)), int(d.get("clicks", 0)),
                   int(d.get("carts", 0)), int(d.get("purchases", 0)),
                   tuple(int(x) for x in d.get("click_positions", ())))


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion: sound at small counts and rates near 0, unlike Wald's."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p_value(s1: int, n1: int, s2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; None when either side has no trials."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0.0:
        return 1.0
    z = (s1 / n1 - s2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2.0))


def arm_figures(counts: ArmCounts) -> dict[str, Any]:
    """Counts plus CTR and conversion (purchases per impression) with 95 % Wilson intervals."""
    ctr = counts.clicks / counts.shown if counts.shown else 0.0
    conv = counts.purchases / counts.shown if counts.shown else 0.0
    clicks = sum(counts.click_positions)
    mean_pos = (sum(i * c for i, c in enumerate(counts.click_positions)) / clicks) if clicks else None
    return {**counts.to_dict(), "ctr": ctr, "ctr_ci95": list(wilson_interval(counts.clicks, counts.shown)),
            "conversion": conv, "conversion_ci95": list(wilson_interval(counts.purchases, counts.shown)),
            "mean_click_position": mean_pos}


def compare_arms(arms: Sequence[tuple[str, ArmCounts]]) -> dict[str, Any]:
    """Each later arm against the first (the control): CTR and conversion differences and p-values."""
    if not arms:
        return {"control": None, "comparisons": []}
    control, c = arms[0]
    out = []
    for name, t in arms[1:]:
        out.append({
            "arm": name,
            "ctr_diff": (t.clicks / t.shown if t.shown else 0.0) - (c.clicks / c.shown if c.shown else 0.0),
            "ctr_p_value": two_proportion_p_value(t.clicks, t.shown, c.clicks, c.shown),
            "conversion_diff": ((t.purchases / t.shown if t.shown else 0.0)
                                - (c.purchases / c.shown if c.shown else 0.0)),
            "conversion_p_value": two_proportion_p_value(t.purchases, t.shown, c.purchases, c.shown),
        })
    return {"control": control, "comparisons": out}
