"""The ingest function without Pub/Sub: direct calls with a fake request and publisher, and
through the functions-framework test client."""

from __future__ import annotations

import concurrent.futures
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.ingest import main as ingest_main
from schemas.events import parse_event

ROOT = Path(__file__).resolve().parents[2]
SOURCE = str(ROOT / "functions" / "ingest" / "main.py")
NOW_MS = int(time.time() * 1000)
SETTINGS = ingest_main.Settings(project="demo-project", topic="product-events",
                                max_body_bytes=64 * 1024, max_events=6, publish_timeout_s=1.0)


def event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    rec = {"event_id": f"e{i}", "event_type": "view", "user_id": f"u{i % 3}",
           "item_id": f"i{i % 7}", "timestamp": NOW_MS - 1000 * i}
    rec.update(overrides)
    return rec


class ExplodingStream:
    """A body stream that must not be read."""

    def read(self, *args: Any) -> bytes:
        raise AssertionError("the body was read although its declared length is too large")


@dataclass
class FakeRequest:
    method: str = "POST"
    path: str = "/"
    body: bytes = b""
    content_length: int | None = None
    stream: Any = None

    def __post_init__(self) -> None:
        if self.stream is None:
            self.stream = io.BytesIO(self.body)


@dataclass
class FakePublisher:
    """Records publishes; ``fail_ids`` fail, ``hang_ids`` never complete."""

    fail_ids: set[str] = field(default_factory=set)
    hang_ids: set[str] = field(default_factory=set)
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def publish(self, topic: str, data: bytes, **attrs: str) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        event_id = attrs.get("event_id") or attrs["request_id"]
        if event_id in self.fail_ids:
            from google.api_core.exceptions import ServiceUnavailable
            future.set_exception(ServiceUnavailable("backend down"))
        elif event_id not in self.hang_ids:
            self.published.append((topic, data, attrs))
            future.set_result("msg-id")
        return future


def call(request: FakeRequest, publisher: FakePublisher | None = None,
         settings: ingest_main.Settings = SETTINGS) -> tuple[int, dict[str, Any], Any]:
    publisher = publisher or FakePublisher()
    resp = ingest_main.handle(request, settings, lambda: publisher)
    assert resp.mimetype == "application/json"
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text
    return resp.status_code, (json.loads(text) if text else {}), resp


def post(body: Any, publisher: FakePublisher | None = None, **kw: Any):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(FakeRequest(body=data, content_length=len(data)), publisher, **kw)


# ---------------------------------------------------------------------------- direct calls


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(method):
    status, body, resp = call(FakeRequest(method=method))
    assert status == 405
    assert resp.headers["Allow"] == "POST"
    assert body["error"]["code"] == "method_not_allowed" and method in body["error"]["message"]


def test_healthz():
    status, body, _ = call(FakeRequest(method="GET", path="/healthz"))
    assert (status, body["status"]) == (200, "ok")
    assert body["topic"] == "projects/demo-project/topics/product-events"
    status, _, resp = call(FakeRequest(method="POST", path="/healthz"))
    assert status == 405 and "GET" in resp.headers["Allow"]


def test_declared_oversized_body_is_413_without_reading_it():
    req = FakeRequest(content_length=SETTINGS.max_body_bytes + 1, stream=ExplodingStream())
    status, body, _ = call(req)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert "too large" in body["error"]["message"] and body["error"]["max_bytes"] == SETTINGS.max_body_bytes


def test_undeclared_oversized_body_is_413():
    data = b"[" + b" " * SETTINGS.max_body_bytes + b"]"
    status, body, _ = call(FakeRequest(body=data, content_length=None))
    assert status == 413 and "more than" in body["error"]["message"]


def test_too_many_events_is_413():
    pub = FakePublisher()
    status, body, _ = post([event(i) for i in range(SETTINGS.max_events + 1)], pub)
    assert status == 413
    assert body["error"]["max_events"] == SETTINGS.max_events
    assert "too many events: 7 > 6" in body["error"]["message"]
    assert pub.published == []


