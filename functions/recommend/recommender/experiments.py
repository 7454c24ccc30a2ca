"""Online experiments as the function serves them: the running set, a request's arm, its overrides.

The background refresh (:mod:`recommender.lifecycle`) reads ``experiments/*`` and swaps in a new
:class:`ExperimentSet`; requests only read that reference, so none waits on Firestore. A failed
read keeps the last set; an invalid document is logged once and left out (never a 500).

Rules (one place, so the CLI, the demo and the docs can point here):

* the unit is the request's ``user_id``, else its ``session_id``, else no experiment;
* of the experiments running at the request's time, the first by id takes the unit (experiments
  are mutually exclusive for a unit: two running at once split nothing, the later ids wait);
* the arm is :func:`schemas.experiments.assign` (the same on every instance and restart);
* the arm's overrides win over the request's own ``alpha`` / ``diversity``: the experiment is what
  is being measured, so a client cannot move a unit out of its arm's treatment.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from schemas.errors import InvalidRecord
from schemas.experiments import ArmOverrides, Experiment, assign
from schemas.firestore import ModelDoc

from .params import RecommendParams

log = logging.getLogger(__name__)

_DOC_ERRORS = (InvalidRecord, KeyError, TypeError, ValueError)


@runtime_checkable
class ExperimentStore(Protocol):
    """A store that lists ``experiments/*`` and reads ``models/{version}`` (``FirestoreStore``).

    Why: optional beside :class:`recommender.store.Store`; a store without it serves no experiment.
    """

    def list_experiments(self) -> list[tuple[str, dict[str, Any]]]: ...
    def get_model(self, version: str) -> ModelDoc | None: ...


@dataclass(frozen=True)
class Assignment:
    """The experiment and arm a request is served under, and what the arm changes.

    Why: one value the service passes to ranking, the response and the served record.
    """

    experiment: str
    arm: str
    overrides: ArmOverrides


@dataclass(frozen=True)
class ExperimentSet:
    """The valid experiments last read, sorted by id (immutable: swapped whole by the refresh).

    Why: a request reads one consistent set without a lock.
    """

    experiments: tuple[Experiment, ...] = ()

    def running(self, now_ms: int) -> tuple[Experiment, ...]:
        """The experiments running at ``now_ms`` (started, not stopped).

        Why: a stop_ms that passes takes effect at once, without waiting for a refresh.
        """
        return tuple(e for e in self.experiments if e.running(now_ms))

    def assign(self, unit_id: str | None, now_ms: int) -> Assignment | None:
        """The arm of ``unit_id`` in the first running experiment by id, or None.

        Why: one deterministic rule when several run (see the module docstring).
        """
        if unit_id is None:
            return None
        for experiment in self.experiments:
            if experiment.running(now_ms):
                arm = assign(experiment, unit_id)
                return Assignment(experiment.id, arm.name, arm.overrides)
        return None

    def model_versions(self, now_ms: int) -> frozenset[str]:
        """Model versions named by an arm of an experiment running now or starting later.

        Why: the index manager loads those snapshots ahead, in the background refresh.
        """
        return frozenset(a.overrides.model_version for e in self.experiments
                         if e.stop_ms is None or now_ms < e.stop_ms
                         for a in e.arms if a.overrides.model_version is not None)


class ExperimentParser:
    """Turns ``experiments/*`` documents into an :class:`ExperimentSet`, skipping invalid ones.

    Why: a bad document written by hand must never fail requests; it is logged once per problem.
    """

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()

    def parse(self, docs: Iterable[tuple[str, Mapping[str, Any]]]) -> ExperimentSet:
        """The valid experiments of ``docs`` (``(id, document)`` pairs), sorted by id.

        Why: the refresh swaps the result in whole.
        """
        out = []
        for experiment_id, doc in docs:
            try:
                out.append(Experiment.from_document(experiment_id, doc))
            except _DOC_ERRORS as e:
                problem = f"{type(e).__name__}: {e}"
                if (experiment_id, problem) not in self._warned:
                    self._warned.add((experiment_id, problem))
                    log.error("experiments/%s is invalid and ignored: %s", experiment_id, problem)
        return ExperimentSet(tuple(sorted(out, key=lambda e: e.id)))


def unit_of(p: RecommendParams) -> str | None:
    """The unit a request is assigned by: its user id, else its session id, else None.

    Why: the same user (or anonymous session) always lands in the same arm.
    """
    return p.user_id if p.user_id is not None else p.session_id


def with_overrides(p: RecommendParams, overrides: ArmOverrides | None) -> RecommendParams:
    """``p`` with the arm's ``alpha`` and ``diversity`` in place of the request's.

    Why: the arm wins over a client's explicit value (the treatment is what is measured), and the
    response then reports the values that ranked.
    """
    if overrides is None:
        return p
    changes: dict[str, Any] = {}
    if overrides.alpha is not None:
        changes["alpha"] = overrides.alpha
    if overrides.diversity is not None:
        changes["diversity"] = overrides.diversity
    return dataclasses.replace(p, **changes) if changes else p
