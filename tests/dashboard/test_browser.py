"""The dashboard in a real browser (Debian's headless Chromium, driven by Selenium).

One cluster of 4 engines and one browser serve the whole module; the tests run in file order
and the later ones take engines away (an action, then a kill), each reading what it expects
from the cluster rather than assuming what earlier tests left.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

from tools.chromium import chromium

from .conftest import base_url, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def browser(dashboard_cluster: Any) -> Iterator[Any]:
    with chromium() as driver:
        driver.get(dashboard_cluster.dashboard_url)
        yield driver


def text(browser: Any, css: str) -> str:
    """The element's text, read in one script call (live rows are replaced as they change)."""
    value = browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css
    )
    return str(value or "")


def number(browser: Any, css: str) -> int | None:
    value = text(browser, css).replace(",", "")
    return int(value) if value.isdigit() else None


def engine_state(browser: Any, engine_id: int) -> str | None:
    return text(browser, f'tr[data-engine-id="{engine_id}"] .state') or None


def click(browser: Any, css: str) -> None:
    """A real click on the element; found again if the live page replaced it meanwhile."""

    def clicked() -> bool:
        try:
            browser.find_element(By.CSS_SELECTOR, css).click()
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        return True

    wait_until(clicked, 10, f"a click on {css}")


def show(browser: Any, cluster: Any, hash_: str) -> None:
    browser.get(f"{base_url(cluster)}/{hash_}")


def test_the_page_shows_the_live_engines(browser: Any, dashboard_cluster: Any) -> None:
    expected = len(dashboard_cluster.client.ids)
    assert "corral dashboard" in browser.title
    wait_until(lambda: number(browser, "#engine-count") == expected, 15, f"{expected} engines")
    wait_until(lambda: text(browser, "#link-text") == "live", 10, "the live indicator")
    rows = browser.find_elements(By.CSS_SELECTOR, "#engines tbody tr[data-engine-id]")
    assert len(rows) == expected
    # the token left the address bar for an HttpOnly cookie
    assert "token=" not in browser.current_url
    assert browser.execute_script("return document.cookie") == ""


def test_the_task_count_rises_while_a_map_runs(browser: Any, dashboard_cluster: Any) -> None:
    import time

    rc = dashboard_cluster.client
    start = wait_until(lambda: number(browser, "#done-count") is not None, 10, "a count")
    first = number(browser, "#done-count")
    assert start and first is not None
    ar = rc.load_balanced_view().map_async(time.sleep, [0.1] * 160, chunksize=1)
    seen_while_running: set[int] = set()
    while not ar.done():
        value = number(browser, "#done-count")
        if value is not None and not ar.done():
            seen_while_running.add(value)
        time.sleep(0.05)  # sampling the page while the map runs
    ar.get(timeout=60)
    assert any(first < value < first + 160 for value in seen_while_running), seen_while_running
    wait_until(lambda: number(browser, "#done-count") == first + 160, 10, "the final count")


def test_history_search_finds_a_task_by_msg_id(browser: Any, dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    ar = rc.load_balanced_view().apply_async(divmod, 47, 5)
    assert ar.get(timeout=30) == (9, 2)
    show(browser, dashboard_cluster, "#/history")
    box = wait_until(lambda: browser.find_element(By.ID, "q-msg-id"), 10, "the search box")
    box.send_keys(ar.msg_id)
    browser.find_element(By.ID, "q-go").click()

    def open_only_row() -> str:
        """The one matching row's text, once clicked. The page draws the table again as the
        Hub's answers come, so a row found may be gone by the next call: looked up again."""
        try:
            rows = browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")
            if len(rows) != 1 or rows[0].get_attribute("data-msg-id") != ar.msg_id:
                return ""
            shown = str(rows[0].text)
            rows[0].click()
        except StaleElementReferenceException:
            return ""
        return shown

    assert "divmod(47, 5)" in wait_until(open_only_row, 10, "the one matching row")
    wait_until(lambda: "(9, 2)" in text(browser, "#task-sections"), 10, "the task's result")
    assert text(browser, "#task-status") == "ok"


def test_a_wrong_token_gets_403(browser: Any, dashboard_cluster: Any) -> None:
    with chromium() as stranger:  # no cookie from earlier visits
        stranger.get(f"{base_url(dashboard_cluster)}/?token=not-the-token")
        assert "403: Forbidden" in stranger.page_source
        assert "corral" not in stranger.page_source.replace("403: Forbidden", "")
        stranger.get(f"{base_url(dashboard_cluster)}/")
        assert "403: Forbidden" in stranger.page_source


class EvilPage(http.server.BaseHTTPRequestHandler):
    """A page of another origin that posts a form to the dashboard's shutdown action."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = (
            f'<form id="f" method="POST" action="{self.target}"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_post_is_refused(browser: Any, dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    victim = min(rc.ids)
    show(browser, dashboard_cluster, "#/")  # the browser holds the dashboard's cookie
    EvilPage.target = f"{base_url(dashboard_cluster)}/api/engine/{victim}/shutdown"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EvilPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_until(lambda: "403: Forbidden" in browser.page_source, 10, "the refusal")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert victim in rc.ids
    show(browser, dashboard_cluster, "#/")
    wait_until(lambda: engine_state(browser, victim) in ("idle", "busy"), 10, "the engine alive")


def test_shut_down_from_the_page(browser: Any, dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    victim = min(rc.ids)
    show(browser, dashboard_cluster, "#/")
    css = f'tr[data-engine-id="{victim}"] button[data-action="shutdown"]'
    click(browser, css)  # arms it ("sure?")
    wait_until(lambda: text(browser, css) == "sure?", 5, "sure?")
    click(browser, css)
    wait_until(lambda: victim not in rc.ids, 15, "the engine gone")
    wait_until(lambda: engine_state(browser, victim) == "dead", 10, "the engine shown dead")


def test_a_killed_engine_turns_dead_within_seconds(browser: Any, dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    show(browser, dashboard_cluster, "#/")
    alive = len(rc.ids)
    # a live engine's row and its process: the engine shut down by the test before may still be
    # exiting (its process not yet reaped), so the choice starts from what the page shows alive
    processes = {str(p.pid): p for p in dashboard_cluster.engines if p.poll() is None}
    rows_css = "#engines tbody tr[data-engine-id]"

    def live_row() -> tuple[int, str] | None:
        found = browser.execute_script(
            "for (const row of document.querySelectorAll(arguments[0])) {"
            "  const state = row.querySelector('.state');"
            "  if (arguments[1].includes(row.cells[3].innerText) && state &&"
            "      ['idle', 'busy'].includes(state.innerText))"
            "    return [row.dataset.engineId, row.cells[3].innerText];"
            "}"
            "return null",
            rows_css,
            list(processes),
        )
        return None if found is None else (int(found[0]), str(found[1]))

    engine_id, pid = wait_until(live_row, 15, "a live engine's row with its pid on the page")
    process = processes[pid]
    process.kill()
    process.wait(10)
    wait_until(lambda: engine_state(browser, engine_id) == "dead", 8, "the killed engine dead")
    wait_until(lambda: number(browser, "#engine-count") == alive - 1, 5, "one engine fewer")
