"""A headless Chromium driven over the Chrome DevTools Protocol (one page, one websocket).

What the console's browser test and the demo's screenshot use: Debian's ``chromium`` package
(``make browser`` installs it; nothing is downloaded at run time), started with
``--remote-debugging-port=0`` and driven with ``websockets``' synchronous client::

    with HeadlessChromium() as browser:
        browser.navigate("http://127.0.0.1:8080/console/")
        browser.wait_for("document.querySelector('#recs tbody tr') !== null")
        browser.screenshot(Path("console.png"))
        browser.request_urls()  # every URL the page asked for

Every failure to start or to answer raises :class:`BrowserError` (callers fail, never skip).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from scripts.processes import ManagedProcess

BINARIES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars", "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
         "--disable-backgrounding-occluded-windows", "--disable-features=Translate,MediaRouter",
         "--enable-features=NetworkServiceInProcess2", "--renderer-process-limit=1", "--in-process-gpu",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


class BrowserError(RuntimeError):
    """Chromium could not start, or did not answer a command in time."""


def find_chromium() -> str:
    """The Chromium binary on PATH; raise :class:`BrowserError` naming the fix when there is none."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError(f"no Chromium on PATH (tried {', '.join(BINARIES)}): run `make browser` "
                       "(apt-get install -y chromium chromium-driver)")


class HeadlessChromium:
    """One headless Chromium process and its first page, driven over CDP."""

    def __init__(self, width: int = 1440, height: int = 960, log_path: Path | None = None,
                 timeout_s: float = 30.0) -> None:
        self.size = (width, height)
        self.timeout_s = timeout_s
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        self._log_path = log_path or self._profile / "chromium.log"
        self._proc: ManagedProcess | None = None
        self._ws: Any = None
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ life
    def __enter__(self) -> HeadlessChromium:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start Chromium on a free debugging port and attach to its page."""
        from websockets.sync.client import connect

        binary = find_chromium()
        self._proc = ManagedProcess("chromium", [
            binary, *FLAGS, f"--user-data-dir={self._profile}",
            f"--window-size={self.size[0]},{self.size[1]}", "about:blank"], self._log_path).start()
        port = self._debugging_port()
        deadline = time.monotonic() + self.timeout_s
        page = None
        while page is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                    page = next((t for t in json.load(resp) if t.get("type") == "page"), None)
            except (OSError, ValueError):  # not listening yet
                page = None
            if page is None:
                time.sleep(0.05)
        if page is None:
            raise BrowserError("Chromium started but shows no page target")
        try:
            self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout_s)
        except (OSError, TimeoutError) as e:
            raise BrowserError(f"cannot connect to Chromium's DevTools socket: {e}") from e
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                  deviceScaleFactor=1, mobile=False)

    def _debugging_port(self) -> int:
        """The port Chromium chose, from ``DevToolsActivePort`` in its profile."""
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and not self._proc.alive():
                raise BrowserError(f"Chromium exited with code {self._proc.returncode}:\n"
                                   f"{self._proc.log_tail()}")
            try:
                first = marker.read_text().splitlines()[0]
                return int(first)
            except (OSError, IndexError, ValueError):
                time.sleep(0.05)
        raise BrowserError(f"Chromium did not open its debugging port in {self.timeout_s:.0f} s:\n"
                           f"{self._proc.log_tail() if self._proc else ''}")

    def close(self) -> None:
        """Close the socket, stop Chromium (its whole process group), remove the profile."""
        if self._ws is not None:
            try:
                self._ws.close()
            except OSError:
                pass
            self._ws = None
        if self._proc is not None:
            self._proc.stop(timeout_s=10)
            self._proc = None
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; events that arrive meanwhile are kept in :attr:`events`."""
        if self._ws is None:
            raise BrowserError("the browser is not running")
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"no answer to {method} in {self.timeout_s:.0f} s")
            try:
                msg = json.loads(self._ws.recv(timeout=remaining))
            except TimeoutError as e:
                raise BrowserError(f"no answer to {method} in {self.timeout_s:.0f} s") from e
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def drain(self, seconds: float = 0.1) -> None:
        """Collect the events that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = json.loads(self._ws.recv(timeout=remaining))
            except TimeoutError:
                return
            if "method" in msg:
                self.events.append(msg)

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for its load event."""
        loaded = len(self.events)
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired", since=loaded)

    def wait_for_event(self, method: str, since: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for e in self.events[since:]:
                if e["method"] == method:
                    return e
            self.drain(0.05)
        raise BrowserError(f"no {method} within {self.timeout_s:.0f} s")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.02)
        raise BrowserError(f"timed out waiting for {expression}")

    # ------------------------------------------------------------------ input and output
    def press(self, key: str, code: str | None = None, key_code: int = 0, text: str = "") -> None:
        """One key press (down and up) on the focused element."""
        common = {"key": key, "code": code or key, "windowsVirtualKeyCode": key_code,
                  "nativeVirtualKeyCode": key_code}
        self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **common)
        self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    def type_text(self, text: str) -> None:
        """Insert ``text`` into the focused element, as typing would."""
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the first element matching ``selector``."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page as it is now (the full page height)."""
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or self.size[1]
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": self.size[0], "height": max(height, 1),
                               "scale": 1})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def request_urls(self) -> list[str]:
        """Every URL the page requested so far (``Network.requestWillBeSent``)."""
        self.drain(0.05)
        return [e["params"]["request"]["url"] for e in self.events
                if e["method"] == "Network.requestWillBeSent"]

    def exceptions(self) -> list[str]:
        """Uncaught JavaScript exceptions so far."""
        return [json.dumps(e["params"].get("exceptionDetails", {}))[:500] for e in self.events
                if e["method"] == "Runtime.exceptionThrown"]
