"""The operator console: its static page and the read-only endpoints behind it.

``/console/`` is a single page (``console/index.html``, ``console.js``, ``console.css`` next to
``main.py``, no build step; served as one document with the script and style inlined) served by
the recommend function itself, so it is exactly as private as
the rest of the function (the same IAM). It calls the function's own ``/recommendations``,
``/similar-items`` and ``/healthz`` plus three read-only endpoints defined here:

    GET /console/api/system                      model, index, trending, freshness, experiments
    GET /console/api/user?user_id=U              a user's document and recent history
    GET /console/api/item?item_id=I&k=&sample=   an item, and whom it is recommended to in a sample

Nothing here writes. Rankings use the service's own strategy (:meth:`Recommender.rank_for`) in
process; Firestore reads are bounded (at most ``MAX_SAMPLE`` user documents per request).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flask
from google.api_core import exceptions as gexc
from google.auth.exceptions import GoogleAuthError
from google.cloud import firestore

from httpfn.errors import InvalidParameter, NotFound, Unavailable
from httpfn.responses import json_response
from schemas.experiments import SUMMARY_DOC, is_arm_doc
from schemas.firestore import ModelDoc, UserDoc

from .config import Settings
from .params import RecommendParams, recommend_params, similar_params
from .service import Recommender
from .store import StoreUnavailable

log = logging.getLogger(__name__)

PREFIX = "/console"
DEFAULT_SAMPLE, MAX_SAMPLE = 50, 200  # user documents ranked for "recommended to"
NEWEST_USERS = 5  # user documents listed under freshness
TRENDING_SHOWN = 10
MAX_EXPERIMENT_DOCS = 20

# The page's files, in the console folder; served as one HTML document (see page_document).
PAGE, SCRIPT, STYLE = "index.html", "console.js", "console.css"
_SCRIPT_TAG = f'<script src="{SCRIPT}" defer></script>'
_STYLE_TAG = f'<link rel="stylesheet" href="{STYLE}">'
_PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Handler = Callable[[flask.Request], flask.Response]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _age_s(now_ms: int, then_ms: int | None) -> float | None:
    return round((now_ms - then_ms) / 1000.0, 3) if then_ms else None


def _single(request: flask.Request, name: str) -> str | None:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidParameter(f"{name} is given more than once", name)
    return values[0] if values else None


def parse_sample(value: str | None) -> int:
    """``sample``: how many of the newest user documents to rank, 1..MAX_SAMPLE."""
    if value is None:
        return DEFAULT_SAMPLE
    try:
        n = int(value.strip(), 10)
    except ValueError as e:
        raise InvalidParameter(f"sample must be an integer between 1 and {MAX_SAMPLE}", "sample") from e
    if not 1 <= n <= MAX_SAMPLE:
        raise InvalidParameter(f"sample must be an integer between 1 and {MAX_SAMPLE}", "sample")
    return n


def json_safe(value: Any) -> Any:
    """A Firestore value as JSON: timestamps as epoch ms, vectors and bytes dropped, NaN as null."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        pairs = ((str(k), json_safe(v)) for k, v in value.items())
        return {k: v for k, v in pairs if v is not _DROP}
    if isinstance(value, (list, tuple)):
        return [v for v in map(json_safe, value) if v is not _DROP]
    if hasattr(value, "timestamp") and callable(value.timestamp):  # datetime / DatetimeWithNanoseconds
        return int(value.timestamp() * 1000)
    return _DROP


_DROP = object()


