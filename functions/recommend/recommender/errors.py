"""Errors that map to HTTP responses: a caller's mistake is a 4xx, our own failure a 5xx."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status and a JSON body."""

    status = 500
    code = "internal"

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return {"error": body}


class InvalidParameter(ApiError):
    status = 400
    code = "invalid_parameter"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"method {method} is not allowed here; use {', '.join(allowed)}")
        self.allowed = allowed


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
