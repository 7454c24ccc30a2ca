"""functions/httpfn: the error body, the JSON responses and the env readers both functions share."""

from __future__ import annotations

import json
import logging

import pytest

from httpfn.errors import (
    ApiError,
    Internal,
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from httpfn.responses import error_response, json_response
from httpfn.settings import ConfigError, env_choice, env_float, env_int, env_str


@pytest.mark.parametrize("error, status, code, headers", [
    (InvalidParameter("bad k", "k"), 400, "invalid_parameter", {}),
    (NotFound("no such route"), 404, "not_found", {}),
    (MethodNotAllowed("PUT", ("GET", "POST")), 405, "method_not_allowed", {"Allow": "GET, POST"}),
    (PayloadTooLarge("too big", max_bytes=10), 413, "payload_too_large", {}),
    (Unavailable("later"), 503, "unavailable", {"Retry-After": "1"}),
    (Internal("oops"), 500, "internal", {}),
])
def test_every_error_has_its_status_code_and_headers(error, status, code, headers):
    assert isinstance(error, ApiError)
    resp = error_response(error)
    assert resp.status_code == status and resp.mimetype == "application/json"
    body = json.loads(resp.get_data())
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    for name, value in headers.items():
        assert resp.headers[name] == value


def test_error_body_carries_parameter_and_details_inside_error():
    assert InvalidParameter("bad k", "k").to_json() == {
        "error": {"code": "invalid_parameter", "message": "bad k", "parameter": "k"}}
    assert PayloadTooLarge("too many", max_events=6).to_json() == {
        "error": {"code": "payload_too_large", "message": "too many", "max_events": 6}}
    assert "parameter" not in NotFound("x").to_json()["error"]


def test_unexpected_exception_is_a_logged_500_without_the_trace(caplog):
    log = logging.getLogger("test-httpfn")
    with caplog.at_level(logging.ERROR, logger="test-httpfn"):
        resp = error_response(KeyError("secret detail"), log, "GET /x")
    assert resp.status_code == 500
    assert json.loads(resp.get_data()) == {"error": {"code": "internal", "message": "internal error"}}
    assert "GET /x" in caplog.text and "secret detail" in caplog.text


def test_json_response_keeps_key_order():
    resp = json_response({"b": 1, "a": 2}, 201, {"X-T": "1"})
    assert resp.status_code == 201 and resp.get_data() == b'{"b":1,"a":2}\n' and resp.headers["X-T"] == "1"


def test_env_readers_default_parse_and_name_the_bad_variable():
    env = {"F": "0.5", "I": "7", "C": " IVF ", "S": "x", "E": ""}
    assert env_float("F", 1.0, 0.0, 1.0, env) == 0.5 and env_float("E", 1.0, 0.0, 1.0, env) == 1.0
    assert env_int("I", 1, 1, 10, env) == 7 and env_int("MISSING", 3, 1, 10, env) == 3
    assert env_choice("C", "exact", ("ivf", "exact"), env) == "ivf"
    assert env_str("S", "d", env) == "x" and env_str("E", "d", env) == "d"
    for call, match in [(lambda: env_float("F", 1.0, 0.6, 1.0, env), "F='0.5' must be between"),
                        (lambda: env_float("S", 1.0, 0.0, 1.0, env), "S='x' is not a number"),
                        (lambda: env_float("N", 1.0, 0.0, 1.0, {"N": "nan"}), "N='nan' must be between"),
                        (lambda: env_int("I", 1, 8, 10, env), "I='7' must be between 8 and 10"),
                        (lambda: env_int("F", 1, 0, 10, env), "F='0.5' is not an integer"),
                        (lambda: env_choice("S", "a", ("a", "b"), env), "S='x' must be one of a, b")]:
        with pytest.raises(ConfigError, match=match):
            call()


def test_env_readers_default_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("HTTPFN_TEST_INT", "42")
    assert env_int("HTTPFN_TEST_INT", 1, 1, 100) == 42
