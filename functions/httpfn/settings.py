"""Typed readers of environment variables, validated at start-up.

Each reader returns the default when the variable is unset or empty, and raises
:class:`ConfigError` naming the variable when its value is unusable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping


class ConfigError(ValueError):
    """An environment variable holds a value the function cannot run with."""


def _raw(env: Mapping[str, str] | None, name: str) -> str | None:
    raw = (os.environ if env is None else env).get(name)
    return None if raw is None or raw == "" else raw


def env_str(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    """``name`` as a string, or ``default`` when unset or empty."""
    raw = _raw(env, name)
    return default if raw is None else raw


def env_float(name: str, default: float, low: float, high: float,
              env: Mapping[str, str] | None = None) -> float:
    """``name`` as a float in ``[low, high]``."""
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r} is not a number") from e
    if math.isnan(value) or not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def env_int(name: str, default: int, low: int, high: int, env: Mapping[str, str] | None = None) -> int:
    """``name`` as an integer in ``[low, high]``."""
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r} is not an integer") from e
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...],
               env: Mapping[str, str] | None = None) -> str:
    """``name`` lower-cased, one of ``choices``."""
    raw = _raw(env, name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value
