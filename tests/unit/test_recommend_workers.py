"""recommender/workers.py: functions-framework's gunicorn gets one listening socket per worker."""

from __future__ import annotations

import flask
import pytest
from functions_framework._http import gunicorn as ff_gunicorn

from httpfn.settings import ConfigError
from recommender.workers import reuse_port_wanted, spread_connections


@pytest.fixture
def original_application(monkeypatch):
    """functions-framework's own gunicorn application class for the test (an earlier import of
    main.py in this process may have patched it), restored to what it was afterwards."""
    current = ff_gunicorn.GunicornApplication
    original = next(c for c in current.__mro__ if not getattr(c, "reuse_port", False))
    monkeypatch.setattr(ff_gunicorn, "GunicornApplication", original)
    return original


def test_reuse_port_is_on_by_default_and_can_be_turned_off():
    assert reuse_port_wanted({}) is True
    assert reuse_port_wanted({"REUSE_PORT": "1"}) is True
    assert reuse_port_wanted({"REUSE_PORT": "0"}) is False
    assert reuse_port_wanted({"REUSE_PORT": "false"}) is False
    with pytest.raises(ConfigError, match="REUSE_PORT"):
        reuse_port_wanted({"REUSE_PORT": "maybe"})


def test_functions_framework_gunicorn_gets_reuse_port(original_application, monkeypatch):
    monkeypatch.setenv("WORKERS", "2")
    app = flask.Flask("t")
    assert not original_application(app, "127.0.0.1", 0, False).cfg.reuse_port
    assert spread_connections({}) is True
    assert spread_connections({}) is True  # idempotent: no second subclass
    patched = ff_gunicorn.GunicornApplication
    assert patched.__bases__ == (original_application,)
    server = patched(app, "127.0.0.1", 0, False)
    assert server.cfg.reuse_port is True
    assert server.cfg.workers == 2  # functions-framework's own options are kept


def test_reuse_port_off_leaves_functions_framework_alone(original_application):
    assert spread_connections({"REUSE_PORT": "0"}) is False
    assert ff_gunicorn.GunicornApplication is original_application
