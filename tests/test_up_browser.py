"""A real browser (Debian's headless Chromium through its chromedriver, driven by selenium) opens the
demo page through the balancer of a real ``sesh up``, reloads it, and keeps its Session_ID and its hit
count across a node kill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.references import reference
from tests.up_procs import UpProcess

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
pytestmark = pytest.mark.e2e  # and interop (its tier): Debian's chromium is the reference browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = reference("chromium"), reference("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def test_chromium_keeps_its_session_through_a_node_kill(tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    topo = UpProcess(tmp_path)
    try:
        def page() -> tuple[str, str, int]:
            node = driver.find_element(By.TAG_NAME, "h1").text  # type: ignore[attr-defined]
            session = driver.find_element(By.ID, "session-id").text  # type: ignore[attr-defined]
            hits = int(driver.find_element(By.ID, "hits").text)  # type: ignore[attr-defined]
            return node, session, hits

        driver.get(topo.url)  # type: ignore[attr-defined]
        node, session, hits = page()
        assert hits == 1 and len(session.split("-")[0]) == 32
        cookie = driver.get_cookie("JSESSIONID")  # type: ignore[attr-defined]
        assert cookie is not None and cookie["httpOnly"]
        nodes = {node}
        # Chromium also asks for /favicon.ico, which counts as a hit too: the count must go up, by at least
        # one per reload, and never back.
        for _ in range(4):
            driver.refresh()  # type: ignore[attr-defined]
            node, now, count = page()
            nodes.add(node)
            assert count > hits
            hits = count
            assert now.split("-")[0] == session.split("-")[0]
        assert nodes == {"node1", "node2"}  # non-sticky: the reloads alternated between the nodes

        assert topo.ctl("kill", "node1").returncode == 0
        for _ in range(4):
            driver.refresh()  # type: ignore[attr-defined]
            node, now, count = page()
            assert node == "node2"
            assert count > hits
            hits = count
            assert now.split("-")[0] == session.split("-")[0]
        # The page's own Reload link works as well as the browser's reload.
        driver.find_element(By.LINK_TEXT, "Reload").click()  # type: ignore[attr-defined]
        assert page()[2] > hits
    finally:
        topo.kill()
