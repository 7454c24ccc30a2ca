"""The console in a real headless Chromium, against the local function serving a trained model.

The function runs as in production locally (``scripts/serve_recommend.sh``: gunicorn workers,
serving.env) over a tiny trained artefact published to the Firestore emulator, with users
embedded by its query tower. Chromium (Debian's package, installed by ``make browser``) is driven
over the DevTools protocol: it opens the console for one user, searches another, moves the alpha
slider with the keyboard and clicks a recommendation; each rendered list must equal the API's
answer. A browser that cannot start fails the test (never a skip). The screenshot and the measured
load time go to ``build/browser/``.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.parse

import pytest
import requests

from schemas import names
from schemas.firestore import HistoryEntry, UserDoc
from schemas.index_snapshot import INDEX_FILE, IndexSnapshot
from scripts.headless_chromium import BrowserError, HeadlessChromium
from scripts.processes import ROOT, ManagedProcess
from testing.artifacts import tiny_artifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUT = ROOT / "build" / "browser"
LOAD_BUDGET_MS = 300.0  # median of LOADS page loads
LOADS = 5
N_USERS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _users(snap: IndexSnapshot, now: int) -> list[UserDoc]:
    """Users whose histories are the items of one category each (oldest first)."""
    categories = sorted(set(snap.categories.astype(str).tolist()))
    users = []
    for n in range(N_USERS):
        cat = categories[n % len(categories)]
        items = [str(i) for i, c in zip(snap.item_ids, snap.categories.astype(str)) if c == cat][:6]
        entries = tuple(HistoryEntry(f"e-u{n}-{j}", item, "view", now - 60_000 + 1000 * j)
                        for j, item in enumerate(items))
        users.append(UserDoc(user_id=f"user-{n:02d}", history=entries,
                             last_event_id=entries[-1].event_id, last_event_ts=entries[-1].timestamp,
                             updated_at=now - n, event_count=len(entries)))
    return users


@pytest.fixture
def served(firestore_client, tmp_path):
    """The tiny trained model published (users embedded), served by scripts/serve_recommend.sh."""
    from pipelines.training.publish import publish_version

    artifact = tiny_artifact()
    snap = IndexSnapshot.load(artifact / INDEX_FILE)
    now = int(time.time() * 1000)
    for user in _users(snap, now):
        firestore_client.collection(names.USERS).document(user.user_id).set(user.to_document())
    model = publish_version(artifact, client=firestore_client, publish_users=True)
    port = _free_port()
    proc = ManagedProcess("recommend", [str(ROOT / "scripts" / "serve_recommend.sh"), str(port)],
                          tmp_path / "recommend.log", env={"PYTHON": sys.executable}).start()
    base = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(f"{base}/healthz", 120)
        yield base, model.version
    finally:
        proc.stop()


def _api(base: str, path: str, **params) -> dict:
    resp = requests.get(f"{base}{path}", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _expected_rows(body: dict) -> list[list[str]]:
    return [[str(n), i["item_id"], _fmt(i["score"]), _fmt(i["cf_score"]), _fmt(i["cb_score"])]
            for n, i in enumerate(body["items"], 1)]


ROWS = ("[...document.querySelectorAll('#recs tbody tr:not(.empty)')]"
        ".map(tr => [...tr.children].map(td => td.textContent))")


def _column(table: str, n: int) -> str:
    """JS: the texts of column ``n`` (1-based) of a table's rows."""
    return (f"[...document.querySelectorAll('#{table} tbody tr:not(.empty) td:nth-child({n})')]"
            ".map(td => td.textContent)")


def _rendered(browser: HeadlessChromium, user: str, alpha: str) -> list[list[str]]:
    """The recommendation rows once the table shows ``user`` at ``alpha`` (``default``: none sent)."""
    browser.wait_for(f"(() => {{ const t = document.querySelector('#recs'); return t.dataset.user === "
                     f"{json.dumps(user)} && t.dataset.alpha === {json.dumps(alpha)}; }})()")
    return browser.evaluate(ROWS)


