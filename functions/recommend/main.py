"""Recommend Cloud Function: one HTTP entry point, ``recommend``, routing on the path.

    GET  /recommendations?user_id=U&k=10[&alpha=..&category=..&exclude_seen=..&in_stock_only=..
         &session_items=a,b]
    POST /recommendations   (the same fields as a JSON object)
    GET  /similar-items?item_id=I&k=10
    GET  /healthz

Run locally: ``scripts/serve_recommend.sh`` (production serving settings from serving.env),
or ``functions-framework --target recommend --source functions/recommend/main.py``.
The API is documented in ``openapi.yaml`` next to this file.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # deployed: schemas/ and recommender/ sit next to main.py
    sys.path.insert(0, str(_HERE))
try:
    import schemas  # noqa: F401
except ImportError:  # local run from the repository: schemas/ is at the repo root
    sys.path.append(str(_HERE.parent.parent))

import flask  # noqa: E402
import functions_framework  # noqa: E402
from recommender.config import Settings  # noqa: E402
from recommender.errors import ApiError, InvalidParameter, MethodNotAllowed, NotFound  # noqa: E402
from recommender.params import recommend_params, similar_params  # noqa: E402
from recommender.service import Recommender  # noqa: E402
from recommender.store import FirestoreStore  # noqa: E402
from recommender.workers import spread_connections  # noqa: E402

log = logging.getLogger("recommend")

SETTINGS = Settings.from_env()
spread_connections()  # one listening socket per gunicorn worker (see recommender/workers.py)
SERVICE = Recommender(SETTINGS, FirestoreStore(SETTINGS))
SERVICE.start()  # cold start: index snapshot + trending, before the first request
# Everything loaded so far (modules, the index) lives as long as the process: take it out of the
# cyclic GC, whose full collections otherwise walk it (45 ms each, once per ~3,700 requests under
# load), and whose bookkeeping writes would unshare the pages the forked workers share.
gc.freeze()

_ROUTES = {"/recommendations": ("GET", "POST"), "/similar-items": ("GET",), "/healthz": ("GET",)}


def _json(body: dict, status: int = 200, headers: dict | None = None) -> flask.Response:
    # json.dumps directly: flask.jsonify would also sort the keys, per request, for nothing
    return flask.Response(json.dumps(body, separators=(",", ":")) + "\n", status=status,
                          headers=headers, mimetype="application/json")


def _recommendations(request: flask.Request) -> flask.Response:
    if request.method == "POST":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object", "body")
        params = recommend_params(body, SETTINGS, from_query=False)
    else:
        params = recommend_params(request.args.to_dict(flat=False), SETTINGS, from_query=True)
    return _json(SERVICE.recommend(params))


def _similar(request: flask.Request) -> flask.Response:
    return _json(SERVICE.similar(similar_params(request.args.to_dict(flat=False), SETTINGS)))


def _healthz(request: flask.Request) -> flask.Response:
    status, body = SERVICE.health()
    return _json(body, status)


_HANDLERS = {"/recommendations": _recommendations, "/similar-items": _similar, "/healthz": _healthz}


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
    except MethodNotAllowed as e:
        return _json(e.to_json(), e.status, {"Allow": ", ".join(e.allowed)})
    except ApiError as e:
        return _json(e.to_json(), e.status)
    except Exception:  # our own failure: log the trace, answer JSON without it
        log.exception("unhandled error on %s %s", request.method, path)
        return _json({"error": {"code": "internal", "message": "internal error"}}, 500)
