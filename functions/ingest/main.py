"""HTTP ingest: lets web and mobile clients send product events without Pub/Sub credentials.

``POST /`` with one event (a JSON object) or a JSON array of up to ``MAX_EVENTS`` events,
plain JSON or Avro JSON (``schemas/product_event.avsc``, ``docs/events.md``). Each event is
validated; the valid ones are published to the events topic as plain JSON (the format
``docs/events.md`` documents) and the answer says what happened::

    202 {"accepted": 2, "rejected": 1, "event_ids": ["e1", "e2"],
         "errors": [{"index": 2, "field": "timestamp", "reason": "..."}]}

Any other status answers the body every HTTP function answers (``httpfn/errors.py``)::

    {"error": {"code": "invalid_parameter", "message": "...", ...details}}

with the details inside the ``error`` object: a 400 or 503 after validation carries
``accepted``, ``rejected``, ``event_ids`` and the per-event ``errors`` (the 503 also
``not_published``); a 413 carries ``max_bytes`` or ``max_events``.

* 400 ``invalid_parameter``: the body is not JSON, not an event or event list, or no
  event in it is valid.
* 413 ``payload_too_large``: the body is larger than ``MAX_BODY_BYTES`` (checked before
  reading) or has more than ``MAX_EVENTS`` events.
* 405 ``method_not_allowed``: any method but ``POST`` (``GET /healthz`` answers 200).
* 503 ``unavailable``: publishing failed (our side); ``not_published`` lists the event ids
  that were not published. Retrying them is safe: ``event_id`` is the idempotency key downstream.
* 500 ``internal``: the function is misconfigured (a bad setting, named in the message).

``DELETE /users/{user_id}`` (a data-protection request) publishes a forget request on the
same topic (attribute ``kind=forget``, ``schemas.events.ForgetRequest``) and answers
``202 {"request_id", "user_id", "forget_at"}``; the pipeline then deletes ``users/{id}``, clears
the user's state and archives a tombstone that training honours. An invalid id is a 400, a
failed publish a 503 (retrying is safe: a second forget of a forgotten user changes nothing).

Settings (environment): ``GOOGLE_CLOUD_PROJECT``, ``EVENTS_TOPIC`` (name or full path),
``MAX_BODY_BYTES``, ``MAX_EVENTS``, ``PUBLISH_TIMEOUT_S``, ``CORS_ALLOW_ORIGIN`` (unset: no CORS).

Run locally after ``pip install -e .`` (which installs ``schemas`` and ``httpfn``; the
deployment copies ``schemas/`` and ``functions/httpfn/`` next to this file)::

    functions-framework --source functions/ingest/main.py --target ingest --port 8080
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import flask
import functions_framework
import google.auth
import google.auth.exceptions
from google.api_core.exceptions import GoogleAPICallError, RetryError
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher.exceptions import FlowControlLimitError

from httpfn.errors import (
    Internal,
    InvalidParameter,
    MethodNotAllowed,
    PayloadTooLarge,
    Unavailable,
)
from httpfn.responses import error_response, json_response
from httpfn.settings import ConfigError, env_float, env_int, env_str
from schemas import names
from schemas.errors import InvalidRecord
from schemas.events import ForgetRequest, ProductEvent, validate_event
from schemas.ids import id_problem

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024  # Cloud Functions (2nd gen) refuses larger HTTP requests

__all__ = ["ConfigError", "Settings", "handle", "ingest"]


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The function's configuration, read once from the environment."""

    project: str
    topic: str
    max_body_bytes: int = 1024 * 1024
    max_events: int = 500
    publish_timeout_s: float = 10.0
    cors_allow_origin: str = ""

    @property
    def topic_path(self) -> str:
        if self.topic.startswith("projects/"):
            return self.topic
        return f"projects/{self.project}/topics/{self.topic}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raise ``ConfigError`` naming a bad variable."""
        env = dict(os.environ if env is None else env)
        project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT")
        if not project:
            project = names.DEFAULT_PROJECT if env.get("PUBSUB_EMULATOR_HOST") else _default_project()
        return cls(project=project,
                   topic=env_str("EVENTS_TOPIC", names.EVENTS_TOPIC, env),
                   max_body_bytes=env_int("MAX_BODY_BYTES", 1024 * 1024, 1, MAX_REQUEST_BYTES, env),
                   max_events=env_int("MAX_EVENTS", 500, 1, 100_000, env),
                   publish_timeout_s=env_float("PUBLISH_TIMEOUT_S", 10.0, 0.001, 600.0, env),
                   cors_allow_origin=env_str("CORS_ALLOW_ORIGIN", "", env))


