"""Reconciliation repairs what lost callbacks left behind, through the vendor's API: against a
real loopback fake of that API, on SQLite and PostgreSQL.

Every missed transition, order and call is recorded and signalled once, exactly as its callback
would have been (``source="reconcile"``); a second run, or a late copy of a lost callback, sends
no transition, order or call signal again; vendor errors leave the task untouched.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from flask import Flask

from flask_callbot import DeliveryState, TaskStatus, create_blueprint, get_store, signals
from flask_callbot.celery_dispatch import RECONCILE_TASK
from flask_callbot.client import CallbotAPI
from flask_callbot.reconcile import REQUEST_ID_PREFIX, api_client, reconcile
from flask_callbot.simulator import Campaign, build_campaign, differences, run_campaign, vendor_book
from flask_callbot.state import get_state
from flask_callbot.testing import SentSignal, record_signals, task_payload
from flask_callbot.vendor_api import FakeVendor, VendorBook, serve_vendor_api

from support import (
    NOW,
    SECRET,
    UUID,
    Clock,
    Sender,
    assert_reply,
    free_port,
    names,
    order_call_payload,
)


@pytest.fixture
def vendor(clock: Clock) -> FakeVendor:
    return FakeVendor(uuid=UUID, secret_key=SECRET, clock=clock)


@pytest.fixture
def api_url(vendor: FakeVendor) -> Iterator[str]:
    with serve_vendor_api(vendor) as url:
        yield url


@pytest.fixture
def api(app: Flask, api_url: str, clock: Clock) -> Iterator[CallbotAPI]:
    with CallbotAPI(
        api_url, uuid=UUID, secret_key=SECRET, clock=clock, sleep=lambda _: None, timeout=2
    ) as client:
        yield client


def domain_signals(sent: list[SentSignal]) -> list[SentSignal]:
    """Every signal but callback-received (sent for every recorded delivery, by contract)."""
    return [s for s in sent if s.name != "callback-received"]


def test_a_missed_transition_is_recorded_and_signalled_once(
    app: Flask, sender: Sender, clock: Clock, vendor: FakeVendor, api: CallbotAPI
) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="live-1"), 200, 0)
    lost = task_payload(taskStatus=3)
    lost["taskStat"]["finishOrderCount"] = 100
    vendor.book.record_task(lost)  # the vendor completed the task; its callback never came
    clock.now += 30
    with record_signals(sender=app) as sent:
        report = reconcile(app, api)
    assert report.errors == []
    [finding] = report.findings
    assert (finding.planned.change, finding.result) == ("IN_PROGRESS -> COMPLETED", "recorded")
    assert names(sent) == [
        "callback-received",
        "task-status-changed",
        "task-completed",
        "task-progress",
    ]
    completed = sent[2]
    assert completed.kwargs["previous"] is TaskStatus.IN_PROGRESS
    assert completed.kwargs["event"].source == "reconcile"
    assert completed.kwargs["event"].request_ts == int(clock.now)
    task = get_store(app).get_task("T100")
    assert task.status is TaskStatus.COMPLETED
    assert task.stats["finish_order_count"] == 100
    stored = get_store(app).get_delivery(finding.request_id)
    assert finding.request_id.startswith(REQUEST_ID_PREFIX)
    assert stored.source == "reconcile" and stored.transition.changed

    with record_signals(sender=app) as again:
        assert reconcile(app, api).findings == []  # nothing differs now
        # The lost callback arrives late, older than the listing: recorded, stale, no signal.
        late = sender.post("task", lost, request_id="live-2", create_ts=int(clock.now) - 20)
        assert_reply(late, 200, 0)
    assert names(again) == ["callback-received"]
    assert again[0].kwargs["event"].source == "callback"
    assert get_store(app).get_delivery("live-2").transition.applied is False


def test_reconciliation_covers_only_unfinished_tasks_unless_named(
    app: Flask, sender: Sender, clock: Clock, vendor: FakeVendor, api: CallbotAPI
) -> None:
    finished = task_payload(taskID="T1", userTaskID="u1", taskStatus=3)
    running = task_payload(taskID="T2", userTaskID="u2", taskStatus=2)
    for number, payload in enumerate((finished, running)):
        assert_reply(sender.post("task", payload, request_id=f"r{number}"), 200, 0)
        vendor.book.record_task({**payload, "taskStatus": 5})
    clock.now += 5
    report = reconcile(app, api, dry_run=True)
    assert [(f.planned.user_task_id, f.result) for f in report.findings] == [("u2", "would record")]
    assert get_store(app).get_task("T2").status is TaskStatus.IN_PROGRESS  # dry run
    named = reconcile(app, api, user_task_ids=["u1", "unknown"])
    assert [f.planned.change for f in named.findings] == ["COMPLETED -> PAUSED"]
    assert named.errors == ["unknown: the vendor's listTask does not have it"]


def test_missed_calls_and_orders_are_signalled_once(
    app: Flask, sender: Sender, clock: Clock, vendor: FakeVendor, api: CallbotAPI
) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="t-1"), 200, 0)
    vendor.book.record_task(task_payload(taskStatus=2))
    first = order_call_payload(orderID="o1", finish=False)
    first["callInfoDetail"].update(callID="c1", callStartTs=1_799_999_000)
    second = order_call_payload(orderID="o1", finish=True)
    second["callInfoDetail"].update(callID="c2", callStartTs=1_799_999_500)
    for payload in (first, second):
        vendor.book.record_number(payload)
    assert_reply(sender.post("call", first, request_id="live-c1"), 200, 0)  # c2 and o1 lost
    clock.now += 60
    with record_signals(sender=app) as sent:
        report = reconcile(app, api, orders=True)
    assert report.errors == []
    assert (report.orders_checked, report.calls_checked) == (1, 2)
    assert [
        (f.planned.kind.value, f.planned.call_id, f.planned.change) for f in report.findings
    ] == [
        ("call", "c2", "missed call"),
        ("order", "c2", "missed order"),
    ]
    assert names(domain_signals(sent)) == ["call-received", "order-received"]
    order = get_store(app).get_order("T100", "o1")
    assert (order.finish, order.last_call_id, order.last_kind.value) == (True, "c2", "order")

    with record_signals(sender=app) as again:
        assert reconcile(app, api, orders=True).findings == []
        for kind, payload, request_id in (
            ("call", second, "late-c2"),
            ("order", second, "late-o1"),
            ("call", first, "resent-c1"),  # a resend under a new requestID
        ):
            assert_reply(sender.post(kind, payload, request_id=request_id), 200, 0)
    assert names(again) == ["callback-received"] * 3


def test_a_receiver_failure_keeps_the_reconciled_delivery_for_replay(
    app: Flask, sender: Sender, clock: Clock, vendor: FakeVendor, api: CallbotAPI
) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="t-1"), 200, 0)
    vendor.book.record_task(task_payload(taskStatus=3))
    clock.now += 5

    def crm_down(sender: Any, **kwargs: Any) -> None:
        raise ConnectionError("CRM down")

    signals.task_completed.connect(crm_down, app, weak=False)
    try:
        [finding] = reconcile(app, api).findings
    finally:
        signals.task_completed.disconnect(crm_down, app)
    assert finding.result == "receiver failed"
    assert get_store(app).failed_request_ids() == [finding.request_id]
    # The next run finds nothing new (the state was applied); the replay re-sends the signals.
    assert reconcile(app, api).findings == []


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"busy": 10}, "no success after 2 attempt(s); last: retCode 7"),
        ({"http_errors": 10, "http_status": 502}, "last: HTTP 502"),
        ({"forged": 1}, "the answer's signature is refused"),
        ({"slow": 10, "delay": 1.0}, "last: ReadTimeout"),
    ],
)
def test_vendor_errors_leave_everything_untouched(
    app: Flask,
    sender: Sender,
    clock: Clock,
    vendor: FakeVendor,
    api_url: str,
    fault: dict[str, Any],
    expected: str,
) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="t-1"), 200, 0)
    vendor.book.record_task(task_payload(taskStatus=3))
    for name, value in fault.items():
        setattr(vendor.faults, name, value)
    with (
        CallbotAPI(
            api_url,
            uuid=UUID,
            secret_key=SECRET,
            clock=clock,
            sleep=lambda _: None,
            max_retries=1,
            timeout=0.3,
        ) as api,
        record_signals(sender=app) as sent,
    ):
        report = reconcile(app, api)
    assert report.findings == []
    [error] = report.errors
    assert error.startswith("crm-campaign-42: ") and expected in error, error
    assert SECRET not in error
    assert sent == []
    assert get_store(app).get_task("T100").status is TaskStatus.IN_PROGRESS


def test_an_order_listing_failure_leaves_that_task_whole(
    app: Flask, sender: Sender, clock: Clock, vendor: FakeVendor, api_url: str
) -> None:
    """The task's own difference is not applied either when its orders could not be read."""
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="t-1"), 200, 0)
    vendor.book.record_task(task_payload(taskStatus=3))
    vendor.book.record_number(order_call_payload(orderID="o1"))
    api = CallbotAPI(api_url, uuid=UUID, secret_key=SECRET, clock=clock, max_retries=0)
    vendor.faults.http_errors, vendor.faults.http_status = 0, 500
    original = vendor.faults.take

    def fail_after_list_task(name: str) -> bool:  # listTask answers; every later call fails
        return (name == "http_errors" and vendor.calls["listTask"] > 0) or original(name)

    vendor.faults.take = fail_after_list_task  # type: ignore[method-assign]
    with api, record_signals(sender=app) as sent:
        report = reconcile(app, api, orders=True)
    assert report.findings == [] and sent == []
    assert "HTTP 500" in report.errors[0]
    assert get_store(app).get_task("T100").status is TaskStatus.IN_PROGRESS


