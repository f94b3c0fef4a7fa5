"""The example app's dashboard, through the test client: what the page says, and that it is safe.

The browser test (tests/test_dashboard_browser.py) checks what a person sees while it refreshes.
"""

from __future__ import annotations

import re
import socket
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from markupsafe import escape
from werkzeug.test import TestResponse

from example_app import DEV_SECRET_KEY, DEV_UUID, create_app, live_demo
from flask_callbot import TaskStatus, get_store
from flask_callbot.testing import task_payload

from support import Clock, Sender, assert_reply, order_call_payload

VOID = {"meta", "link", "br", "img", "input", "hr", "source", "wbr", "col", "area", "base"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    for key in ("CALLBOT_SECRET_KEY", "CALLBOT_UUID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CALLBOT_EXAMPLE_DEV_MODE", "1")
    monkeypatch.setenv("CALLBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'dashboard.sqlite3'}")
    return monkeypatch


@pytest.fixture
def app(env: pytest.MonkeyPatch) -> Flask:
    return create_app()


class Vendor:
    """Posts signed callbacks to the example app with its dev credentials, on real time."""

    def __init__(self, app: Flask) -> None:
        self.clock = Clock(time.time())
        self.sender = Sender(
            app.test_client(), self.clock, secret_key=DEV_SECRET_KEY, uuid=DEV_UUID
        )
        self.ts = int(self.clock.now) - 100

    def post(self, kind: str, payload: dict[str, Any] | bytes, **options: Any) -> TestResponse:
        self.ts += 1  # each task update a second after the last: their order is unambiguous
        options.setdefault("create_ts", self.ts)
        return self.sender.post(kind, payload, **options)


def page(app: Flask, path: str = "/dashboard/") -> str:
    response = app.test_client().get(path)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def element(html: str, tag: str, ident: str) -> str:
    """The source of the ``<tag id="ident">`` element (tables and sections here do not nest)."""
    match = re.search(rf'<{tag}\b[^>]*\bid="{ident}".*?</{tag}>', html, re.DOTALL)
    assert match, f"no <{tag} id={ident}>"
    return match.group(0)


def text(html: str) -> str:
    """What a reader sees: tags dropped, whitespace collapsed, entities decoded."""
    from html import unescape

    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def rows(table: str) -> list[str]:
    return [text(row) for row in re.findall(r"<tr\b[^>]*>.*?</tr>", table, re.DOTALL)[1:]]


def progress_values(html: str) -> dict[str, int]:
    """``aria-label -> value`` of every progress bar."""
    return {
        label: int(value)
        for value, label in re.findall(
            r'<progress max="100" value="(\d+)" aria-label="([^"]+)"', html
        )
    }


class TagBalance(HTMLParser):
    """Every element opened is closed, in order (what "tidy markup" can mean without a linter)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [value for name, value in attrs if name == "id" and value]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()


def assert_tidy(html: str) -> None:
    checker = TagBalance()
    checker.feed(html)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert len(checker.ids) == len(set(checker.ids)), "duplicate ids"


def test_an_empty_dashboard_is_a_complete_accessible_page(app: Flask) -> None:
    client = app.test_client()
    response = client.get("/dashboard/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert_tidy(html)
    assert '<html lang="en">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<title>" in html and "<main" in html and "<h1>" in html
    assert 'role="status" aria-live="polite"' in html
    assert "No tasks yet" in html and "No order callback yet" in html
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in html
    # Nothing from another origin: every reference is to this app (or inline data).
    references = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert references and all(ref.startswith(("/", "#", "data:")) for ref in references)
    for ref in references:
        if ref.startswith("/"):
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            asset.close()
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["Cache-Control"] == "no-store"
    assert client.get("/").headers["Location"] == "/dashboard/"


def test_tasks_show_status_badges_progress_counts_and_a_timeline(app: Flask) -> None:
    vendor = Vendor(app)
    stats = [(0, 0.0, 0.0), (2, 0.2, 0.4), (5, 0.5, 0.6), (5, 0.5, 0.6)]
    for status, (finished, finish_rate, answer_rate) in zip([1, 2, 5, 2], stats, strict=True):
        stat = {
            "finishOrderCount": finished,
            "totalOrderCount": 10,
            "finishRate": finish_rate,
            "totalAnswerCall": 6,
            "totalCall": 10,
            "answerRate": answer_rate,
        }
        assert_reply(vendor.post("task", task_payload(taskStatus=status, taskStat=stat)), 200, 0)
    # A stale update (older than the last applied one) is recorded but changes nothing.
    stale = task_payload(taskStatus=3)
    assert_reply(vendor.post("task", stale, create_ts=vendor.ts - 10), 200, 0)
    assert_reply(vendor.post("task", task_payload(taskID="T200", userTaskID="other")), 200, 0)

    html = page(app)
    assert_tidy(html)
    tasks = element(html, "table", "tasks")
    assert "<caption>" in tasks
    assert re.search(r'data-task-id="T100">\s*<th scope="row"', tasks)
    t100 = next(row for row in rows(tasks) if row.startswith("crm-campaign-42 T100"))
    assert "In progress" in t100
    assert "5 finished of 10" in t100 and "6 answered of 10" in t100
    # Counted in the store (every process's deliveries), not in this process's memory.
    assert "(0 order callbacks recorded)" in t100 and "(0 call callbacks recorded)" in t100
    assert "Completed with orders left" not in tasks
    assert rows(tasks)[0].startswith("other T200")  # most recently updated first
    assert progress_values(tasks) == {
        "Finished orders of crm-campaign-42": 50,
        "Answered calls of crm-campaign-42": 60,
        "Finished orders of other": 50,
        "Answered calls of other": 50,
    }
    assert 'class="badge badge--in-progress">In progress</span>' in tasks
    timeline = re.search(
        r'<section class="timeline-card" data-task-id="T100".*?</section>', html, re.DOTALL
    )
    assert timeline
    steps = [text(li) for li in re.findall(r"<li>.*?</li>", timeline.group(0), re.DOTALL)]
    assert [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", step) for step in steps] == [
        "Pending first seen",
        "In progress was Pending",
        "Paused was In progress",
        "In progress was Paused",
    ]
    assert "Latest change: other is now In progress." in text(html)
    assert "6 callbacks received and 0 refused" in text(html)  # the stale one counts too


def test_per_task_counts_come_from_the_store_not_this_process(app: Flask) -> None:
    """Another process on the same store (another gunicorn worker, say) counts the same."""
    vendor = Vendor(app)
    assert_reply(vendor.post("task", task_payload()), 200, 0)
    for number in range(3):
        call = order_call_payload(orderID=f"order-{number:04d}")
        call["callInfoDetail"]["callID"] = f"call-{number:04d}"
        assert_reply(vendor.post("call", call), 200, 0)
    order = order_call_payload(orderID="order-0000")
    order["callInfoDetail"]["callID"] = "call-0000"
    assert_reply(vendor.post("order", order, request_id="the-order"), 200, 0)
    assert_reply(vendor.post("order", order, request_id="the-order"), 200, 0)  # a duplicate
    other_process = create_app()  # the same store, a feed of its own that saw nothing
    for dashboard in (app, other_process):
        (t100,) = rows(element(page(dashboard), "table", "tasks"))
        assert "(1 order callback recorded)" in t100, t100
        assert "(3 call callbacks recorded)" in t100, t100
    assert "0 callbacks received" in text(page(other_process))  # its own feed: honest about it


@pytest.mark.parametrize(("finished", "rate", "explained"), [(5, 0.5, True), (10, 1.0, False)])
def test_completed_below_100_percent_is_explained(
    app: Flask, finished: int, rate: float, explained: bool
) -> None:
    stat = {"finishOrderCount": finished, "totalOrderCount": 10, "finishRate": rate}
    assert_reply(Vendor(app).post("task", task_payload(taskStatus=3, taskStat=stat)), 200, 0)
    tasks = element(page(app), "table", "tasks")
    assert "Completed" in tasks
    note = "Completed with orders left: the task was ended before they were all called"
    assert (note in text(tasks)) is explained
    assert "Completed means the task has ended" in text(tasks)  # the caption says it always


def test_times_carry_their_date(app: Flask) -> None:
    assert_reply(Vendor(app).post("task", task_payload()), 200, 0)
    html = page(app)
    (t100,) = rows(element(html, "table", "tasks"))
    assert re.search(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", t100), t100
    assert re.search(r"Updated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", text(html))
    assert "Times are UTC." in text(html)


def test_unknown_status_and_missing_statistics(app: Flask) -> None:
    vendor = Vendor(app)
    assert_reply(vendor.post("task", task_payload(taskStatus=9, taskStat=None)), 200, 0)
    tasks = element(page(app), "table", "tasks")
    assert 'class="badge badge--unknown">Status 9</span>' in tasks
    assert "<progress" not in tasks
    assert "not reported yet" in tasks


def test_latest_orders_from_the_store_and_calls_from_the_signals(app: Flask) -> None:
    vendor = Vendor(app)
    missed = order_call_payload(orderID="order-0002", userName="李娜", userPhone="8613900001234")
    missed["callInfoDetail"].update(
        callAnswerTs=0, callDuration=0, hangupCause="NO_ANSWER", intents=[]
    )
    assert_reply(vendor.post("call", order_call_payload()), 200, 0)
    assert_reply(vendor.post("call", missed), 200, 0)
    assert_reply(vendor.post("order", order_call_payload()), 200, 0)
    html = page(app)
    assert_tidy(html)

    orders = rows(element(html, "table", "orders"))
    assert len(orders) == 1
    assert orders[0] == (
        "order-0001 crm-campaign-42 王小明 Finished (2 callbacks) NORMAL_CLEARING, 60 s "
        "有意向 (interested) 要求回电 (callback) 询问价格 (price)"
    )
    calls = rows(element(html, "table", "calls"))
    assert len(calls) == 2
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d order-0002 crm-campaign-42 李娜 ••••1234 "
        r"Not answered \(NO_ANSWER\) none",
        calls[0],
    )
    assert calls[1].endswith(
        "order-0001 crm-campaign-42 王小明 ••••8000 Answered, 60 s (NORMAL_CLEARING) "
        "有意向 (interested) 要求回电 (callback) 询问价格 (price)"
    )
    assert "8613800138000" not in html and "8613900001234" not in html  # phones stay masked
    assert '<ul class="intents"><li>有意向 (interested)</li>' in html


def test_hostile_strings_are_escaped(app: Flask) -> None:
    vendor = Vendor(app)
    script = "<script>alert(1)</script>"
    attribute = '"><img src=x onerror=alert(2)>'
    assert_reply(
        vendor.post("task", task_payload(userTaskID=script, taskID=f"T{attribute}")), 200, 0
    )
    call = order_call_payload(userTaskID=script, userName=attribute, orderID=script)
    call["callInfoDetail"]["intents"][0].update(intentName=script, intentTag=attribute)
    for kind in ("call", "order"):
        assert_reply(vendor.post(kind, call), 200, 0)
    for html in (page(app), page(app, "/dashboard/live")):
        assert_tidy(html)
        assert script not in html and attribute not in html
        assert "<img" not in html and "<script>" not in html.replace(
            '<script src="/dashboard/static/dashboard.js" defer></script>', ""
        )
        assert escape(script) in html
        assert escape(attribute) in html
    assert f"Finished orders of {escape(script)}" in page(app)


def test_the_live_fragment_is_what_the_script_swaps_in(app: Flask) -> None:
    vendor = Vendor(app)
    assert_reply(vendor.post("task", task_payload()), 200, 0)
    response = app.test_client().get("/dashboard/live")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    fragment = response.get_data(as_text=True)
    assert_tidy(fragment)
    assert "<html" not in fragment and "<head" not in fragment
    assert 'data-task-id="T100"' in fragment
    assert "data-announce" in fragment
    full = page(app)
    assert 'id="live" data-src="/dashboard/live" data-refresh="1500"' in full
    assert element(fragment, "table", "tasks") == element(full, "table", "tasks")


def test_refused_requests_are_counted(app: Flask) -> None:
    vendor = Vendor(app)
    forger = Sender(app.test_client(), vendor.clock, secret_key="wrong", uuid=DEV_UUID)
    response = forger.post("task", task_payload())
    assert_reply(response, 401, 6)
    assert "0 callbacks received and 1 refused" in text(page(app))


def test_the_feed_is_bounded_and_per_app(app: Flask, tmp_path: Any) -> None:
    other = create_app({"CALLBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'other.sqlite3'}"})
    vendor = Vendor(app)
    for number in range(15):
        payload = order_call_payload(orderID=f"order-{number:04d}")
        payload["callInfoDetail"]["callID"] = f"call-{number:04d}"
        assert_reply(vendor.post("call", payload), 200, 0)
    calls = rows(element(page(app), "table", "calls"))
    assert len(calls) == 12  # the newest, newest first
    assert " order-0014 " in f" {calls[0]} " and " order-0003 " in f" {calls[-1]} "
    assert "No call callback yet" in page(other)
    assert "0 callbacks received" in text(page(other))


def test_refresh_interval_from_config(env: pytest.MonkeyPatch) -> None:
    app = create_app({"EXAMPLE_DASHBOARD_REFRESH_MS": 400})
    html = page(app)
    assert 'data-refresh="400"' in html
    assert '<meta http-equiv="refresh" content="1">' in html


def test_live_demo_plays_a_campaign_into_the_dashboard(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--port", "0", "--campaigns", "2", "--orders", "6", "--delay", "0", "--pause", "0"]
    assert live_demo.main(argv) == 0  # --campaigns N: it exits after them (--stay: it waits)
    out = capsys.readouterr().out
    assert re.search(r"^Dashboard: http://127\.0\.0\.1:\d+/dashboard/ ", out, re.MULTILINE)
    assert out.count("every answer as expected") == 2, out
    tasks = get_store(create_app()).list_tasks()
    assert [task.status for task in tasks] == [TaskStatus.COMPLETED] * 2


def test_live_demo_repairs_a_lossy_campaign(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--port", "0", "--campaigns", "1", "--orders", "12", "--delay", "0", "--drop", "0.3"]
    assert live_demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "every answer as expected" in out
    lost = re.search(r"campaign 1: (\d+) callbacks lost; reconciliation recorded (\d+): (.*)", out)
    assert lost is not None, out
    assert int(lost[1]) > 0 and int(lost[2]) > 0
    assert lost[3] == "the store matches the vendor"
    [task] = get_store(create_app()).list_tasks()
    assert task.status is TaskStatus.COMPLETED


def test_the_docs_list_every_live_demo_option() -> None:
    quickstart = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"
    section = (
        quickstart.read_text(encoding="utf-8")
        .split("## Live dashboard demo", 1)[1]
        .split("\n## ", 1)[0]
    )
    options = [
        option
        for action in live_demo.build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    assert len(options) == 10
    assert [option for option in options if f"`{option}" not in section] == []


def test_live_demo_signs_with_the_apps_own_credentials(env: pytest.MonkeyPatch) -> None:
    env.delenv("CALLBOT_EXAMPLE_DEV_MODE")
    env.setenv("CALLBOT_SECRET_KEY", "a-real-secret")
    env.setenv("CALLBOT_UUID", "RealAccount")
    app = live_demo.demo_app({"CALLBOT_SECRET_KEY": ["rotated-new", "a-real-secret"]})
    with live_demo.Server(app, port=0) as server:
        summary = live_demo.play(app, server.url, orders=3, delay=0, faults=True, seed=1)
    assert summary.ok, summary.report()
    html = page(app)
    assert "refused since this process started" in html
    assert "Completed" in element(html, "table", "tasks")


def test_live_demo_says_when_the_port_is_busy(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert live_demo.main(["--port", str(port), "--campaigns", "1"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
