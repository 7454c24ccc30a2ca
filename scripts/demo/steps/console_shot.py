"""Step 7 (last part): the operator console on the running function, and a screenshot of it.

Prints the console's local URL, opens it in headless Chromium (Debian's package, `make browser`)
for one showcase user, clicks their first recommendation, and saves the page as a PNG that the
report embeds, with the time from navigation start to the first rendered recommendations.
"""

from __future__ import annotations

import urllib.parse

from scripts.demo.console import say
from scripts.demo.context import Context
from scripts.demo.errors import DemoError
from scripts.demo.steps.services import Services
from scripts.headless_chromium import BrowserError, HeadlessChromium

RENDERED = "document.querySelector('#recs').dataset.seq !== undefined"


def console_screenshot(ctx: Context, services: Services, user_id: str) -> None:
    """Screenshot ``/console/?user_id=...`` into the work dir; record it in ``fig.console``."""
    base = services.recommend.base_url
    url = f"{base}/console/"
    say(f"\n  Console: {url} (while the demo runs; afterwards: scripts/serve_recommend.sh, then "
        f"http://127.0.0.1:8080/console/)")
    shot = ctx.cfg.work_dir / "console.png"
    try:
        with HeadlessChromium(log_path=ctx.logs / "chromium.log") as browser:
            browser.navigate(f"{base}/healthz")  # a running browser, as a user's would be
            browser.navigate(f"{url}?user_id={urllib.parse.quote(user_id)}")
            browser.wait_for(RENDERED)
            load_ms = browser.evaluate("performance.getEntriesByName('recs-rendered')[0].startTime")
            if browser.evaluate("document.querySelector('#recs tbody tr:not(.empty)') !== null"):
                browser.click("#recs tbody tr")
                browser.wait_for("document.querySelector('#item-panel').dataset.item !== undefined")
            browser.wait_for("document.querySelector('#model-facts dd') !== null")
            browser.screenshot(shot)
            urls = browser.request_urls()
    except BrowserError as e:
        raise DemoError(f"console screenshot: {e} (is Chromium installed? `make browser`)") from e
    off_origin = [u for u in urls if not u.startswith(base + "/")]
    ctx.fig.console = {"url": url, "user_id": user_id, "screenshot": str(shot),
                       "first_recommendations_ms": round(load_ms, 1), "requests": len(urls),
                       "off_origin_requests": off_origin}
    say(f"  console screenshot for {user_id}: {shot} (first recommendations after {load_ms:.0f} ms, "
        f"{len(urls)} requests, {len(off_origin)} off the local origin)")