def test_vendor_data_the_schema_refuses_leaves_the_task_whole(
    app: Flask, sender: Sender, clock: Clock, vendor: FakeVendor, api: CallbotAPI
) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="t-1"), 200, 0)
    vendor.book.record_task(task_payload(taskStatus=3))
    bad = order_call_payload(orderID="o1")
    bad["callInfoDetail"]["callStatus"] = "answered"  # not an integer
    vendor.book.record_number(bad)
    clock.now += 5
    with record_signals(sender=app) as sent:
        report = reconcile(app, api, orders=True)
    assert report.findings == [] and sent == []
    [error] = report.errors
    assert "the vendor's data is refused: invalid field(s): callInfoDetail.callStatus" in error
    assert get_store(app).get_task("T100").status is TaskStatus.IN_PROGRESS


# -- A lossy campaign, repaired ------------------------------------------------------------------


def lossy_campaign(app: Flask, url: str, clock: Clock, *, drop: float, seed: int) -> Campaign:
    campaign = build_campaign(orders=40, seed=seed, drop=drop, duplicates=0.05, reorder=True)
    summary = run_campaign(campaign, url, secret_key=SECRET, uuid=UUID, clock=clock, concurrency=4)
    assert summary.ok, summary.report()
    return campaign


def test_a_campaign_with_30_percent_lost_is_repaired(
    app: Flask, live_url: str, clock: Clock, vendor: FakeVendor, api: CallbotAPI
) -> None:
    with record_signals(sender=app) as live:
        campaign = lossy_campaign(app, live_url, clock, drop=0.3, seed=31)
    lost = [d for d in campaign.deliveries if d.lost]
    assert len(lost) == round(0.3 * len(campaign.genuine))
    vendor_book(campaign, vendor.book)
    store = get_store(app)
    assert differences(store, vendor.book, campaign.user_task_id) != []
    clock.now += 120
    with record_signals(sender=app) as repaired:
        report = reconcile(app, api, user_task_ids=[campaign.user_task_id], orders=True)
    assert report.errors == []
    assert differences(store, vendor.book, campaign.user_task_id) == []
    assert all(f.result == "recorded" for f in report.findings)
    everything = live + repaired
    orders_signalled = Counter(
        s.kwargs["event"].order_id for s in everything if s.name == "order-received"
    )
    assert orders_signalled == Counter(f"order-{n:05d}" for n in range(1, 41))  # each once
    calls_signalled = Counter(
        s.kwargs["event"].call.call_id for s in everything if s.name == "call-received"
    )
    assert set(calls_signalled.values()) == {1} and len(calls_signalled) == campaign.calls
    # Task transitions form one unbroken chain ending where the vendor is.
    chain = [
        (s.kwargs["previous"], s.kwargs["event"].status)
        for s in everything
        if s.name == "task-status-changed"
    ]
    assert chain[-1][1] is TaskStatus.COMPLETED
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(chain))

    # Late copies of every lost callback now arrive, as the vendor signed them (their own
    # createTs, as run_campaign stamped them): recorded, but no domain signal again.
    client = Sender(app.test_client(), clock)
    with record_signals(sender=app) as late:
        for delivery in lost:
            stamped = NOW - campaign.span + delivery.at
            reply = client.post(
                delivery.kind.value,
                delivery.body,
                request_id=delivery.request_id,
                create_ts=stamped,
            )
            assert_reply(reply, 200, 0)
        again = reconcile(app, api, user_task_ids=[campaign.user_task_id], orders=True)
        assert again.findings == []
    assert domain_signals(late) == []
    assert differences(store, vendor.book, campaign.user_task_id) == []


