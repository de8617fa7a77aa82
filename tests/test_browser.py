"""The report and a comparison in a real headless Chromium.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so the standard library is
enough: no websocket client, no Selenium or Playwright. For each page the test records
console messages, uncaught exceptions, browser log entries (CSP violations, failed loads)
and every network request; then checks that every <img> decoded (``complete`` and
``naturalWidth > 0``, and ``img.decode()`` resolves), that the page's own script ran (it
marks the page and records the decode count) and that sorting a table works, and takes a
1280×2000 screenshot.

Screenshots land in the test's tmp dir; set ``WORKBENCH_SCREENSHOTS=1`` (or a folder path)
to also copy them to ``reports/screenshots/`` (or that folder) for humans. The Chromium
binary is ``$CHROMIUM`` or the first of chromium / chromium-browser / google-chrome on
PATH (Debian's ``/usr/bin/chromium``); without one the tests skip and say so.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from test_report import shrunk_runs  # noqa: E402  (tests/ is on sys.path under pytest's default import mode)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 2000


def chromium_binary() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


class Chromium:
    """A headless Chromium and one DevTools-protocol connection to it over a pipe."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
             "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe"]

    def __init__(self, binary: str, profile: Path, log: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # dup first: the pipes may be fds 3/4 already
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=child_fds, close_fds=False,
            start_new_session=True,  # its own process group: close() can end the renderers with it
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started, nothing else
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


def problems_in(events: list[dict]) -> list[str]:
    """Console errors/warnings, uncaught exceptions, browser log errors, non-local requests."""
    out = []
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"JS exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            out.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith(("file://", "data:", "about:")):
                out.append(f"network request: {url}")
        elif method == "Network.loadingFailed":
            out.append(f"load failed: {p.get('errorText')}")
    return out


def evaluate(chrome: Chromium, session: str, expression: str) -> Any:
    res = chrome.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                      session=session)
    if "exceptionDetails" in res:
        raise AssertionError(f"evaluating {expression[:60]!r}: {res['exceptionDetails']}")
    return res["result"].get("value")


IMAGES = """Promise.all(Array.from(document.images).map(img =>
    img.decode().then(() => true, () => false).then(decoded =>
        ({decoded, complete: img.complete, width: img.naturalWidth, alt: img.alt}))))"""

SORT = """(() => {
    const table = document.querySelector(%s);
    const th = table.tHead.rows[0].cells[%d];
    const column = () => Array.from(table.tBodies[0].rows, r => r.cells[%d].getAttribute("data-sort") ?? r.cells[%d].textContent);
    th.click();
    const asc = column();
    th.click();
    return {asc, desc: column(), state: th.getAttribute("aria-sort")};
})()"""


def open_page(binary: str, html: Path, tmp: Path, tag: str, sort: tuple[str, int] | None = None) -> dict[str, Any]:
    """Load ``html``; return problems, image states, the page marks and the screenshot path."""
    profile = tmp / f"profile-{tag}"
    chrome = Chromium(binary, profile, tmp / f"chromium-{tag}.log")
    try:
        target = chrome.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = chrome.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            chrome.call(f"{domain}.enable", session=session)
        chrome.call("Emulation.setDeviceMetricsOverride",
                    {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session=session)
        chrome.call("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        chrome.wait_for("Page.loadEventFired", timeout=60)
        images = evaluate(chrome, session, IMAGES)
        marks = evaluate(chrome, session, "({js: document.documentElement.classList.contains('js'),"
                                          " decoded: document.documentElement.getAttribute('data-images-decoded')})")
        shot = chrome.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]  # as first seen
        png = tmp / f"{tag}.png"
        png.write_bytes(base64.b64decode(shot))
        sorted_ = evaluate(chrome, session, SORT % (json.dumps(sort[0]), sort[1], sort[1], sort[1])) if sort else None
        return {"problems": problems_in(chrome.events), "images": images, "marks": marks, "sorted": sorted_,
                "screenshot": png}
    finally:
        chrome.close()


def check_screenshot(path: Path) -> None:
    """A real PNG of the window size that is not blank (many colours, not one flat tone)."""
    from PIL import Image

    assert path.stat().st_size > 20_000, path.stat().st_size
    with Image.open(path) as im:
        im.load()
        assert im.size == (WIDTH, HEIGHT)
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 100, "screenshot looks blank"
        extrema = rgb.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 128, extrema


def keep_for_humans(path: Path) -> None:
    want = os.environ.get("WORKBENCH_SCREENSHOTS")
    if not want:
        return
    dest = ROOT / "reports" / "screenshots" if want in ("1", "true", "yes") else Path(want)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, dest / path.name)


@pytest.fixture(scope="module")
def chromium():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary found ($CHROMIUM, chromium, chromium-browser or google-chrome on PATH); "
                    "CI installs Debian's chromium through .ci/run")
    return binary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return shrunk_runs(tmp_path_factory)


def assert_clean_load(result: dict, n_figures: int) -> None:
    assert result["problems"] == [], "\n".join(result["problems"])
    images = result["images"]
    assert len(images) == n_figures
    bad = [i for i in images if not (i["decoded"] and i["complete"] and i["width"] > 0)]
    assert not bad, bad
    assert result["marks"] == {"js": True, "decoded": f"{n_figures}/{n_figures}"}  # our script ran under the CSP
    check_screenshot(result["screenshot"])
    keep_for_humans(result["screenshot"])


def test_report_in_chromium(chromium, runs, tmp_path):
    from test_report import page_of

    html = runs["full"] / "index.html"
    page = page_of(html)
    clean_col = page.headers["summary-table"].index("clean accuracy (%)")
    result = open_page(chromium, html, tmp_path, "quickstart-report", sort=("#summary-table", clean_col))
    assert_clean_load(result, len(page.figures))
    asc, desc = result["sorted"]["asc"], result["sorted"]["desc"]
    assert [float(v) for v in asc] == sorted(float(v) for v in asc) and desc == asc[::-1]
    assert result["sorted"]["state"] == "descending"


def test_comparison_in_chromium(chromium, runs, tmp_path):
    from test_report import page_of

    html = runs["compare"] / "index.html"
    page = page_of(html)
    col = page.headers["differences-table"].index("accuracy (%)")
    result = open_page(chromium, html, tmp_path, "comparison", sort=("#differences-table", col))
    assert_clean_load(result, len(page.figures))
    asc = [float(v) for v in result["sorted"]["asc"]]
    assert asc == sorted(asc)


def test_a_blocked_script_would_be_caught(chromium, tmp_path):
    """The checks can fail: a page whose script breaks the CSP and throws is reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
                   "<img src='https://example.invalid/x.png'><script>console.error('boom')</script>", encoding="utf-8")
    result = open_page(chromium, bad, tmp_path, "bad")
    assert any("Content Security Policy" in p or "Refused" in p for p in result["problems"]), result["problems"]
    assert result["images"] and not result["images"][0]["decoded"]