def test_console_renders_what_the_api_answers(served):
    base, version = served
    users = [f"user-{n:02d}" for n in range(N_USERS)]
    default = {u: _api(base, "/recommendations", user_id=u, k=10) for u in users}
    pure_cb = {u: _api(base, "/recommendations", user_id=u, k=10, alpha=0) for u in users}
    # a user whose list moves with alpha (so the slider's effect is visible)
    first, second = [u for u in users if [i["item_id"] for i in default[u]["items"]]
                     != [i["item_id"] for i in pure_cb[u]["items"]]][:2]
    assert default[first]["strategy"] == "personalized" and default[first]["model_version"] == version
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        browser = HeadlessChromium(log_path=OUT / "chromium.log").__enter__()
    except BrowserError as e:
        pytest.fail(f"headless Chromium cannot start (run `make browser`): {e}", pytrace=False)
    try:
        # 1. deep link: navigation start to the first rendered recommendations, LOADS loads (the
        # browser already runs and has a renderer for the origin, as a user's would)
        browser.navigate(f"{base}/healthz")
        loads = []
        for _ in range(LOADS):
            browser.navigate(f"{base}/console/?user_id={urllib.parse.quote(first)}")
            assert _rendered(browser, first, "default") == _expected_rows(default[first])
            loads.append(browser.evaluate("performance.getEntriesByName('recs-rendered')[0].startTime"))
        load_ms = sorted(loads)[LOADS // 2]
        nav = browser.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
        # 2. search by typing into the search box: a malformed id shows the API's 400 message,
        # then another user
        bad = requests.get(f"{base}/recommendations", params={"user_id": "a/b"}, timeout=10)
        assert bad.status_code == 400
        for text in ("a/b", second):
            browser.click("#user-input")
            browser.evaluate("document.querySelector('#user-input').select()")
            browser.type_text(text)
            browser.press("Enter", key_code=13, text="\r")
            if text == "a/b":
                assert browser.wait_for("!document.querySelector('#user-error').hidden && "
                                        "document.querySelector('#user-error').textContent") == (
                    bad.json()["error"]["message"])
        assert _rendered(browser, second, "default") == _expected_rows(default[second])
        user = _api(base, "/console/api/user", user_id=second)
        history = browser.evaluate("[...document.querySelectorAll('#history tbody tr:not(.empty)')]"
                                   ".map(tr => [...tr.children].slice(0, 3).map(td => td.textContent))")
        assert history == [[h["item_id"], h["category"] or "–", h["brand"] or "–"] for h in user["history"]]
        # 3. move the alpha slider with the keyboard: Home is alpha 0, End alpha 1
        browser.click("#alpha")
        browser.press("Home", key_code=36)
        at_zero = _rendered(browser, second, "0")
        assert at_zero == _expected_rows(pure_cb[second])
        assert [r[1] for r in at_zero] != [r[1] for r in _expected_rows(default[second])]
        browser.press("End", key_code=35)
        assert _rendered(browser, second, "1") == _expected_rows(
            _api(base, "/recommendations", user_id=second, k=10, alpha=1))
        # 4. click the first recommendation: its neighbours and whom it is recommended to
        item = browser.evaluate("document.querySelector('#recs tbody tr td:nth-child(2)').textContent")
        browser.click("#recs tbody tr")
        browser.wait_for(f"document.querySelector('#item-panel').dataset.item === {json.dumps(item)}")
        similar = _api(base, "/similar-items", item_id=item, k=10)
        assert browser.evaluate(_column("similar", 2)) == [i["item_id"] for i in similar["items"]]
        who = _api(base, "/console/api/item", item_id=item, k=10)
        assert browser.evaluate(_column("reco-to", 1)) == [h["user_id"] for h in who["recommended_to"]]
        # 5. system panel: model version, index size, experiments' none state; no diversity slider
        system = _api(base, "/console/api/system")
        assert browser.evaluate("document.querySelector('#model-line').textContent") == f"model {version}"
        assert browser.evaluate("document.querySelector('#experiments-none') !== null")
        assert browser.evaluate("document.querySelector('#diversity-control').hidden") == (
            not system["features"]["diversity"])
        facts = browser.evaluate("[...document.querySelectorAll('#index-facts dd')].map(d => d.textContent)")
        assert facts[0] == str(system["index"]["item_count"])
        shot = browser.screenshot(OUT / "console.png")
        urls = browser.request_urls()
        errors = browser.exceptions()
    finally:
        browser.close()
    (OUT / "console.json").write_text(json.dumps(
        {"first_recommendations_ms": load_ms, "loads_ms": loads, "navigation": json.loads(nav),
         "requests": urls}, indent=1))
    print(f"\nconsole: first recommendations rendered {load_ms:.0f} ms after navigation start "
          f"(median of {[round(x) for x in loads]}); screenshot {shot}")
    assert shot.stat().st_size > 10_000 and not errors
    assert urls and all(u.startswith(base + "/") for u in urls), [u for u in urls if not u.startswith(base)]
    assert load_ms < LOAD_BUDGET_MS, f"first recommendations after {load_ms:.0f} ms"
