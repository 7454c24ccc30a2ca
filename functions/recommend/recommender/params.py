"""Request parameters: parsed from a query string or a JSON body, validated, typed.

Every invalid value raises :class:`InvalidParameter` naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from httpfn.errors import InvalidParameter
from schemas.catalog import MAX_STRING_CHARS
from schemas.ids import control_character, id_problem

from .config import Settings

# A category filter value can be any category the catalogue contract accepts.
MAX_CATEGORY_CHARS = MAX_STRING_CHARS

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


@dataclass(frozen=True)
class RecommendParams:
    """A validated ``/recommendations`` request."""

    user_id: str | None
    k: int
    alpha: float | None  # None: the model version's measured default (scoring.rank.resolve_alpha)
    categories: tuple[str, ...] = ()
    exclude_seen: bool = True
    in_stock_only: bool = True
    session_items: tuple[str, ...] = ()
    diversity: float = 0.0  # MMR λ (scoring.diversity): the request's, else DEFAULT_DIVERSITY
    session_id: str | None = None  # an anonymous session: the experiment unit when there is no user_id


@dataclass(frozen=True)
class SimilarParams:
    """A validated ``/similar-items`` request."""

    item_id: str
    k: int
    in_stock_only: bool = True


def check_id(name: str, value: Any) -> str:
    """An id under the one id contract (:mod:`schemas.ids`): what ingest and the pipeline accept."""
    if (problem := id_problem(value)) is not None:
        raise InvalidParameter(f"{name} {problem}", name)
    return value


def check_text(name: str, value: str, max_len: int = MAX_CATEGORY_CHARS) -> str:
    """A free-text value such as a category name: non-empty, bounded, no control characters."""
    if not value or len(value) > max_len:
        raise InvalidParameter(f"{name} values must have 1 to {max_len} characters", name)
    if control_character(value) is not None or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidParameter(f"{name} must not contain control characters", name)
    return value


def parse_k(value: Any, max_k: int, text: bool = True) -> int:
    """An int in 1..max_k; from a query string (``text``) or a JSON integer."""
    if isinstance(value, bool) or (isinstance(value, str) and not text):
        raise InvalidParameter(f"k must be an integer between 1 and {max_k}", "k")
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError as e:
            raise InvalidParameter(f"k must be an integer between 1 and {max_k}", "k") from e
    if not isinstance(value, int) or not 1 <= value <= max_k:
        raise InvalidParameter(f"k must be an integer between 1 and {max_k}", "k")
    return value


def parse_unit(name: str, value: Any, text: bool = True) -> float:
    """A float in [0, 1]; from a query string (``text``) or a JSON number."""
    msg = f"{name} must be a number between 0 and 1"
    if isinstance(value, bool) or (isinstance(value, str) and not text):
        raise InvalidParameter(msg, name)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError as e:
            raise InvalidParameter(msg, name) from e
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidParameter(msg, name)
    return float(value)


def parse_alpha(value: Any, text: bool = True) -> float:
    """``alpha``: a float in [0, 1]."""
    return parse_unit("alpha", value, text)


def parse_bool(name: str, value: Any, text: bool = True) -> bool:
    """true/false/1/0 from a query string (``text``, any case), or a JSON boolean."""
    if isinstance(value, bool):
        return value
    if text and isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise InvalidParameter(f"{name} must be {'true, false, 1 or 0' if text else 'a JSON boolean'}", name)


def parse_list(name: str, value: Any, max_items: int, comma_separated: bool,
               check: Callable[[str, str], str], exact: bool = False) -> tuple[str, ...]:
    """A de-duplicated list of strings from a JSON array or from query values, each ``check``-ed.

    With ``comma_separated`` every string is split on commas first (``a,b`` -> ``a``, ``b``).
    Values are stripped, unless ``exact``: then each string is one value as it is (a JSON array of
    ids, where an id may hold a comma or edge spaces, as the id contract allows).
    """
    if isinstance(value, str):
        raw = [value]
    elif isinstance(value, (list, tuple)):
        raw = list(value)
    else:
        raise InvalidParameter(f"{name} must be a string or a list of strings", name)
    items: list[str] = []
    for v in raw:
        if not isinstance(v, str):
            raise InvalidParameter(f"{name} must contain only strings", name)
        if (isinstance(value, (list, tuple)) or not comma_separated) and not v.strip():
            raise InvalidParameter(f"{name} must not contain empty strings", name)
        if exact:
            items.append(v)
            continue
        parts = v.split(",") if comma_separated else [v]
        items.extend(p.strip() for p in parts if p.strip())
    if len(items) > max_items:
        raise InvalidParameter(f"{name} has {len(items)} values; at most {max_items} allowed", name)
    for v in items:
        check(name, v)
    return tuple(dict.fromkeys(items))


def _single(args: Mapping[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidParameter(f"{name} is given more than once", name)
    return values[0]


def recommend_params(values: Mapping[str, Any], settings: Settings, from_query: bool
                     ) -> RecommendParams:
    """Validate ``/recommendations`` input: query-string lists (``from_query``) or a JSON object.

    In JSON only ``user_id`` and ``session_id`` may be null; an explicit null elsewhere is an
    invalid value.
    """
    if from_query:
        present = {n: v for n in _FIELDS[:-2] if (v := _single(values, n)) is not None}
        for n in ("category", "session_items"):  # repeatable in a query string
            if n in values:
                present[n] = values[n]
    else:
        present = {n: values[n] for n in _FIELDS if n in values}
        for n in ("user_id", "session_id"):
            if present.get(n) is None:
                present.pop(n, None)
    user_id, session_id = present.get("user_id"), present.get("session_id")
    return RecommendParams(
        user_id=None if user_id is None else check_id("user_id", user_id),
        k=parse_k(present["k"], settings.max_k, from_query) if "k" in present else settings.default_k,
        alpha=parse_alpha(present["alpha"], from_query) if "alpha" in present else None,
        categories=parse_list(
            "category", present["category"], settings.max_categories,
            comma_separated=False, check=check_text) if "category" in present else (),
        exclude_seen=parse_bool("exclude_seen", present.get("exclude_seen", True), from_query),
        in_stock_only=parse_bool("in_stock_only", present.get("in_stock_only", True), from_query),
        session_items=parse_list(
            "session_items", present["session_items"], settings.max_session_items,
            comma_separated=True, check=check_id,
            exact=not from_query and isinstance(present["session_items"], list))
        if "session_items" in present else (),
        diversity=parse_unit("diversity", present["diversity"], from_query) if "diversity" in present
        else settings.default_diversity,
        session_id=None if session_id is None else check_id("session_id", session_id),
    )


_FIELDS = ("user_id", "session_id", "k", "alpha", "diversity", "exclude_seen", "in_stock_only",
           "category", "session_items")  # the last two repeat in a query string


def similar_params(values: Mapping[str, list[str]], settings: Settings) -> SimilarParams:
    """Validate ``/similar-items`` query-string input."""
    item_id = _single(values, "item_id")
    if item_id is None:
        raise InvalidParameter("item_id is required", "item_id")
    k = _single(values, "k")
    in_stock_only = _single(values, "in_stock_only")
    return SimilarParams(
        item_id=check_id("item_id", item_id),
        k=settings.default_k if k is None else parse_k(k, settings.max_k),
        in_stock_only=True if in_stock_only is None else parse_bool("in_stock_only", in_stock_only),
    )
