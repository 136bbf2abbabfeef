"""/docs and /redoc render on a machine without internet (an HPC login node): Swagger UI and ReDoc
come from the fastapi-offline package, served by the service itself. Real uvicorn service, real
PostgreSQL, real headless Chromium with every request that would leave the machine blocked."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import NetworkLog, browser, context, image_variation, is_local, network, page, screenshot  # noqa: F401
from tests.service_fixtures import TOKEN, ServiceProcess

if TYPE_CHECKING:  # the browser tests skip, saying why, where playwright is not installed
    from playwright.sync_api import Page, Response

TITLE = "eqflow EMEWS service"


@pytest.fixture()
def secret(service: ServiceProcess) -> str:
    """A task whose payload must never show on the public pages."""
    payload = f"secret-payload-{uuid.uuid4().hex}"
    answer = httpx.post(service.url + "/v1/tasks", headers={"Authorization": f"Bearer {TOKEN}"},
                        json={"exp_id": "docs-exp", "task_type": 1, "payloads": [payload]}, timeout=10)
    assert answer.status_code == 200, answer.text
    return payload


def test_the_browser_blocks_and_records_what_would_leave_the_machine(page: Page, network: NetworkLog) -> None:  # noqa: F811
    """The guard the offline tests rely on: external requests and websockets are aborted and recorded."""
    page.set_content('<html><body><h1>offline</h1><img src="https://cdn.example.invalid/x.png">'
                     '<script>new WebSocket("wss://ws.example.invalid/live");'
                     ' fetch("http://192.0.2.1/").catch(() => {})</script></body></html>')
    expected = {"https://cdn.example.invalid/x.png", "wss://ws.example.invalid/live", "http://192.0.2.1/"}
    for _ in range(100):  # the websocket is routed asynchronously
        if set(network.blocked) >= expected:
            break
        page.wait_for_timeout(50)
    assert set(network.blocked) == expected
    assert set(network.external()) == expected
    assert network.sent == []
    path = screenshot(page, "browser-self-test")
    colours, spread = image_variation(path)
    assert colours > 1 and spread > 0


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_pages_name_no_other_host(service: ServiceProcess, path: str) -> None:
    """Without a browser: the HTML loads its assets from this service, and its CSP allows nothing else."""
    answer = httpx.get(service.url + path, timeout=10)
    assert answer.status_code == 200
    assert "/docs-assets/" in answer.text
    assert re.findall(r"(?:https?:)?//[\w.-]+", answer.text) == []  # no absolute URL, no CDN
    csp = answer.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp and "connect-src 'self'" in csp
    assert "http" not in csp and "*" not in csp
    for asset in re.findall(r'/docs-assets/[\w.-]+', answer.text):
        assert httpx.get(service.url + asset, timeout=10).status_code == 200, asset


def _open(tab: Page, url: str) -> Response:
    response = tab.goto(url, wait_until="networkidle")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    return response


def _assert_offline(log: NetworkLog, service: ServiceProcess) -> None:
    """Every request went to the service on 127.0.0.1; the only other URLs the page named (ReDoc's
    logo on cdn.redoc.ly) were refused by the browser under the page's CSP, before any network traffic."""
    assert log.blocked == [] and log.external() == []
    assert {urlsplit(url).hostname for url in log.sent} == {"127.0.0.1"}
    assert all(url.startswith(service.url + "/") for url in log.sent), log.sent
    assert any("/docs-assets/" in url for url in log.sent) and service.url + "/openapi.json" in log.sent
    assert all(is_local(url) or url in log.refused for url in log.requests), log.requests
    assert all(not is_local(url) for url in log.refused), log.refused  # CSP never broke a local asset


def _assert_not_blank(name: str, tab: Page, full_page: bool = True) -> None:
    path = screenshot(tab, name, full_page=full_page)
    assert path.stat().st_size > 20_000, f"{path}: {path.stat().st_size} bytes, a near-empty page"
    colours, spread = image_variation(path)
    assert colours > 50 and spread > 0.05, f"{path}: {colours} colours, pixel spread {spread:.3f}: blank"


@pytest.mark.slow
def test_swagger_ui_renders_offline(service: ServiceProcess, secret: str, page: Page,  # noqa: F811
                                    network: NetworkLog) -> None:  # noqa: F811  # noqa: F811
    _open(page, service.url + "/docs")
    operations = page.locator(".opblock-summary-path")
    operations.filter(has_text=re.compile(r"^/v1/tasks$")).first.wait_for(state="visible")
    spec = httpx.get(service.url + "/openapi.json", timeout=10).json()
    expected = sum(1 for ops in spec["paths"].values() for method in ops if method in ("get", "post"))
    assert operations.count() == expected  # every route of the schema, none lost
    assert TITLE in page.locator(".info .title").inner_text()
    assert page.locator(".btn.authorize").is_visible()  # bearer tokens can be entered for "Try it out"
    _assert_not_blank("docs", page)
    content = page.content()
    assert secret not in content and TOKEN not in content
    _assert_offline(network, service)


@pytest.mark.slow
def test_redoc_renders_offline(service: ServiceProcess, secret: str, page: Page,  # noqa: F811
                               network: NetworkLog) -> None:  # noqa: F811
    _open(page, service.url + "/redoc")
    heading = page.locator("h1", has_text=TITLE)
    heading.wait_for(state="visible")
    page.get_by_text("/v1/tasks/claim", exact=True).first.wait_for(state="attached")
    assert page.locator("[role=menuitem], li[data-item-id]").count() > 10  # the operations in the sidebar
    _assert_not_blank("redoc", page, full_page=False)  # the whole of it is 17,000 px tall: 30 s to capture
    content = page.content()
    assert secret not in content and TOKEN not in content
    _assert_offline(network, service)
