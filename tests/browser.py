"""Browser fixtures: a real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright,
with every request that does not go to this machine blocked and recorded.

Use them from a test file (conftest.py does not import them):

    from tests.browser import browser, context, network, page, screenshot  # noqa: F401

    def test_page(page, network):
        page.goto(url)
        screenshot(page, "my-page")            # test-artifacts/my-page.png
        assert network.external() == []        # nothing tried to leave the machine

No browser is ever downloaded (`playwright install` is never run): setup.sh --with-test-services
installs Debian's chromium; without it, or without the playwright package, the tests skip saying why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Request, Route, WebSocketRoute

CHROMIUM = os.environ.get("EQFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Not network traffic: inline data, in-page objects, the browser's own pages.
LOCAL_SCHEMES = frozenset({"data", "blob", "about", "chrome", "chrome-extension", "devtools"})
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]"]


def is_local(url: str) -> bool:
    """Whether a URL stays on this machine (127.0.0.1, localhost, ::1, or no network at all)."""
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOCAL_HOSTS


@dataclass
class NetworkLog:
    """The traffic of one browser context, URLs in order:

    requests: everything its pages asked for (including what the browser refused itself);
    sent: what went out to the network, all of it local (routing lets nothing else through);
    blocked: what would have left the machine, aborted by the test's routing (HTTP and websockets);
    refused: what the browser did not even try, because the page's Content-Security-Policy forbids it.
    """

    requests: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def external(self) -> list[str]:
        """The URLs that tried to leave the machine (all were blocked): a page that works offline has none."""
        return [url for url in dict.fromkeys(self.sent + self.blocked) if not is_local(url)]

    def hosts(self) -> set[str]:
        """The hosts that requests were sent to (data:/blob: URLs aside)."""
        network = [urlsplit(url) for url in self.sent]
        return {parts.hostname or "" for parts in network if parts.scheme in ("http", "https", "ws", "wss")}


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (Debian: apt-get install chromium, or scripts/setup.sh --with-test-services)"
    return None


# Module scope, not session: Playwright's sync API runs an event loop on the main thread while it
# is started, which would break later test files that run asyncio themselves.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module. Playwright gives each launch a fresh, temporary user
    data dir (deleted at close): no profile, cache or cookies carry over from anywhere."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def network() -> NetworkLog:
    """The requests of this test's browser context (see `context`)."""
    return NetworkLog()


@pytest.fixture()
def context(browser: Browser, network: NetworkLog) -> Iterator[BrowserContext]:
    """A fresh browser context (no cookies, no cache) in which every request that would leave the
    machine is aborted (HTTP and websockets), and all traffic is recorded in `network`. Service
    workers are blocked, so none can fetch around the routing; Chromium itself resolves no host
    name but localhost (--host-resolver-rules), so not even a DNS prefetch leaves the machine."""
    ctx = browser.new_context(service_workers="block", viewport={"width": 1280, "height": 900})

    def route(r: Route) -> None:
        url = r.request.url
        if is_local(url):
            network.sent.append(url)
            r.continue_()
        else:
            network.blocked.append(url)
            r.abort("blockedbyclient")

    def route_websocket(ws: WebSocketRoute) -> None:
        if is_local(ws.url):
            network.sent.append(ws.url)
            ws.connect_to_server()
        else:
            network.blocked.append(ws.url)
            ws.close(code=1008, reason="the test browser is offline")

    def failed(request: Request) -> None:
        if request.failure == "csp":
            network.refused.append(request.url)

    ctx.route("**/*", route)
    ctx.route_web_socket(lambda url: True, route_websocket)
    ctx.on("request", lambda request: network.requests.append(request.url))
    ctx.on("requestfailed", failed)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture()
def page(context: BrowserContext) -> Iterator[Page]:
    """A new page in `context` (external requests blocked and recorded)."""
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    p.close()


def screenshot(page: Page, name: str, **options: Any) -> Path:
    """Save a full-page screenshot as test-artifacts/<name>.png (kept after the run) and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=options.pop("full_page", True), **options)
    return path


def image_variation(path: Path) -> tuple[int, float]:
    """(the number of distinct colours, the pixel standard deviation) of a PNG: a blank page is one colour."""
    import matplotlib.image
    import numpy as np

    pixels = np.asarray(matplotlib.image.imread(str(path)))
    rgb = pixels[..., :3].reshape(-1, 3) if pixels.ndim == 3 else pixels.reshape(-1, 1)
    return len(np.unique(rgb, axis=0)), float(rgb.std())
