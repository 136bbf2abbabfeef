"""/docs and /redoc render on a machine without internet: their assets come from the package."""

from __future__ import annotations

from tests.browser import browser, context, image_variation, network, page, screenshot  # noqa: F401


def test_the_browser_blocks_and_records_requests_that_leave_the_machine(page, network) -> None:  # noqa: F811
    """The guard the offline tests rely on: an external request is refused and recorded."""
    page.set_content('<html><body><h1>offline</h1><img src="https://cdn.example.invalid/x.png"></body></html>')
    page.wait_for_load_state("load")
    assert network.blocked == ["https://cdn.example.invalid/x.png"]
    assert network.external() == ["https://cdn.example.invalid/x.png"]
    path = screenshot(page, "browser-self-test")
    colours, spread = image_variation(path)
    assert colours > 1 and spread > 0
