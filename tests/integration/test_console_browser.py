"""The web console at /ui driven in a real headless Chromium (Debian's chromium and its
chromedriver, through Selenium; nothing is downloaded) against a live producer, a live consumer
and real Redis (issue 14): the page shows a group, its consumers and a dead letter; re-drive from
the page moves the dead letter back and the order is then processed; pause stops processing and
resume restarts it; an action without the admin token is refused until the token is entered.

Selenium's calls block, so each runs in a thread (``asyncio.to_thread``): the producer and the
consumer run on this test's event loop. ``ORDERSTREAM_SCREENSHOTS=<dir>`` saves the page there
(docs/console*.png come from such a run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.handlers import done_key
from tests.integration.consumer_support import running, wait_for
from tests.integration.producer_support import api, keys, make_api  # noqa: F401 (fixtures)
from tests.servers import ci_requires_servers

TOKEN = "console-admin-token"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
async def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "chromium and chromedriver not found (Debian: apt-get install chromium chromium-driver)"
        if ci_requires_servers():
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1100",
                "--no-proxy-server"):
        options.add_argument(arg)
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(10)
    try:
        yield Page(driver)
    finally:
        await asyncio.to_thread(driver.quit)


class Page:
    """The console in the browser; every call runs in a thread."""

    def __init__(self, driver) -> None:
        self.driver = driver

    async def open(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def js(self, script: str, *args):
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def text(self, css: str) -> str:
        return await self.js("const n = document.querySelector(arguments[0]); return n ? n.textContent : null;", css)

    async def rows(self, css: str) -> list[list[str]]:
        return await self.js("return [...document.querySelectorAll(arguments[0])].map("
                             "r => [...r.children].map(c => c.textContent));", css)

    async def click(self, css: str) -> None:
        found = await self.js("const n = document.querySelector(arguments[0]); if (n) n.click(); return !!n;", css)
        assert found, f"nothing to click at {css}"

    async def until(self, check, what: str, timeout: float = 15.0):
        async def probe():
            return await check()
        return await wait_for(probe, timeout=timeout, interval=0.2, what=what)

    async def screenshot(self, name: str) -> None:
        folder = os.environ.get("ORDERSTREAM_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self.driver.save_screenshot, str(Path(folder) / name))


async def dead_letter(r, keys, order_id: str, error: str = "PaymentDeclined: card expired") -> str:
    return await r.xadd(keys.dlq, {
        "data": f'{{"orderId": "{order_id}", "product": "Laptop", "quantity": 1, "userId": 7}}',
        "source_id": "1-1", "source_stream": keys.stream, "group": keys.group, "order_id": order_id,
        "reason": "max_deliveries", "deliveries": "5", "error": error, "consumer": "pod-a",
        "dead_lettered_ms": str(int(time.time() * 1000))})


async def test_the_console_shows_groups_consumers_and_dead_letters_and_redrives_one(make_api, r, keys, redis_url,
                                                                                   names, browser):
    api = await make_api()
    dlq_id = await dead_letter(r, keys, "c-dead", error="<img src=x onerror=alert(1)> declined")
    async with running(redis_url, names, "pod-a", block_ms=500):
        for i in range(3):
            assert (await api.post("/orders", json={"orderId": f"c-{i}", "product": "Laptop", "quantity": 1,
                                                    "userId": 7})).status == 201
        await browser.open(str(api.make_url("/ui")))
        groups = await browser.until(lambda: _rows_with(browser, "#groups tbody tr", keys.group), "the group row")
        assert groups[0][:2] == [keys.group, "ok"]
        consumers = await browser.until(lambda: _rows_with(browser, "table.consumers tbody tr", "pod-a"), "pod-a")
        assert consumers[0][0] == "pod-a"
        [row] = await browser.rows("#dead-letters tbody tr")
        assert row[1:6] == [dlq_id, "c-dead", "max_deliveries", "5", "<img src=x onerror=alert(1)> declined"]
        assert await browser.js("return document.querySelectorAll('#dead-letters img').length") == 0  # text, not HTML
        await browser.until(lambda: _text_is_number(browser, "#rate-accepted"), "the live rates")
        await browser.screenshot("console.png")

        await browser.click(f'#dead-letters tr[data-dlq-id="{dlq_id}"] button.redrive')
        await wait_for(lambda: r.get(done_key(keys.stream, "c-dead")), timeout=15, what="the re-driven order processed")
        assert await r.xlen(keys.dlq) == 0
        await browser.until(lambda: _text_contains(browser, "#dead-letters tbody", "none"), "the dead letter gone")
        audit = await browser.until(lambda: _rows_with(browser, "#audit tbody tr", "redrive"), "the audit row")
        assert audit[0][1:4] == ["redrive", dlq_id, "1"]


async def test_pause_from_the_console_stops_processing_and_resume_restarts_it(api, r, keys, redis_url, names, browser):
    async with running(redis_url, names, "pod-a", block_ms=500) as (w,):
        await browser.open(str(api.make_url("/ui")))
        await browser.until(lambda: _rows_with(browser, "#groups tbody tr", keys.group), "the group row")
        await browser.click(f'#groups tr[data-group="{keys.group}"] button.pause')
        await wait_for(lambda: _worker_state(w, "paused"), timeout=5, what="the consumer paused")
        for i in range(3):
            assert (await api.post("/orders", json={"orderId": f"pz-{i}", "product": "p", "quantity": 1,
                                                    "userId": 1})).status == 201
        # The page refreshes every 2 s: wait for the refresh that saw the three orders.
        await browser.until(lambda: _group_row_is(browser, keys.group, ["paused", "3"]), "the group paused with lag 3")
        await browser.screenshot("console-paused.png")
        await asyncio.sleep(1.5)  # three BLOCK intervals: a running consumer would have processed them
        assert await r.get(done_key(keys.stream, "pz-0")) is None
        await browser.click(f'#groups tr[data-group="{keys.group}"] button.resume')
        for i in range(3):
            await wait_for(lambda i=i: r.get(done_key(keys.stream, f"pz-{i}")), timeout=10, what=f"pz-{i} processed")


async def test_an_action_without_the_token_is_refused_until_the_token_is_entered(make_api, r, keys, browser):
    api = await make_api(admin_token=TOKEN)
    dlq_id = await dead_letter(r, keys, "t-1")
    await browser.open(str(api.make_url("/ui")))
    await browser.until(lambda: _rows_with(browser, "#dead-letters tbody tr", dlq_id), "the dead letter row")
    await browser.click(f'#dead-letters tr[data-dlq-id="{dlq_id}"] button.redrive')
    message = await browser.until(lambda: _text_contains(browser, "#message", "401"), "the refusal")
    assert "refused (401, admin token required)" in message
    assert await r.xlen(keys.dlq) == 1  # nothing moved
    await browser.js("document.getElementById('token').value = arguments[0];", TOKEN)
    await browser.click("#token-save")
    await browser.click(f'#dead-letters tr[data-dlq-id="{dlq_id}"] button.redrive')
    await wait_for(lambda: _dlq_empty(r, keys), timeout=10, what="the dead letter re-driven with the token")
    [entry] = (await (await api.get("/audit")).json())["entries"]
    assert (entry["action"], entry["target"], entry["auth"]) == ("redrive", dlq_id, "token")


async def test_the_console_loads_nothing_from_outside_the_app(api):
    page = await (await api.get("/ui")).text()
    assert "http://" not in page and "https://" not in page
    for asset, kind in (("/ui/console.js", "text/javascript"), ("/ui/console.css", "text/css")):
        resp = await api.get(asset)
        assert (resp.status, resp.content_type) == (200, kind)
        assert "https://" not in await resp.text()
    resp = await api.get("/ui")
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert (await api.get("/ui/nope.js")).status == 404


async def _rows_with(browser: Page, css: str, needle: str):
    rows = await browser.rows(css)
    found = [row for row in rows if needle in row]
    return found or None


async def _group_row_is(browser: Page, group: str, state_and_lag: list[str]):
    rows = await _rows_with(browser, "#groups tbody tr", group)
    return rows and rows[0][1:3] == state_and_lag


async def _text_contains(browser: Page, css: str, needle: str):
    text = await browser.text(css)
    return text if text and needle in text else None


async def _text_is_number(browser: Page, css: str):
    text = await browser.text(css)
    try:
        return float(text) >= 0
    except (TypeError, ValueError):
        return None


async def _worker_state(w, state: str) -> bool:
    return w.worker.state == state


async def _dlq_empty(r, keys) -> bool:
    return await r.xlen(keys.dlq) == 0
