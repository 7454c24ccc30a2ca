"""Errors that map to HTTP responses: a caller's mistake is a 4xx, our own failure a 5xx.

Every error answers one body shape::

    {"error": {"code": "invalid_parameter", "message": "...", "parameter": "k", ...details}}

``code`` and ``message`` are always there; ``parameter`` names the offending request field
when there is one, and an error's ``details`` (e.g. ingest's per-event ``errors``, ``max_bytes``,
``not_published``) sit beside them inside the ``error`` object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ApiError(Exception):
    """An error with an HTTP status, a stable ``code`` and a JSON body."""

    status = 500
    code = "internal"

    def __init__(self, message: str, parameter: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The response body: ``{"error": {"code", "message", "parameter"?, **details}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        body.update(self.details)
        return {"error": body}

    def headers(self) -> dict[str, str]:
        """Response headers this error needs (``Allow``, ``Retry-After``)."""
        return {}


class InvalidParameter(ApiError):
    """400: the request is unusable as sent."""

    status = 400
    code = "invalid_parameter"


class NotFound(ApiError):
    """404: no such route, or no such resource."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    """405, with the ``Allow`` header."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, allowed: Sequence[str], message: str | None = None) -> None:
        super().__init__(message or f"method {method} is not allowed here; use {', '.join(allowed)}")
        self.allowed = tuple(allowed)

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class PayloadTooLarge(ApiError):
    """413: the body (or the batch in it) is over a limit."""

    status = 413
    code = "payload_too_large"


class Unavailable(ApiError):
    """503, with ``Retry-After``: our side cannot answer now; retrying later is safe."""

    status = 503
    code = "unavailable"
    retry_after_s = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Internal(ApiError):
    """500: our own failure (a bug or a misconfiguration); the body never carries a trace."""

    status = 500
    code = "internal"
