"""The dashboard in a real headless browser, while a simulated campaign runs: what a person sees.

Debian's chromium driven by Playwright; nothing is downloaded at run time. Runs only with
``CALLBOT_TEST_BROWSER=1`` (``.ci/run`` sets it and installs chromium); ``CALLBOT_TEST_CHROMIUM``
names another binary.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask

from example_app import create_app, live_demo
from flask_callbot.simulator import Summary

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.skipif(
    os.environ.get("CALLBOT_TEST_BROWSER") != "1",
    reason="set CALLBOT_TEST_BROWSER=1 to run the browser tests (Debian's chromium, Playwright)",
)

CHROMIUM = os.environ.get("CALLBOT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: What the page shows of the first task: its badge, its finish progress, the order rows.
OBSERVE = """() => {
  const row = document.querySelector("#tasks tbody tr");
  if (!row) return null;
  const bar = row.querySelector(".finish progress");
  return {
    status: row.querySelector(".status .badge").textContent.trim(),
    finish: bar ? bar.value : -1,
    orders: document.querySelectorAll("#orders tbody tr").length,
  };
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Flask:
    for key in ("CALLBOT_SECRET_KEY", "CALLBOT_UUID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CALLBOT_EXAMPLE_DEV_MODE", "1")
    monkeypatch.setenv("CALLBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'browser.sqlite3'}")
    app = create_app({"EXAMPLE_DASHBOARD_REFRESH_MS": 300})
    for name in ("example_app", "flask_callbot", "werkzeug"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.WARNING)
    return app


class Watcher:
    """A page with its console errors and uncaught exceptions collected."""

    def __init__(self, browser: Browser, width: int, height: int) -> None:
        self.page: Page = browser.new_page(viewport={"width": width, "height": height})
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda message: (
                self.problems.append(f"console {message.type}: {message.text}")
                if message.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))


def play_in_background(app: Flask, url: str, **options: Any) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Summary | BaseException] = []

    def run() -> None:
        try:
            outcome.append(live_demo.play(app, url, faults=False, seed=3, **options))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, name="campaign", daemon=True)
    thread.start()
    return thread, outcome


def test_a_person_watches_a_campaign_fill_the_dashboard(browser: Browser, app: Flask) -> None:
    began = time.monotonic()
    with live_demo.Server(app, port=0) as server:
        watcher = Watcher(browser, 1280, 900)
        page = watcher.page
        page.goto(f"{server.url}/dashboard/")
        assert page.get_by_text("No tasks yet").is_visible()
        assert page.get_by_role("button", name="Pause updates").is_visible()
        page.evaluate("window.notReloaded = true")

        thread, outcome = play_in_background(app, server.url, orders=24, delay=0.05)
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            shown = page.evaluate(OBSERVE)
            if shown is not None and (not seen or shown != seen[-1]):
                seen.append(shown)
            if not thread.is_alive() and shown and shown["status"] == "Completed":
                break
            page.wait_for_timeout(100)
        thread.join(timeout=5)
        assert outcome and isinstance(outcome[0], Summary), outcome
        assert outcome[0].ok, outcome[0].report()

        # Rows appeared, the badge changed and ended Completed, the progress bar moved.
        statuses = [state["status"] for state in seen]
        assert statuses[-1] == "Completed", seen
        assert "In progress" in statuses, seen
        assert statuses[0] != "Completed", seen
        finish = [state["finish"] for state in seen if state["finish"] >= 0]
        assert finish[-1] == 100, seen
        assert finish[0] < 100 and finish == sorted(finish), seen
        assert len(set(finish)) >= 3, seen  # it moved while the person watched
        assert seen[-1]["orders"] > 0
        assert page.evaluate("window.notReloaded") is True  # swapped in place, not reloaded

        timeline = page.locator(".timeline-card").first.locator("li .badge").all_inner_texts()
        assert timeline == ["Pending", "In progress", "Paused", "In progress", "Completed"]
        assert "is now Completed" in page.locator("#announcer").inner_text()
        assert page.locator("#calls tbody tr").count() > 0
        assert page.locator("#calls .intents li").count() > 0

        pause = page.get_by_role("button", name="Pause updates")
        pause.click()
        assert page.get_by_role("button", name="Resume updates").get_attribute("aria-pressed") == (
            "true"
        )
        assert watcher.problems == []
        watcher.page.close()
    assert time.monotonic() - began < 30


def test_the_dashboard_fits_a_phone(browser: Browser, app: Flask) -> None:
    with live_demo.Server(app, port=0) as server:
        thread, outcome = play_in_background(app, server.url, orders=12, delay=0)
        thread.join(timeout=30)
        assert outcome and isinstance(outcome[0], Summary) and outcome[0].ok, outcome
        watcher = Watcher(browser, 375, 740)
        page = watcher.page
        page.goto(f"{server.url}/dashboard/")
        page.wait_for_timeout(700)  # two refreshes swapped in
        assert page.locator("#tasks tbody tr").count() == 1
        overflow = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], overflow
        # Rows became cards: column headers hidden, each cell labelled by its column. Looked up
        # and measured in one script: a refresh in between would leave a detached element,
        # which has no layout and no computed style.
        header_width, label = page.evaluate(
            """() => [
                document.querySelector("#tasks thead").getBoundingClientRect().width,
                getComputedStyle(document.querySelector("#tasks tbody td.status"), "::before")
                    .content,
            ]"""
        )
        assert header_width <= 1
        assert label == '"Status: "'
        badge = page.locator("#tasks tbody .badge")
        assert badge.inner_text() == "Completed" and badge.is_visible()
        assert page.locator("#tasks tbody .finish progress").evaluate("e => e.value") == 100
        assert watcher.problems == []
        watcher.page.close()


#: Words of the tables and timeline titles drawn over more than one line (a word cut mid-word).
CUT_WORDS = """() => {
  const cut = [];
  const cells = document.querySelectorAll("table th, table td, .timeline-card h3");
  for (const cell of cells) {
    if (cell.getBoundingClientRect().width <= 1) continue;  // a card layout's hidden header
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const match of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const lines = new Set([...range.getClientRects()].map((rect) => Math.round(rect.top)));
        if (lines.size > 1) cut.push(match[0]);
      }
    }
  }
  return cut;
}"""


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (760, 900), (375, 740)])
def test_no_word_is_cut_across_lines(browser: Browser, app: Flask, width: int, height: int) -> None:
    """Headers, task ids and times wrap between words, at desktop, tablet and phone widths."""
    with live_demo.Server(app, port=0) as server:
        thread, outcome = play_in_background(app, server.url, orders=6, delay=0)
        thread.join(timeout=30)
        assert outcome and isinstance(outcome[0], Summary) and outcome[0].ok, outcome
        watcher = Watcher(browser, width, height)
        page = watcher.page
        page.goto(f"{server.url}/dashboard/")
        page.wait_for_timeout(400)  # a refresh swapped in
        assert page.locator("#tasks tbody tr").count() == 1
        assert page.evaluate(CUT_WORDS) == []
        overflow = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], overflow
        assert watcher.problems == []
        watcher.page.close()
