"""The dashboard's FunSearch panel, drawn from the progress events a real FunSearch engine records
(real PostgreSQL, real uvicorn service, headless Chromium). Screenshot: test-artifacts/dashboard-funsearch.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eqflow.funsearch.engine import FunSearch
from eqflow.queue import LocalTaskQueue
from tests.browser import browser, context, network, page, screenshot  # noqa: F401
from tests.service_fixtures import TOKEN, ServiceProcess
from tests.test_funsearch_engine import EVALUATE, config, evaluate_for_real, process, serve


def test_funsearch_progress_shows_in_its_own_panel(service: ServiceProcess, db_url: str, tmp_path: Path,
                                                   page: Any) -> None:  # noqa: F811
    with LocalTaskQueue(db_url) as queue:
        fs = FunSearch(queue, config(db_url, tmp_path, tests=[{"n": 6, "s": 1}, {"n": 7, "s": 1}]), "fs-dash",
                       progress=False, start_pools=False)
        fs.open()
        fs._record_progress()
        process(fs, serve(queue, EVALUATE, evaluate_for_real))  # the seed: 8 and 14 words
        fs._submit_sample(0)
        fs._record_progress()
    page.goto(service.url + "/dashboard")
    page.wait_for_url("**/dashboard/login")
    page.fill("#token", TOKEN)
    page.click("#login-button")
    page.wait_for_url("**/dashboard")
    page.locator("#experiments button", has_text="fs-dash").click()
    page.wait_for_function("() => document.getElementById('progress-panel').dataset.panel === 'funsearch'")
    body = page.locator("#progress-body")
    assert body.locator('dd[data-key="programs"]').inner_text() == "4"  # the seed on each of 4 islands
    assert body.locator('dd[data-key="best score"]').inner_text() == "14"
    rows = body.locator("#funsearch-tests tr").all_inner_texts()
    assert rows[1:] == ['{"n":6,"s":1}\t8', '{"n":7,"s":1}\t14']
    assert "1 / 0" in body.locator('dd[data-key="in flight (samples / evaluations)"]').inner_text()
    assert page.locator("#funsearch-best-chart svg").count() == 1
    screenshot(page, "dashboard-funsearch")