@pytest.mark.parametrize("data, reason", [
    (b"", "empty body"),
    (b"   \n", "empty body"),
    (b"{not json", "not JSON"),
    (b'{"event_id": "e1"', "not JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"timestamp": NaN}', "NaN is not valid JSON"),
    (b"[Infinity]", "Infinity is not valid JSON"),
    (b'"just a string"', "got a string"),
    (b"42", "got a number"),
    (b"null", "got null"),
    (b"true", "got a boolean"),
    (b"[]", "empty event list"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"timestamp": 1' + b"0" * 5000 + b"}", "not usable JSON"),
])
def test_unusable_bodies_are_400_naming_the_problem(data, reason):
    pub = FakePublisher()
    status, body, _ = post(data, pub, settings=ingest_main.Settings(
        project="p", topic="t", max_body_bytes=1024 * 1024))
    assert status == 400, body
    assert body["error"]["code"] == "invalid_parameter" and reason in body["error"]["message"]
    assert pub.published == []


def test_one_valid_event_is_published_as_plain_json():
    pub = FakePublisher()
    rec = event(1, session_id="s1", context={"page": "home"})
    status, body, _ = post(rec, pub)
    assert status == 202
    assert body == {"accepted": 1, "rejected": 0, "errors": [], "event_ids": ["e1"]}
    [(topic, data, attrs)] = pub.published
    assert topic == "projects/demo-project/topics/product-events"
    expected = parse_event(json.dumps(rec))
    assert data == expected.to_pubsub_data()
    assert json.loads(data) == rec  # plain JSON, as docs/events.md documents it
    assert attrs == {"event_id": "e1", "event_type": "view", "user_id": "u1"}
    assert parse_event(data) == expected


def test_avro_json_input_is_accepted():
    pub = FakePublisher()
    status, body, _ = post(event(2, session_id={"string": "s2"}, context={"map": {"a": "b"}}), pub)
    assert status == 202 and body["accepted"] == 1
    assert parse_event(pub.published[0][1]).session_id == "s2"
    assert parse_event(pub.published[0][1]).context == {"a": "b"}


def test_the_id_contract_decides_at_ingest():
    """What ingest accepts the recommend function serves (schemas.ids): a 200-character user id
    is accepted and published; a 257-character one and control characters are refused here."""
    pub = FakePublisher()
    long_user = "u" * 200
    batch = [event(0, user_id=long_user), event(1, user_id="u" * 257), event(2, item_id="i\x00"),
             event(3, item_id="i\x7f"), event(4, user_id="u\n1")]
    status, body, _ = post(batch, pub)
    assert status == 202 and body["accepted"] == 1 and body["event_ids"] == ["e0"]
    errors = {e["index"]: e for e in body["errors"]}
    assert errors[1]["field"] == "user_id" and errors[1]["reason"] == "longer than 256 characters"
    for index, name in ((2, "item_id"), (3, "item_id"), (4, "user_id")):
        assert errors[index]["field"] == name
        assert errors[index]["reason"].startswith("must not contain control characters")
    [(_, data, attrs)] = pub.published
    assert attrs["user_id"] == long_user and parse_event(data).user_id == long_user


def test_mixed_batch_publishes_valid_and_reports_each_invalid():
    pub = FakePublisher()
    batch = [event(0), event(1, event_type="click"), "not an object", event(3, user_id=""),
             event(4, extra=1), event(5, context={"": "x"})]
    status, body, _ = post(batch, pub)
    assert status == 202
    assert body["accepted"] == 1 and body["rejected"] == 5
    assert body["event_ids"] == ["e0"]
    errors = {e["index"]: e for e in body["errors"]}
    assert errors[1]["field"] == "event_type" and "view, add_to_cart, purchase" in errors[1]["reason"]
    assert errors[1]["event_id"] == "e1"
    assert errors[2]["field"] == "payload" and "expected a JSON object" in errors[2]["reason"]
    assert errors[3]["field"] == "user_id" and "empty" in errors[3]["reason"]
    assert errors[4]["field"] == "extra" and errors[4]["reason"] == "unknown field"
    assert errors[5]["field"] == "context" and errors[5]["reason"] == "keys must not be empty"
    assert [attrs["event_id"] for _, _, attrs in pub.published] == ["e0"]


def test_nothing_valid_is_400_with_per_record_errors():
    pub = FakePublisher()
    status, body, _ = post([event(0, timestamp="yesterday"), {}], pub)
    assert status == 400
    error = body["error"]
    assert error["code"] == "invalid_parameter" and error["message"] == "no valid event in the request"
    assert error["accepted"] == 0 and error["rejected"] == 2 and error["event_ids"] == []
    assert [e["field"] for e in error["errors"]] == ["timestamp", "event_id"]
    assert pub.published == []


def test_publish_failure_is_503_naming_the_unpublished_events():
    pub = FakePublisher(fail_ids={"e1"})
    status, body, resp = post([event(0), event(1), event(2, item_id="a/b")], pub)
    assert status == 503
    assert resp.headers["Retry-After"] == "1"
    error = body["error"]
    assert error["code"] == "unavailable" and "retry" in error["message"]
    assert error["not_published"] == ["e1"]
    assert error["event_ids"] == ["e0"] and error["accepted"] == 1
    assert error["rejected"] == 1 and error["errors"][0]["field"] == "item_id"


def test_unconfirmed_publish_times_out_as_503():
    pub = FakePublisher(hang_ids={"e0"})
    fast = ingest_main.Settings(project="p", topic="t", publish_timeout_s=0.2)
    start = time.monotonic()
    status, body, _ = post([event(0), event(1)], pub, settings=fast)
    assert time.monotonic() - start < 2
    assert status == 503 and body["error"]["not_published"] == ["e0"] and body["error"]["event_ids"] == ["e1"]


def test_full_topic_path_setting():
    s = ingest_main.Settings(project="ignored", topic="projects/other/topics/t")
    assert s.topic_path == "projects/other/topics/t"


def test_cors_preflight_only_when_configured():
    cors = ingest_main.Settings(project="p", topic="t", cors_allow_origin="https://shop.example")
    status, _, resp = call(FakeRequest(method="OPTIONS"), settings=cors)
    assert status == 204 and resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    status, _, resp = post(event(0), settings=cors)
    assert status == 202 and resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                              | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                 max_size=4),
                              max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_any_body_gets_a_json_4xx_or_202_never_a_crash(data):
    status, body, _ = post(data)
    assert status in (202, 400, 413)
    if status == 202:
        assert body["accepted"] >= 1
    else:
        assert set(body) == {"error"} and body["error"]["code"] in ("invalid_parameter", "payload_too_large")
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# ---------------------------------------------------------------------------- settings


def test_settings_from_env():
    s = ingest_main.Settings.from_env({"GOOGLE_CLOUD_PROJECT": "p1", "EVENTS_TOPIC": "ev",
                                       "MAX_EVENTS": "10", "PUBLISH_TIMEOUT_S": "2.5"})
    assert (s.topic_path, s.max_events, s.publish_timeout_s) == ("projects/p1/topics/ev", 10, 2.5)
    emulator = ingest_main.Settings.from_env({"PUBSUB_EMULATOR_HOST": "localhost:1"})
    assert emulator.topic_path == "projects/demo-project/topics/product-events"


@pytest.mark.parametrize("env, match", [
    ({"GOOGLE_CLOUD_PROJECT": "p", "MAX_EVENTS": "many"}, "MAX_EVENTS='many' is not an integer"),
    ({"GOOGLE_CLOUD_PROJECT": "p", "MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES='0' must be between 1 and"),
    ({"GOOGLE_CLOUD_PROJECT": "p", "PUBLISH_TIMEOUT_S": "nan"}, "PUBLISH_TIMEOUT_S='nan' must be between"),
])
def test_bad_settings_are_explained(env, match):
    with pytest.raises(ingest_main.ConfigError, match=match):
        ingest_main.Settings.from_env(env)


def test_missing_project_is_explained(monkeypatch):
    import google.auth
    import google.auth.exceptions

    def no_credentials():
        raise google.auth.exceptions.DefaultCredentialsError("none")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    with pytest.raises(ingest_main.ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        ingest_main.Settings.from_env({})


def test_misconfigured_function_answers_json_500(monkeypatch):
    def broken() -> ingest_main.Settings:
        raise ingest_main.ConfigError("set GOOGLE_CLOUD_PROJECT")

    monkeypatch.setattr(ingest_main, "get_settings", broken)
    resp = ingest_main.ingest(FakeRequest(body=b"{}", content_length=2))
    assert resp.status_code == 500
    assert json.loads(resp.get_data()) == {
        "error": {"code": "internal", "message": "function misconfigured: set GOOGLE_CLOUD_PROJECT"}}


# ---------------------------------------------------------------------------- test client


@pytest.fixture
def client_and_publisher(monkeypatch):
    """The function loaded by functions-framework from its source file, with a fake publisher."""
    import functions_framework

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-project")
    monkeypatch.setenv("EVENTS_TOPIC", "product-events")
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    app = functions_framework.create_app(target="ingest", source=SOURCE)
    module = sys.modules["main"]
    publisher = FakePublisher()
    monkeypatch.setattr(module, "get_publisher", lambda: publisher)
    return app.test_client(), publisher


def test_client_accepts_valid_events(client_and_publisher):
    client, pub = client_and_publisher
    resp = client.post("/", json=[event(0), event(1, event_type="purchase")])
    assert resp.status_code == 202
    assert resp.get_json() == {"accepted": 2, "rejected": 0, "errors": [], "event_ids": ["e0", "e1"]}
    assert [parse_event(d).event_type for _, d, _ in pub.published] == ["view", "purchase"]


@pytest.mark.parametrize("kwargs, status, fragment", [
    ({"data": b"x" * 3000, "content_type": "application/json"}, 413, "too large"),
    ({"data": b"not json", "content_type": "application/json"}, 400, "not JSON"),
    ({"data": b"\xc3\x28", "content_type": "text/plain"}, 400, "UTF-8"),
    ({"json": {"event_id": "e1"}}, 400, "no valid event"),
])
def test_client_rejects_bad_bodies(client_and_publisher, kwargs, status, fragment):
    client, pub = client_and_publisher
    resp = client.post("/", **kwargs)
    assert resp.status_code == status
    assert resp.is_json and fragment in resp.get_json()["error"]["message"]
    assert pub.published == []


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_client_405(client_and_publisher, method):
    client, _ = client_and_publisher
    resp = getattr(client, method)("/")
    assert resp.status_code == 405 and resp.is_json and resp.headers["Allow"] == "POST"


def test_client_healthz(client_and_publisher):
    client, _ = client_and_publisher
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json()["status"] == "ok"


def test_lone_surrogate_is_the_callers_error_not_a_publish_failure():
    pub = FakePublisher()
    bad = json.dumps(event(1, event_id="e\ud800"))  # json.dumps writes the escape "\ud800"
    body = f"[{json.dumps(event(0))}, {bad}]".encode()
    status, out, _ = post(body, pub)
    assert status == 202 and out["event_ids"] == ["e0"]
    assert out["errors"] == [{"index": 1, "field": "event_id",
                              "reason": "not valid Unicode: lone surrogate at character 1"}]


def test_deployable_folder_runs_with_schemas_copied_next_to_main(tmp_path):
    """What Terraform deploys: the function folder plus schemas/ and httpfn/, nothing else from the repo."""
    import shutil
    import subprocess

    for f in ("main.py", "requirements.txt"):
        shutil.copy(ROOT / "functions" / "ingest" / f, tmp_path / f)
    for package, source in (("schemas", ROOT / "schemas"), ("httpfn", ROOT / "functions" / "httpfn")):
        shutil.copytree(source, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("import sys, main, schemas, httpfn; "
             "print(schemas.__file__, httpfn.__file__); "
             "print(sorted(m for m in sys.modules "
             "             if m.split('.')[0] in ('pipelines', 'scripts', 'functions')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "GOOGLE_CLOUD_PROJECT": "p"})
    assert out.returncode == 0, out.stderr
    files, repo_modules = out.stdout.splitlines()
    assert all(f.startswith(str(tmp_path)) for f in files.split()), files
    assert repo_modules == "[]"
    pins = (tmp_path / "requirements.txt").read_text().split()
    assert {"functions-framework==3.10.2", "google-cloud-pubsub==2.44.0", "fastavro==1.13.1"} <= set(pins)


# ---------------------------------------------------------------------------- forget a user


def test_delete_user_publishes_a_forget_request_that_old_readers_dead_letter():
    from schemas.errors import InvalidRecord
    from schemas.events import is_forget, parse_forget

    pub = FakePublisher()
    status, body, _ = call(FakeRequest(method="DELETE", path="/users/u-7"), pub)
    assert status == 202 and body["user_id"] == "u-7" and body["request_id"] and body["forget_at"] > 0
    (topic, data, attrs), = pub.published
    assert topic == SETTINGS.topic_path and attrs["kind"] == "forget" and is_forget(attrs)
    request = parse_forget(data)
    assert (request.user_id, request.request_id, request.timestamp) == ("u-7", body["request_id"],
                                                                        body["forget_at"])
    with pytest.raises(InvalidRecord):  # a pipeline that ignores `kind` dead-letters it, never a view
        parse_event(data)


@pytest.mark.parametrize("path", ["/users/", "/users/" + "x" * 2000, "/users/a/b", "/users/__x__"])
def test_delete_of_an_invalid_user_id_is_400(path):
    pub = FakePublisher()
    status, body, _ = call(FakeRequest(method="DELETE", path=path), pub)
    assert status == 400 and body["error"]["code"] == "invalid_parameter"
    assert "user_id" in body["error"]["message"]
    assert pub.published == []


def test_users_path_takes_only_delete_and_a_failed_publish_is_503():
    status, _, resp = call(FakeRequest(method="POST", path="/users/u1"))
    assert status == 405 and resp.headers["Allow"] == "DELETE"

    class Failing(FakePublisher):
        def publish(self, topic, data, **attrs):
            raise RuntimeError("closed")

    status, body, _ = call(FakeRequest(method="DELETE", path="/users/u1"), Failing())
    assert status == 503 and body["error"]["code"] == "unavailable"


def test_client_delete_user(client_and_publisher):
    client, pub = client_and_publisher
    assert client.delete("/users/u1").status_code == 202
    assert client.delete("/users/u%2F1").status_code == 400
    assert [a["kind"] for _, _, a in pub.published] == ["forget"]
