"""The status page and its actions: token checks over real HTTP, and the page in a real headless browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bussdcc import WorkerState

from ._helpers import Echo, MakeRuntime, Ping, missing_tool, wait_until
from ._web import base, get, post, token_of, tool
from .cli_parts import Probe

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def test_actions_need_the_runtime_token(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("act", Echo(), Probe(id="probe"), http="127.0.0.1:0")
    url = base(rt) + "/api/workers/echo/restart"
    old = rt.worker("echo").pid
    assert post(url)[0] == 403
    assert post(url, "0" * 64)[0] == 403
    assert post(url, token_of(rt)[:-1])[0] == 403
    assert rt.worker("echo").pid == old  # refused: nothing was done
    code, answer = post(url, token_of(rt))
    assert code == 200, answer
    assert answer["worker"]["state"] == "running" and answer["worker"]["pid"] not in (None, old)
    assert rt.worker("echo").pid == answer["worker"]["pid"]
    code, answer = post(base(rt) + "/api/workers/probe/stop", token_of(rt))
    assert code == 200 and answer["worker"]["state"] == "stopped"
    assert rt.worker("probe").state is WorkerState.STOPPED
    code, answer = post(base(rt) + "/api/workers/probe/start", token_of(rt))
    assert code == 200 and answer["worker"]["state"] == "running"
    code, answer = post(base(rt) + "/api/workers/nobody/restart", token_of(rt))
    assert code == 404 and "nobody" in answer["error"]
    code, answer = post(base(rt) + "/api/workers/echo/explode", token_of(rt))
    assert code == 404 and "restart" in answer["error"]
    # Only POST acts: a GET (a link, an image tag) changes nothing.
    assert get(url + f"?token={token_of(rt)}")[0] == 404
    status = get(base(rt) + "/api/status", {"Authorization": f"Bearer {token_of(rt)}"})
    assert b'"can_act": true' in status[2]


# ---- the page in a real browser ---------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium driven by Selenium through Debian's chromedriver."""
    chromium, driver_path = tool("chromium"), tool("chromedriver")
    if chromium is None or driver_path is None:
        missing_tool("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as ChromeService
    except ImportError:
        missing_tool("selenium is not installed (the dev extra has it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=ChromeService(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def _cell(driver: Any, worker: str, cls: str) -> str:
    """The text of one cell of the worker table, read in one go (the table is redrawn every second)."""
    script = "const td = document.querySelector(arguments[0]); return td ? td.textContent : '';"
    return str(driver.execute_script(script, f'#workers tr[data-worker="{worker}"] td.{cls}'))


def _click(driver: Any, selector: str) -> bool:
    """Click the element, if it is there now (False if the table was redrawn under us: try again)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        driver.find_element(By.CSS_SELECTOR, selector).click()
    except (NoSuchElementException, StaleElementReferenceException):
        return False
    return True


@pytest.mark.timeout(240)
def test_the_page_shows_the_workers_acts_and_streams_live(make_runtime: MakeRuntime, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    rt, _ = make_runtime("page", Echo(), Probe(id="probe"), http="127.0.0.1:0")
    assert rt.http_url is not None
    browser.get(rt.http_url)
    # The token moved from the address bar into the page's session.
    wait_until(lambda: "token=" not in browser.current_url, timeout=60, what="the token to leave the URL")
    old = rt.worker("echo").pid
    wait_until(lambda: _cell(browser, "echo", "pid") == str(old), timeout=60, what="the worker table")
    assert _cell(browser, "probe", "pid") == str(rt.worker("probe").pid)
    states = browser.execute_script("return [...document.querySelectorAll('#workers .state')].map(s => s.textContent)")
    assert states == ["running", "running"]
    wait_until(lambda: "live" in browser.find_element(By.ID, "live").text, timeout=60, what="the stream to open")

    # A message dispatched now shows up without a reload (Echo answers from its own process).
    def pong_shown() -> bool:
        rt.emit(Ping(n=7))
        return '"n":7' in browser.find_element(By.ID, "events").text

    wait_until(pong_shown, timeout=60, what="a live test.pong on the page")
    shot = os.environ.get("BUSSDCC_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)

    # Restart from the page: the worker gets a new pid, and the page shows it.
    restart = '#workers tr[data-worker="echo"] button[data-action="restart"]'
    wait_until(lambda: _click(browser, restart), timeout=60, what="the restart button to be clicked")
    wait_until(lambda: rt.worker("echo").pid not in (None, old), timeout=60, what="echo to be restarted")
    new = rt.worker("echo").pid
    wait_until(lambda: _cell(browser, "echo", "pid") == str(new), timeout=60, what="the new pid on the page")
    assert _cell(browser, "echo", "restarts") == "0"  # asked for: not a respawn


@pytest.mark.timeout(240)
def test_without_the_token_the_page_is_read_only(make_runtime: MakeRuntime, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    rt, _ = make_runtime("page-ro", Echo(), http="127.0.0.1:0")
    browser.get(base(rt) + "/")
    wait_until(lambda: _cell(browser, "echo", "pid") == str(rt.worker("echo").pid), timeout=60, what="the table")
    assert "read-only" in browser.find_element(By.ID, "mode").text
    assert browser.find_elements(By.CSS_SELECTOR, "#workers button") == []
