"""Baseline HTTP functions for the serving benchmark, served like the recommend function.

* ``bare_read``: reads ``users/{user_id}`` and returns two fields: the Firestore I/O floor.
  It reads with the function's own cheapest read (``recommender.store.read_document``, the
  unary ``GetDocument`` RPC), so the floor is not made higher than what the function pays.
* ``find_nearest``: reads the user's embedding, then retrieves the top k items with
  Firestore's own ``find_nearest`` vector query over ``FIND_NEAREST_COLLECTION``.

    functions-framework --target bare_read --source bench/serving/baselines.py
"""

from __future__ import annotations

import gc
import os
import threading

import flask
import functions_framework
from google.cloud import firestore
from google.cloud.firestore_v1.base_vector_query import DistanceMeasure
from google.cloud.firestore_v1.vector import Vector

from recommender.store import read_document  # the function's own read
from recommender.workers import spread_connections

spread_connections()  # served like the function: one listening socket per gunicorn worker

USERS = os.environ.get("USERS_COLLECTION", "users")
VECTORS = os.environ.get("FIND_NEAREST_COLLECTION", "bench_item_vectors")
_lock = threading.Lock()
_client: dict[int, firestore.Client] = {}


def _db() -> firestore.Client:
    """One client per process (created after gunicorn's fork)."""
    pid = os.getpid()
    if pid not in _client:
        with _lock:
            _client.setdefault(pid, firestore.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT")))
    return _client[pid]


def _user(request: flask.Request) -> tuple[str, dict | None]:
    user_id = request.args.get("user_id", "")
    if not user_id or "/" in user_id:
        return user_id, None
    return user_id, read_document(_db(), USERS, user_id, timeout=5)


@functions_framework.http
def bare_read(request: flask.Request) -> flask.Response:
    """The user document's last event id, nothing else."""
    user_id, doc = _user(request)
    if doc is None:
        return flask.jsonify({"error": "unknown user"}), 404
    return flask.jsonify({"user_id": user_id, "last_event_id": doc.get("last_event_id")})


@functions_framework.http
def find_nearest(request: flask.Request) -> flask.Response:
    """Top-k items by dot product through Firestore's vector search."""
    user_id, doc = _user(request)
    if doc is None or doc.get("embedding") is None:
        return flask.jsonify({"error": "unknown user"}), 404
    k = int(request.args.get("k", 10))
    query = _db().collection(VECTORS).find_nearest(
        vector_field="embedding", query_vector=Vector(list(doc["embedding"])),
        distance_measure=DistanceMeasure.DOT_PRODUCT, limit=k)
    items = [s.id for s in query.get(timeout=30)]
    return flask.jsonify({"user_id": user_id, "items": items})


gc.freeze()  # like the function after its cold start: what is loaded stays out of the cyclic GC
