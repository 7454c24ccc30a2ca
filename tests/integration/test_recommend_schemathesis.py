"""Schemathesis over functions/recommend/openapi.yaml: no generated input gets a 5xx, and every
response matches the documented status codes, content type and schemas."""

from __future__ import annotations

import sys

import functions_framework
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration import recommend_data as rd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = rd.FUNCTION_DIR / "openapi.yaml"


@pytest.fixture
def recommend_app(firestore_client, tmp_path, monkeypatch):
    """The function app over the fixture world (model v1, two users, trending)."""
    rd.publish_model(firestore_client, tmp_path, rd.make_snapshot())
    rd.write_user(firestore_client, "alice", ["b1"], [1.0, 0.0, 0.0, 0.0])
    rd.write_user(firestore_client, "carol", ["m1"], None, model_version=None)
    rd.write_trending(firestore_client, [("m2", 9.0), ("g1", 6.0)])
    monkeypatch.setenv("REFRESH_SECONDS", "3600")
    app = functions_framework.create_app("recommend", str(rd.MAIN))
    assert sys.modules["main"].SERVICE.index is not None
    return app


# schemathesis.pytest.from_fixture (lazy schemas) breaks on pytest 9 ('Function' has no
# '_nodeid'), so the schema is loaded eagerly and the in-process WSGI app attached per case.
schema = schemathesis.openapi.from_path(SPEC)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_spec(case, recommend_app):
    case.operation.schema.app = recommend_app
    case.call_and_validate(app=recommend_app, checks=[not_a_server_error, status_code_conformance,
                                   content_type_conformance, response_schema_conformance,
                                   negative_data_rejection])