def _default_project() -> str:
    """The project of the runtime's credentials (on Google Cloud: the function's project)."""
    try:
        _, project = google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise ConfigError("set GOOGLE_CLOUD_PROJECT (or PUBSUB_EMULATOR_HOST for the emulator)") from e
    if not project:
        raise ConfigError("set GOOGLE_CLOUD_PROJECT: the credentials name no project")
    return project


class PublishFailed(Unavailable):
    """Pub/Sub did not confirm every valid event: our failure, the caller may retry."""


# ---------------------------------------------------------------------------- body -> events


class _NonStandardJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonStandardJSON(f"{name} is not valid JSON")


def read_body(request: Any, max_bytes: int) -> bytes:
    """The raw body, refusing one over ``max_bytes`` before reading it when its length is declared."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"body too large: {declared} bytes > {max_bytes}", max_bytes=max_bytes)
    data = request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"body too large: more than {max_bytes} bytes", max_bytes=max_bytes)
    return data


def decode_body(data: bytes, max_events: int) -> list[Any]:
    """The records in a JSON body: one object or an array of up to ``max_events`` records."""
    if not data.strip():
        raise InvalidParameter("empty body: send a JSON object (one event) or an array of events")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidParameter(f"body is not valid UTF-8 (byte {e.start})") from e
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise InvalidParameter(f"body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except _NonStandardJSON as e:
        raise InvalidParameter(f"body is not JSON: {e}") from e
    except RecursionError as e:
        raise InvalidParameter("body is not usable JSON: nested too deeply") from e
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise InvalidParameter(f"body is not usable JSON: {e}") from e
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        if not value:
            raise InvalidParameter("empty event list")
        if len(value) > max_events:
            raise PayloadTooLarge(f"too many events: {len(value)} > {max_events}; split the batch",
                                  max_events=max_events)
        return value
    raise InvalidParameter(f"expected a JSON object (one event) or an array of events, "
                     f"got {_json_type(value)}")


def _json_type(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


@dataclass
class Validated:
    """Valid events (in request order) and per-record errors."""

    events: list[ProductEvent] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def validate_all(records: Sequence[Any]) -> Validated:
    """Validate each record; an invalid one becomes ``{"index", "field", "reason"}``."""
    out = Validated()
    for index, record in enumerate(records):
        try:
            out.events.append(validate_event(record))
        except InvalidRecord as e:
            error = {"index": index, "field": e.field, "reason": e.reason}
            event_id = record.get("event_id") if isinstance(record, dict) else None
            if isinstance(event_id, str) and e.field != "event_id":  # a valid id helps the caller
                error["event_id"] = event_id
            out.errors.append(error)
    return out


# ---------------------------------------------------------------------------- publishing


class Publisher(Protocol):
    def publish(self, topic: str, data: bytes, **attrs: str) -> Any: ...


_PUBLISH_ERRORS = (GoogleAPICallError, RetryError, TimeoutError, concurrent.futures.TimeoutError,
                   FlowControlLimitError, RuntimeError, ValueError)


def publish_all(events: Sequence[ProductEvent], publisher: Publisher, topic_path: str,
                timeout_s: float) -> list[tuple[str, str]]:
    """Publish every event and wait for all of them; return ``(event_id, error)`` of failures."""
    pending: list[tuple[ProductEvent, Any]] = []
    failed: list[tuple[str, str]] = []
    for event in events:
        try:
            pending.append((event, publisher.publish(topic_path, event.to_pubsub_data(),
                                                     **event.pubsub_attributes())))
        except _PUBLISH_ERRORS as e:
            failed.append((event.event_id, f"{type(e).__name__}: {e}"))
    deadline = time.monotonic() + timeout_s
    for event, future in pending:
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except _PUBLISH_ERRORS as e:
            failed.append((event.event_id, f"{type(e).__name__}: {e}" if str(e)
                           else f"not confirmed within {timeout_s:g} s"))
    return failed


_publisher: pubsub_v1.PublisherClient | None = None
_publisher_lock = threading.Lock()


def get_publisher() -> pubsub_v1.PublisherClient:
    """The instance-wide publisher client, created on first use (short batching latency)."""
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.005))
        return _publisher


# ---------------------------------------------------------------------------- handler


def _with_cors(resp: flask.Response, settings: Settings | None) -> flask.Response:
    if settings is not None and settings.cors_allow_origin:
        resp.headers["Access-Control-Allow-Origin"] = settings.cors_allow_origin
    return resp


def _response(body: dict[str, Any], status: int, settings: Settings | None,
              headers: dict[str, str] | None = None) -> flask.Response:
    return _with_cors(json_response(body, status, headers), settings)


def _ingest(request: Any, settings: Settings, publisher: Callable[[], Publisher]) -> flask.Response:
    records = decode_body(read_body(request, settings.max_body_bytes), settings.max_events)
    checked = validate_all(records)
    counts = {"rejected": len(checked.errors), "errors": checked.errors}
    if not checked.events:
        raise InvalidParameter("no valid event in the request", accepted=0, event_ids=[], **counts)
    failed = publish_all(checked.events, publisher(), settings.topic_path, settings.publish_timeout_s)
    if failed:
        failed_ids = {event_id for event_id, _ in failed}
        logger.error("publish to %s failed for %d of %d events: %s", settings.topic_path,
                     len(failed), len(checked.events), failed[0][1])
        raise PublishFailed(
            "could not publish every event; retry those in not_published (event_id is the "
            "idempotency key, duplicates are dropped downstream)",
            accepted=len(checked.events) - len(failed_ids),
            event_ids=[e.event_id for e in checked.events if e.event_id not in failed_ids],
            not_published=[e.event_id for e in checked.events if e.event_id in failed_ids],
            **counts)
    return _response({"accepted": len(checked.events), **counts,
                      "event_ids": [e.event_id for e in checked.events]}, 202, settings)


USERS_PREFIX = "/users/"


def forget_target(path: str) -> str | None:
    """The user id of a ``/users/{user_id}`` path (percent-decoded by the framework), else None."""
    at = path.find(USERS_PREFIX)
    return path[at + len(USERS_PREFIX):] if at >= 0 else None


def _forget(user_id: str, settings: Settings, publisher: Callable[[], Publisher]) -> flask.Response:
    if (problem := id_problem(user_id)) is not None:
        raise InvalidParameter(f"user_id {problem}", field="user_id")
    request = ForgetRequest(request_id=uuid.uuid4().hex, user_id=user_id, timestamp=int(time.time() * 1000))
    try:
        future = publisher().publish(settings.topic_path, request.to_pubsub_data(),
                                     **request.pubsub_attributes())
        future.result(timeout=settings.publish_timeout_s)
    except _PUBLISH_ERRORS as e:
        logger.error("publish of forget request for %s failed: %s", settings.topic_path, e)
        raise PublishFailed("could not publish the forget request; retry "
                            "(a repeated forget is harmless)") from e
    return _response({"request_id": request.request_id, "user_id": user_id,
                      "forget_at": request.timestamp}, 202, settings)


def handle(request: Any, settings: Settings, publisher: Callable[[], Publisher]) -> flask.Response:
    """Route one request; every error becomes a JSON response with its status."""
    try:
        if request.path.rstrip("/").endswith("/healthz"):
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(request.method, ("GET", "HEAD"), "use GET on /healthz")
            return _response({"status": "ok", "topic": settings.topic_path}, 200, settings)
        if request.method == "OPTIONS" and settings.cors_allow_origin:
            return _response({}, 204, settings, {"Access-Control-Allow-Methods": "POST",
                                                 "Access-Control-Allow-Headers": "Content-Type",
                                                 "Access-Control-Max-Age": "3600"})
        user_id = forget_target(request.path)
        if user_id is not None:
            if request.method != "DELETE":
                raise MethodNotAllowed(request.method, ("DELETE",), "use DELETE on /users/{user_id}")
            return _forget(user_id, settings, publisher)
        if request.method != "POST":
            raise MethodNotAllowed(request.method, ("POST",),
                                   f"method {request.method} not allowed: POST events as JSON")
        return _ingest(request, settings, publisher)
    except Exception as e:  # an ApiError answers itself; anything else is a logged 500
        return _with_cors(error_response(e, logger, f"{request.method} {request.path}"), settings)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this instance, read from the environment on first use."""
    return Settings.from_env()


@functions_framework.http
def ingest(request: flask.Request) -> flask.Response:
    """Cloud Function entry point (HTTP)."""
    try:
        settings = get_settings()
    except ConfigError as e:
        logger.error("ingest function misconfigured: %s", e)
        return error_response(Internal(f"function misconfigured: {e}"))
    return handle(request, settings, get_publisher)
