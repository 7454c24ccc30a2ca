"""Contract tests of recommender/compat/: each reach into a dependency's private API, pinned.

A failure here means a dependency moved: re-check the compatibility module against the new
version (and its measured reason to exist) before changing the pin.
"""

from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

import pytest

from recommender.compat import firestore_unary_read, gunicorn_reuse_port

CONSTRAINTS = Path(__file__).resolve().parents[2] / "requirements" / "constraints.txt"


def _pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", CONSTRAINTS.read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in {CONSTRAINTS.name}"
    return match.group(1)


@pytest.mark.parametrize("package, module_pin", [
    ("google-cloud-firestore", firestore_unary_read.FIRESTORE_VERSION),
    ("functions-framework", gunicorn_reuse_port.FUNCTIONS_FRAMEWORK_VERSION),
])
def test_installed_versions_are_the_ones_the_shims_were_written_for(package, module_pin):
    assert metadata.version(package) == module_pin == _pinned(package)


def test_gunicorn_is_the_pinned_version():
    assert metadata.version("gunicorn") == _pinned("gunicorn")


# ---------------------------------------------------------------------------- firestore_unary_read


def test_firestore_private_names_used_by_the_unary_read_exist():
    from google.cloud.firestore_v1 import _helpers
    from google.cloud.firestore_v1.client import Client
    from google.cloud.firestore_v1.document import DocumentReference
    from google.cloud.firestore_v1.services.firestore.client import FirestoreClient

    assert isinstance(inspect.getattr_static(Client, "_firestore_api"), property)
    assert isinstance(inspect.getattr_static(Client, "_rpc_metadata"), property)
    assert isinstance(inspect.getattr_static(DocumentReference, "_document_path"), property)
    assert list(inspect.signature(_helpers.decode_dict).parameters) == ["value_fields", "client"]
    params = inspect.signature(FirestoreClient.get_document).parameters
    assert list(params) == ["self", "request", "retry", "timeout", "metadata"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in ("retry", "timeout", "metadata"))


def test_unary_read_reads_and_decodes_through_the_client_internals():
    """The read against the real client classes with the transport faked: request, decoding, NotFound."""
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore
    from google.cloud.firestore_v1.types import Document, Value

    client = firestore.Client(project="p", credentials=AnonymousCredentials())
    calls = []

    class FakeApi:
        def get_document(self, request, *, retry, timeout, metadata):
            calls.append((request, timeout, metadata))
            if request["name"].endswith("/missing"):
                raise gexc.NotFound("no")
            return Document(fields={"n": Value(integer_value=3), "s": Value(string_value="x")})

    client._firestore_api_internal = FakeApi()  # what Client._firestore_api returns once created
    assert client._firestore_api is client._firestore_api_internal
    doc = firestore_unary_read.read_document(client, "users", "u1", timeout=0.5)
    assert doc == {"n": 3, "s": "x"}
    request, timeout, metadata = calls[0]
    assert request == {"name": "projects/p/databases/(default)/documents/users/u1"} and timeout == 0.5
    assert metadata == client._rpc_metadata
    assert firestore_unary_read.read_document(client, "users", "missing", timeout=0.5) is None


# ---------------------------------------------------------------------------- gunicorn_reuse_port


def test_functions_framework_gunicorn_application_is_where_the_patch_expects_it():
    from functions_framework import _http
    from functions_framework._http import gunicorn as ff_gunicorn
    from gunicorn.app.base import BaseApplication
    from gunicorn.config import Config

    app_class = next(c for c in ff_gunicorn.GunicornApplication.__mro__
                     if not getattr(c, "reuse_port", False))
    assert issubclass(app_class, BaseApplication)
    assert list(inspect.signature(app_class.__init__).parameters) == [
        "self", "app", "host", "port", "debug", "options"]
    assert list(inspect.signature(app_class.load_config).parameters) == ["self"]
    # HTTPServer looks the class up in that module when the server is built, i.e. after main.py ran
    assert "from functions_framework._http.gunicorn import GunicornApplication" in inspect.getsource(
        _http.HTTPServer.__init__)
    assert "reuse_port" in Config().settings
