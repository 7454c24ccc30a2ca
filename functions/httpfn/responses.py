"""JSON responses of the HTTP functions, errors included."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import flask

from .errors import ApiError, Internal

JSON_MIME = "application/json"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> flask.Response:
    """``body`` as compact JSON (keys in insertion order: ``flask.jsonify`` would sort them per call)."""
    return flask.Response(json.dumps(body, separators=(",", ":")) + "\n", status=status,
                          headers=dict(headers) if headers else None, mimetype=JSON_MIME)


def error_response(error: BaseException, log: logging.Logger | None = None,
                   context: str = "") -> flask.Response:
    """The JSON response for ``error``: an :class:`ApiError` as itself, anything else as a 500.

    Anything but an ``ApiError`` is our own failure: its trace goes to ``log`` (with
    ``context``), never to the caller.
    """
    if not isinstance(error, ApiError):
        if log is not None:
            log.error("unhandled error%s", f" on {context}" if context else "", exc_info=error)
        error = Internal("internal error")
    return json_response(error.to_json(), error.status, error.headers())
