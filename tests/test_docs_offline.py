"""/docs and /redoc render on a machine without internet: their assets come from the package."""

from __future__ import annotations

from tests.browser import browser, context, image_variation, network, page, screenshot  # noqa: F401


def test_the_browser_blocks_and_records_what_would_leave_the_machine(page, network) -> None:  # noqa: F811
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