def test_report_as_json(
    app: Flask, sender: Sender, clock: Clock, vendor: FakeVendor, api: CallbotAPI
) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="t-1"), 200, 0)
    vendor.book.record_task(task_payload(taskStatus=5))
    clock.now += 5
    data = reconcile(app, api).as_dict()
    assert data["tasks_checked"] == 1 and data["errors"] == []
    [finding] = data["findings"]
    assert finding["change"] == "IN_PROGRESS -> PAUSED" and finding["kind"] == "task"


def test_the_apps_settings_build_the_client(make_app: Any, api_url: str) -> None:
    app = make_app(CALLBOT_API_BASE_URL=api_url, CALLBOT_API_TIMEOUT=3)
    with api_client(app) as client:
        assert client.base_url == api_url
        assert client.uuid == UUID and SECRET not in repr(client)
        assert isinstance(VendorBook(), VendorBook)


# -- The command, the beat task, the doctor -----------------------------------------------------


def cli(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["callbot", *args])


@pytest.fixture
def api_app(make_app: Any, api_url: str) -> Flask:
    """An app whose CALLBOT_API_BASE_URL is the fake vendor's."""
    return make_app(CALLBOT_API_BASE_URL=api_url, CALLBOT_API_MAX_RETRIES=0)


def test_the_reconcile_command(api_app: Flask, clock: Clock, vendor: FakeVendor) -> None:
    sender = Sender(api_app.test_client(), clock)
    for number in range(3):
        payload = task_payload(taskID=f"T{number}", userTaskID=f"u{number}", taskStatus=2)
        assert_reply(sender.post("task", payload, request_id=f"r{number}"), 200, 0)
        vendor.book.record_task({**payload, "taskStatus": 3 if number else 2})
    clock.now += 10
    dry = cli(api_app, "reconcile", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would record" in dry.output
    assert dry.output.endswith(
        "checked 3 task(s), 0 order(s), 0 call(s): 2 difference(s) found, 0 error(s)\n"
    )
    result = cli(api_app, "reconcile", "--since", "1h")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the progress bar goes to stderr
    assert lines[0].split() == ["KIND", "USER", "TASK", "ORDER", "CALL", "CHANGE", "RESULT"]
    assert "u1" in lines[1] and "IN_PROGRESS -> COMPLETED  recorded" in lines[1]
    assert (
        lines[-1]
        == "checked 3 task(s), 0 order(s), 0 call(s): 2 difference(s) recorded, 0 error(s)"
    )
    again = cli(api_app, "reconcile", "--json")
    assert json.loads(again.stdout)["findings"] == []
    assert json.loads(again.stdout)["tasks_checked"] == 1  # only u0 is unfinished now


def test_the_reconcile_command_fails_on_vendor_errors(
    api_app: Flask, clock: Clock, vendor: FakeVendor
) -> None:
    vendor.faults.http_errors = 5
    result = cli(api_app, "reconcile", "u1", "u2")
    assert result.exit_code == 1
    assert "error: u1: callbot API /callcentre/api/v3/listTask: no success after 1 attempt(s)" in (
        result.output
    )
    assert SECRET not in result.output


def test_the_beat_task_reconciles_the_lookback(
    database_url: str,
    tmp_path: Any,
    api_url: str,
    clock: Clock,
    vendor: FakeVendor,
    request: pytest.FixtureRequest,
) -> None:
    app = Flask("beat", instance_path=str(tmp_path / "instance"))
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET,
        CALLBOT_UUID=UUID,
        CALLBOT_DATABASE_URL=database_url,
        CALLBOT_API_BASE_URL=api_url,
        CALLBOT_DISPATCH="celery",
        CALLBOT_RECONCILE_LOOKBACK=3600,
    )
    celery = Celery("beat-test", broker="memory://")
    app.extensions["celery"] = celery
    app.register_blueprint(create_blueprint(clock=clock))
    request.addfinalizer(get_state(app).store.dispose)
    sender = Sender(app.test_client(), clock)
    for number, age in enumerate((7200, 60)):
        payload = task_payload(taskID=f"T{number}", userTaskID=f"u{number}", taskStatus=2)
        assert_reply(sender.post("task", payload, request_id=f"r{number}"), 200, 0)
        vendor.book.record_task({**payload, "taskStatus": 3})
        clock.now += age
    counts = celery.tasks[RECONCILE_TASK].apply(kwargs={"orders": True}).get()
    assert counts == {"tasks_checked": 1, "differences": 1, "errors": 0}  # u0 is too old
    queued = get_store(app).list_deliveries(outcome=DeliveryState.QUEUED)
    [queued] = [d for d in queued if d.source == "reconcile"]
    assert queued.request_id.startswith(REQUEST_ID_PREFIX) and queued.enqueued_at is not None
    assert queued.source == "reconcile"


