"""Recommend Cloud Function: one HTTP entry point, ``recommend``, routing on the path.

    GET  /recommendations?user_id=U&k=10[&session_id=S&alpha=..&category=..&exclude_seen=..
         &in_stock_only=..&session_items=a,b]
    POST /recommendations   (the same fields as a JSON object)
    GET  /similar-items?item_id=I&k=10
    GET  /healthz
    GET  /console/  the operator console (static page) and its read-only /console/api/* endpoints

Run locally: ``scripts/serve_recommend.sh`` (production serving settings from serving.env),
or ``functions-framework --target recommend --source functions/recommend/main.py`` after
``pip install -e .`` (which installs ``recommender``, ``httpfn``, ``schemas`` and ``scoring``).
Deployed, those four packages sit next to this file. Errors answer
``{"error": {"code", "message", "parameter"?}}`` (``httpfn/errors.py``).
The API is documented in ``openapi.yaml`` next to this file.

Online experiments (``experiments/{id}``, :mod:`recommender.experiments`) are followed by the
background refresh; every answered list gets a ``recommendation_id`` and, with ``SERVED_TOPIC``
set, a served record on that Pub/Sub topic (:mod:`recommender.served`, never on the request path).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import flask
import functions_framework

from httpfn.errors import InvalidParameter, MethodNotAllowed, NotFound
from httpfn.responses import error_response, json_response
from recommender.config import Settings
from recommender.console_api import ConsoleApi
from recommender.params import recommend_params, similar_params
from recommender.service import Recommender
from recommender.store import FirestoreStore
from recommender.workers import spread_connections

log = logging.getLogger("recommend")

SETTINGS = Settings.from_env()
spread_connections()  # one listening socket per gunicorn worker (see recommender/workers.py)
SERVICE = Recommender(SETTINGS, FirestoreStore(SETTINGS))
SERVICE.start()  # cold start: index snapshot + trending, before the first request
# Everything loaded so far (modules, the index) lives as long as the process: take it out of the
# cyclic GC, whose full collections would walk it on a request thread, and whose bookkeeping
# writes would unshare the pages the forked workers share.
gc.freeze()

_ROUTES = {"/recommendations": ("GET", "POST"), "/similar-items": ("GET",), "/healthz": ("GET",)}
CONSOLE = ConsoleApi(SERVICE, SETTINGS, Path(__file__).resolve().parent / "console")
_ROUTES.update({path: ("GET",) for path in CONSOLE.handlers})


def _recommendations(request: flask.Request) -> flask.Response:
    if request.method == "POST":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object", "body")
        params = recommend_params(body, SETTINGS, from_query=False)
    else:
        params = recommend_params(request.args.to_dict(flat=False), SETTINGS, from_query=True)
    return json_response(SERVICE.recommend(params))


def _similar(request: flask.Request) -> flask.Response:
    return json_response(SERVICE.similar(similar_params(request.args.to_dict(flat=False), SETTINGS)))


def _healthz(request: flask.Request) -> flask.Response:
    status, body = SERVICE.health()
    return json_response(body, status)


_HANDLERS = {"/recommendations": _recommendations, "/similar-items": _similar, "/healthz": _healthz}
_HANDLERS.update(CONSOLE.handlers)


@functions_framework.http
def recommend(request: flask.Request) -> flask.Response:
    """Route to the handler for ``request.path``; every error is a JSON body, never a trace."""
    path = request.path.rstrip("/") or "/"
    try:
        allowed = _ROUTES.get(path)
        if allowed is None:
            raise NotFound(f"no such route: {path}; use {', '.join(_ROUTES)}")
        method = "GET" if request.method == "HEAD" else request.method
        if method not in allowed:
            raise MethodNotAllowed(request.method, allowed)
        return _HANDLERS[path](request)
    except Exception as e:  # an ApiError answers itself; anything else is a logged 500
        return error_response(e, log, f"{request.method} {path}")