def flat_figures(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of ``values`` as ``{"a.b": x}``; a list of numbers gives its last value."""
    out: dict[str, float] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_figures(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            nums = [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if nums and len(nums) == len(v) and math.isfinite(nums[-1]):
                out[f"{key}[-1]"] = nums[-1]
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = v
    return out


class ConsoleApi:
    """The console's routes: ``handlers`` maps a path (without a trailing slash) to its handler."""

    def __init__(self, service: Recommender, settings: Settings, static_dir: Path,
                 client: Callable[[], Any] | None = None) -> None:
        self.service = service
        self.settings = settings
        self._page_body, csp = page_document(static_dir)
        self._page_headers = {**_PAGE_HEADERS, "Content-Security-Policy": csp}
        self._client = client or (lambda: service.store.client)
        self._models: dict[str, dict[str, Any]] = {}  # version -> model description (immutable)
        self.handlers: dict[str, Handler] = {
            PREFIX: self._page,
            f"{PREFIX}/api/system": lambda r: json_response(self.system()),
            f"{PREFIX}/api/user": self._user,
            f"{PREFIX}/api/item": self._item,
        }

    # ------------------------------------------------------------------ static page
    def _page(self, request: flask.Request) -> flask.Response:
        if not request.path.endswith("/"):
            # relative URLs in the page resolve against /console/, wherever the function is mounted
            return flask.Response(status=308, headers={"Location": "console/", **self._page_headers})
        return flask.Response(self._page_body, status=200, content_type="text/html; charset=utf-8",
                              headers=self._page_headers)

    # ------------------------------------------------------------------ Firestore
    def _read(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` with Firestore failures as a 503 (our side), never a 500."""
        try:
            return fn()
        except (gexc.GoogleAPIError, gexc.RetryError, GoogleAuthError, StoreUnavailable) as e:
            raise Unavailable(f"cannot read {what} now: {e}") from e

    def _db(self) -> Any:
        """The service's Firestore client (created on first use; a failure is a 503)."""
        return self._read("Firestore", self._client)

    @property
    def _timeout(self) -> float:
        return self.settings.firestore_timeout_seconds * 5

    def _newest_users(self, n: int) -> list[UserDoc]:
        """The ``n`` user documents updated last (malformed ones skipped)."""
        query = (self._db().collection(self.settings.users_collection)
                 .order_by("updated_at", direction=firestore.Query.DESCENDING).limit(n))
        snaps = self._read("the newest users", lambda: query.get(timeout=self._timeout))
        users = []
        for snap in snaps:
            doc = snap.to_dict() or {}
            doc.setdefault("user_id", snap.id)
            try:
                users.append(UserDoc.from_document(doc))
            except (KeyError, TypeError, ValueError) as e:
                log.warning("console: skipping malformed users/%s: %s", snap.id, e)
        return users

    def _items(self, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``items/{id}`` attributes (no vectors) for ``item_ids``, one batched read."""
        if not item_ids:
            return {}
        client = self._db()
        col = client.collection(self.settings.items_collection)
        fields = ["title", "category", "brand", "price", "in_stock", "popularity", "indexed_at",
                  "model_version"]
        snaps = self._read("items", lambda: list(client.get_all(
            [col.document(i) for i in dict.fromkeys(item_ids)], field_paths=fields,
            timeout=self._timeout)))
        return {s.id: json_safe(s.to_dict() or {}) for s in snaps if s.exists}

    # ------------------------------------------------------------------ /console/api/system
    def system(self) -> dict[str, Any]:
        """Model, index, trending, freshness of the newest user documents, experiments, features."""
        now = _now_ms()
        _, health = self.service.health()
        return {
            "now": now,
            "model": self._model(health.get("model_version")),
            "index": health,
            "trending": self._trending(now),
            "freshness": self._freshness(now),
            "experiments": self._experiments(),
            "features": {"alpha": True, "diversity": supports("diversity")},
            "limits": {"max_k": self.settings.max_k, "max_sample": MAX_SAMPLE,
                       "default_sample": DEFAULT_SAMPLE},
        }

    def _model(self, version: str | None) -> dict[str, Any] | None:
        if version is None:
            return None
        if version in self._models:
            return self._models[version]
        col = self._db().collection(self.settings.models_collection)
        snap = self._read(f"models/{version}", lambda: col.document(version).get(timeout=self._timeout))
        current = self._read("models/current", lambda: col.document(
            self.settings.current_model_doc).get(timeout=self._timeout))
        if not snap.exists:
            return {"version": version, "found": False}
        try:
            doc = ModelDoc.from_document(snap.to_dict() or {})
        except (KeyError, TypeError, ValueError) as e:
            raise Unavailable(f"models/{version} is malformed: {e}") from e
        meta = read_metadata(doc.artifact_uri)
        cur = (current.to_dict() or {}) if current.exists else {}
        model = {
            "version": doc.version, "found": True, "status": doc.status, "created_at": doc.created_at,
            "parent_version": doc.parent_version, "item_count": doc.item_count, "dim": doc.dim,
            "switched_at": cur.get("switched_at") if cur.get("version") == version else None,
            "params": json_safe(doc.params), "figures": flat_figures(json_safe(doc.metrics)),
            "serving_defaults": json_safe(doc.serving_defaults),
            "trained_on": {k: json_safe(meta[k]) for k in (
                "n_users", "n_items", "n_catalogue", "data_fingerprint", "data_max_timestamp")
                if k in meta} if meta else None,
        }
        if doc.status == "ready":  # a version's document is immutable once ready
            self._models[version] = model
        return model

    def _trending(self, now: int) -> dict[str, Any] | None:
        trending = self.service.indexes.trending
        if trending is None:
            return None
        index = self.service.index
        items = []
        for e in trending.items[:TRENDING_SHOWN]:
            row = index.row_of.get(e.item_id) if index is not None else None
            items.append({"item_id": e.item_id, "score": round(e.score, 6), "views": e.views,
                          "add_to_cart": e.add_to_cart, "purchases": e.purchases,
                          "category": str(index.categories[row]) if row is not None else None})
        return {"updated_at": trending.updated_at, "age_s": _age_s(now, trending.updated_at),
                "window_start": trending.window_start, "window_end": trending.window_end,
                "count": len(trending.items), "items": items}

    def _freshness(self, now: int) -> dict[str, Any]:
        users = self._newest_users(NEWEST_USERS)
        rows = [{"user_id": u.user_id, "updated_at": u.updated_at, "age_s": _age_s(now, u.updated_at),
                 "last_event_ts": u.last_event_ts, "event_count": u.event_count,
                 "model_version": u.model_version} for u in users]
        return {"newest_users": rows, "newest_age_s": rows[0]["age_s"] if rows else None}

    def _experiments(self) -> dict[str, Any]:
        """``experiments/*`` and ``stats/experiments`` (and its subcollections), as stored; else none."""
        client = self._db()
        col = client.collection(self.settings.experiments_collection)
        docs = self._read("experiments", lambda: col.limit(MAX_EXPERIMENT_DOCS).get(timeout=self._timeout))
        experiments = [{"id": s.id, **json_safe(s.to_dict() or {})} for s in docs]
        stats_ref = client.collection(self.settings.stats_collection).document("experiments")

        def arm_stats() -> list[dict[str, Any]]:
            out = []
            snap = stats_ref.get(timeout=self._timeout)
            if snap.exists:
                out.append({"path": f"{self.settings.stats_collection}/experiments",
                            **json_safe(snap.to_dict() or {})})
            for sub in stats_ref.collections(timeout=self._timeout):
                for s in sub.limit(MAX_EXPERIMENT_DOCS).get(timeout=self._timeout):
                    if not is_arm_doc(s.id) and s.id != SUMMARY_DOC:  # the pipeline's _dedup memory
                        continue
                    out.append({"path": f"{self.settings.stats_collection}/experiments/{sub.id}/{s.id}",
                                **json_safe(s.to_dict() or {})})
            return out[:MAX_EXPERIMENT_DOCS]

        arms = self._read("stats/experiments", arm_stats)
        return {"state": "present" if experiments or arms else "none",
                "experiments": experiments, "arm_stats": arms}

    # ------------------------------------------------------------------ /console/api/user
    def _user(self, request: flask.Request) -> flask.Response:
        params = recommend_params(request.args.to_dict(flat=False), self.settings, from_query=True)
        if params.user_id is None:
            raise InvalidParameter("user_id is required", "user_id")
        return json_response(self.user(params.user_id))

    def user(self, user_id: str) -> dict[str, Any]:
        """``users/{id}``: history newest first with item attributes, time since the last event."""
        user = self._read(f"users/{user_id}", lambda: self.service.store.get_user(user_id))
        if user is None:
            raise NotFound(f"no user document for {user_id!r}", "user_id")
        now = _now_ms()
        index = self.service.index
        attrs = self._items([h.item_id for h in user.history])
        history = []
        for h in reversed(user.history):
            a = attrs.get(h.item_id, {})
            history.append({"item_id": h.item_id, "event_type": h.event_type, "timestamp": h.timestamp,
                            "age_s": _age_s(now, h.timestamp), "title": a.get("title"),
                            "category": a.get("category"), "brand": a.get("brand"),
                            "in_index": index is not None and h.item_id in index.row_of})
        version = index.version if index is not None else None
        embedding = ("none" if user.embedding is None
                     else "current" if user.model_version == version else "stale")
        return {"user_id": user.user_id, "now": now, "event_count": user.event_count,
                "last_event_id": user.last_event_id or None, "last_event_ts": user.last_event_ts,
                "since_last_event_s": _age_s(now, user.last_event_ts), "updated_at": user.updated_at,
                "since_update_s": _age_s(now, user.updated_at), "model_version": user.model_version,
                "embedding": embedding, "history_length": len(history), "history": history}

    # ------------------------------------------------------------------ /console/api/item
    def _item(self, request: flask.Request) -> flask.Response:
        p = similar_params(request.args.to_dict(flat=False), self.settings)
        return json_response(self.item(p.item_id, p.k, parse_sample(_single(request, "sample"))))

    def item(self, item_id: str, k: int, sample: int) -> dict[str, Any]:
        """The item's attributes, and the users among the ``sample`` newest whose top ``k`` holds it.

        Each sampled user is ranked as ``/recommendations?user_id=U&k=k`` would rank them (the
        model's default alpha, history and out-of-stock items excluded), in process.
        """
        index = self.service.index
        if index is None:
            raise Unavailable("no item index is loaded yet")
        row = index.row_of.get(item_id)
        attrs = self._items([item_id]).get(item_id)
        if row is None and attrs is None:
            raise NotFound(f"unknown item_id {item_id!r}", "item_id")
        users = self._newest_users(sample)
        hits = []
        for user in users:
            p = RecommendParams(user_id=user.user_id, k=k, alpha=None)
            body = self.service.rank_for(index, p, user)
            for rank, it in enumerate(body["items"], 1):
                if it["item_id"] == item_id:
                    hits.append({"user_id": user.user_id, "rank": rank, "score": it["score"],
                                 "cf_score": it["cf_score"], "cb_score": it["cb_score"],
                                 "strategy": body["strategy"]})
                    break
        return {
            "item_id": item_id, "model_version": index.version, "in_index": row is not None,
            "category": str(index.categories[row]) if row is not None else (attrs or {}).get("category"),
            "in_stock": bool(index.in_stock[row]) if row is not None else (attrs or {}).get("in_stock"),
            "popularity": round(float(index.popularity[row]), 6) if row is not None else None,
            "attributes": attrs, "k": k, "sample_size": len(users), "recommended_to": hits,
            "recommended_count": len(hits)}


def page_document(static_dir: Path) -> tuple[bytes, str]:
    """``index.html`` with ``console.css`` and ``console.js`` inlined, and its Content-Security-Policy.

    One document instead of three requests: the first recommendations are one round trip nearer.
    The policy allows exactly these two inline blocks (by hash) and requests to this origin only.
    """
    html = (static_dir / PAGE).read_text(encoding="utf-8")
    script = (static_dir / SCRIPT).read_text(encoding="utf-8")
    style = (static_dir / STYLE).read_text(encoding="utf-8")
    if html.count(_SCRIPT_TAG) != 1 or html.count(_STYLE_TAG) != 1 or "</script" in script.lower():
        raise ValueError(f"{static_dir / PAGE} must reference {SCRIPT} and {STYLE} once each")
    html = (html.replace(_STYLE_TAG, f"<style>{style}</style>")
            .replace(_SCRIPT_TAG, f"<script>{script}</script>"))

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"

    csp = (f"default-src 'self'; script-src {digest(script)}; style-src {digest(style)}; "
           "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    return html.encode("utf-8"), csp


def supports(parameter: str) -> bool:
    """Whether ``/recommendations`` takes ``parameter`` (a field of :class:`RecommendParams`)."""
    return parameter in {f.name for f in dataclasses.fields(RecommendParams)}


def read_metadata(artifact_uri: str) -> dict[str, Any] | None:
    """The artefact's ``metadata.json`` (local path, ``file://`` or ``gs://``), or None if unreadable."""
    from schemas import uris

    try:
        if uris.is_gcs(artifact_uri):
            from google.cloud import storage

            bucket, blob = uris.split_gcs(f"{artifact_uri.rstrip('/')}/metadata.json")
            data = storage.Client().bucket(bucket).blob(blob).download_as_bytes(timeout=10)
        else:
            path = artifact_uri[len("file://"):] if artifact_uri.startswith("file://") else artifact_uri
            data = (Path(path) / "metadata.json").read_bytes()
        meta = json.loads(data)
    except (OSError, ValueError, gexc.GoogleAPIError) as e:
        log.info("console: no metadata.json at %s: %s", artifact_uri, e)
        return None
    return meta if isinstance(meta, dict) else None