def test_doctor_pings_the_vendor(api_app: Flask, clock: Clock, vendor: FakeVendor) -> None:
    result = cli(api_app, "doctor")
    assert "OK      vendor API: http://127.0.0.1:" in result.output
    assert "credentials accepted" in result.output
    assert "OK      vendor clock: the vendor's clock is 0.5 s ahead of ours" in result.output
    vendor.clock = lambda: clock.now + 45  # inside the 60 s window, but off
    assert (
        "WARN    vendor clock: the vendor's clock is 45.5 s ahead" in cli(api_app, "doctor").output
    )
    vendor.clock = lambda: clock.now + 120
    late = cli(api_app, "doctor")
    assert "PROBLEM vendor clock" in late.output and late.exit_code == 1
    assert "vendor API" not in cli(api_app, "doctor", "--no-ping").output


def test_doctor_reports_refused_credentials_and_an_unreachable_api(
    make_app: Any, api_url: str
) -> None:
    wrong = make_app(CALLBOT_API_BASE_URL=api_url, CALLBOT_API_SECRET_KEY="not-the-key")
    result = cli(wrong, "doctor")
    assert "PROBLEM vendor API" in result.output and "refused our credentials" in result.output
    assert "not-the-key" not in result.output
    closed = make_app(CALLBOT_API_BASE_URL=f"http://127.0.0.1:{free_port()}")
    assert "unreachable" in cli(closed, "doctor").output
