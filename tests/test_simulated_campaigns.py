"""The vendor simulator: the campaign it plans, and what it finds against real receivers."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from click.testing import Result as CliResult
from flask import Flask

from flask_callbot import TaskStatus, get_store, signals
from flask_callbot.events import CallbackKind
from flask_callbot.schemas import build_event, decode_body
from flask_callbot.simulator import (
    Campaign,
    Delivery,
    Result,
    Role,
    Summary,
    Window,
    build_campaign,
    run_campaign,
)
from flask_callbot.testing import SentSignal, serialize
from flask_callbot.wire import HttpReply

from support import NOW, SECRET, UUID, Clock, serve, stored_count

TASK, ORDER, CALL = CallbackKind.TASK, CallbackKind.ORDER, CallbackKind.CALL


def statuses(deliveries: Iterable[Delivery]) -> list[int]:
    return [d.payload["taskStatus"] for d in deliveries if d.kind is TASK]


# -- The plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("orders", [1, 2, 7, 250])
def test_the_task_lives_its_whole_life(orders: int) -> None:
    campaign = build_campaign(orders=orders, seed=orders)
    task_updates = [d for d in campaign.genuine if d.kind is TASK]
    assert statuses(task_updates)[:2] == [1, 2]
    assert statuses(task_updates)[-1] == 3
    labels = [d.label for d in task_updates]
    assert labels.index("task RESUMED") == labels.index("task PAUSED") + 1
    assert labels.count("task PAUSED") == 1
    assert {d.payload["taskID"] for d in campaign.genuine} == {campaign.task_id}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_task_statistics_add_up_to_what_was_sent_before(seed: int) -> None:
    campaign = build_campaign(orders=300, seed=seed)
    finished = answered_orders = calls = answered_calls = 0
    seen_orders: Counter[str] = Counter()
    for delivery in campaign.genuine:
        payload = delivery.payload
        if delivery.kind is TASK:
            assert payload["taskStat"] == {
                "answerOrderCount": answered_orders,
                "finishOrderCount": finished,
                "totalOrderCount": 300,
                "finishRate": round(finished / 300, 2),
                "totalAnswerCall": answered_calls,
                "totalCall": calls,
                "answerRate": round(answered_calls / calls, 2) if calls else 0,
            }
            continue
        answered = payload["callInfoDetail"]["callStatus"] == 1
        if delivery.kind is CALL:
            calls += 1
            answered_calls += answered
        else:
            finished += 1
            answered_orders += answered
            seen_orders[payload["orderID"]] += 1
    assert finished == 300
    assert calls == campaign.calls
    assert 300 <= calls <= 900  # one to three attempts per order
    assert set(seen_orders.values()) == {1}  # one order callback per order
    final = campaign.genuine[-1].payload["taskStat"]
    assert (final["finishOrderCount"], final["finishRate"]) == (300, 1.0)


def test_orders_and_calls_are_consistent() -> None:
    campaign = build_campaign(orders=60, seed=5)
    attempts: dict[str, list[Delivery]] = {}
    for delivery in campaign.genuine:
        if delivery.kind is CALL:
            attempts.setdefault(delivery.payload["orderID"], []).append(delivery)
        elif delivery.kind is ORDER:
            calls = attempts[delivery.payload["orderID"]]
            last = calls[-1].payload["callInfoDetail"]
            detail = delivery.payload["callInfoDetail"]
            assert detail["callID"] == last["callID"]  # the order carries its last call
            assert "callingNumber" not in detail and "callingNumber" in last
            assert calls[-1].payload["finish"] is True
            assert all(c.payload["finish"] is False for c in calls[:-1])
            assert all(c.payload["callInfoDetail"]["callStatus"] == 2 for c in calls[:-1])
    assert len(attempts) == 60


def test_payloads_are_valid_and_realistic() -> None:
    campaign = build_campaign(orders=40, seed=9, serialization="compact")
    intents = Counter[str]()
    for delivery in campaign.genuine:
        assert delivery.body == serialize(delivery.payload, "compact")
        event = build_event(
            delivery.kind, decode_body(delivery.body), request_id="r", request_ts=NOW
        )
        if delivery.kind is not TASK:
            call = event.call  # type: ignore[union-attr]
            intents.update(call.intent_tags)
            if call.call_status == 1:
                assert call.answered_at is not None and call.call_duration > 0
                assert call.param_map["product"] == "宽带套餐"
            else:
                assert call.answered_at is None and call.intents == ()
            if "interested" in call.intent_tags:
                assert call.sms
    assert len(intents) >= 4


def test_seed_repeats_the_shape_and_run_id_the_ids() -> None:
    one = build_campaign(orders=30, seed=4, run_id="a", duplicates=0.1, reorder=True, start=NOW)
    two = build_campaign(orders=30, seed=4, run_id="a", duplicates=0.1, reorder=True, start=NOW)
    assert one == two
    fresh = build_campaign(orders=30, seed=4, duplicates=0.1, reorder=True)
    assert fresh.run_id != build_campaign(orders=30, seed=4).run_id
    assert [d.label for d in fresh.deliveries] == [d.label for d in one.deliveries]


def test_task_updates_have_distinct_creation_seconds() -> None:
    campaign = build_campaign(orders=500, seed=1, span=20)
    ats = [d.at for d in campaign.genuine]
    assert ats == sorted(ats)
    task_ats = [d.at for d in campaign.genuine if d.kind is TASK]
    assert task_ats == sorted(set(task_ats))
    assert campaign.span == ats[-1] >= 20


def test_duplicates_follow_their_original_byte_for_byte() -> None:
    campaign = build_campaign(orders=100, seed=2, duplicates=0.1)
    genuine = len(campaign.genuine)
    assert campaign.count(Role.DUPLICATE) == round(0.1 * genuine)
    for position, delivery in enumerate(campaign.deliveries):
        if delivery.role is Role.DUPLICATE:
            original = campaign.genuine[delivery.created]
            assert (delivery.request_id, delivery.body) == (original.request_id, original.body)
            assert campaign.deliveries.index(original) < position


def test_forgeries_come_just_before_the_genuine_delivery() -> None:
    campaign = build_campaign(orders=100, seed=3, bad_signatures=0.1)
    forged = [d for d in campaign.deliveries if d.role is Role.FORGED]
    assert len(forged) == round(0.1 * len(campaign.genuine))
    assert {d.forgery for d in forged} == {"wrong-key", "tampered-body"}
    for position, delivery in enumerate(campaign.deliveries):
        if delivery.role is Role.FORGED:
            after = campaign.deliveries[position + 1]
            assert after.created == delivery.created
            assert after.role in (Role.GENUINE, Role.FORGED)
            original = campaign.genuine[delivery.created]
            if delivery.forgery == "tampered-body":
                assert delivery.request_id == original.request_id
                assert delivery.body != original.body
            else:
                assert delivery.request_id != original.request_id


def test_reorder_delivers_paused_after_resumed_and_others_late() -> None:
    campaign = build_campaign(orders=100, seed=6, reorder=True)
    labels = [d.label for d in campaign.deliveries if d.kind is TASK]
    assert labels.index("task PAUSED") == labels.index("task RESUMED") + 1
    late = [d for d in campaign.deliveries if d.reordered]
    assert len(late) >= 1 + len(campaign.deliveries) // 20 - 1
    positions = {d.created: i for i, d in enumerate(campaign.deliveries)}
    assert sum(positions[d.created] > d.created for d in late) == len(late)


def test_skew_marks_a_fraction() -> None:
    assert not any(d.skewed for d in build_campaign(orders=50, seed=1).deliveries)
    everything = build_campaign(orders=50, seed=1, skew=90)
    assert all(d.skewed for d in everything.deliveries)
    some = build_campaign(orders=200, seed=1, skew=-90, skewed=0.5)
    share = sum(d.skewed for d in some.genuine) / len(some.genuine)
    assert 0.4 < share < 0.6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"orders": 0}, "at least one order"),
        ({"duplicates": 1.5}, "duplicates must be a fraction"),
        ({"bad_signatures": -0.1}, "bad_signatures must be a fraction"),
        ({"skewed": 2}, "skewed must be a fraction"),
        ({"serialization": "pretty"}, "unknown serialization"),
        ({"lines": 0}, "lines must be at least 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_campaign(**kwargs)


# -- Against a real receiver -------------------------------------------------------------------


def run(campaign: Campaign, url: str, clock: Clock, **kwargs: Any) -> Summary:
    return run_campaign(campaign, url, secret_key=SECRET, uuid=UUID, clock=clock, **kwargs)


def test_a_clean_campaign_is_accepted_and_adds_up(
    app: Flask, live_url: str, clock: Clock, sent: list[SentSignal]
) -> None:
    campaign = build_campaign(orders=40, seed=11)
    progress: list[Result] = []
    summary = run(campaign, live_url, clock, progress=progress.append)
    assert summary.ok, summary.report()
    assert summary.by_outcome() == {"200/0": len(campaign.deliveries)}
    assert len(progress) == len(summary.results) == len(campaign.deliveries)
    task = get_store(app).get_task(campaign.task_id)
    assert task.status is TaskStatus.COMPLETED
    assert (task.stats["finish_order_count"], task.stats["total_call"]) == (40, campaign.calls)
    assert stored_count(app) == len(campaign.deliveries)
    order = get_store(app).get_order(campaign.task_id, "order-00007")
    assert order.finish is True and order.last_kind == "order"
    names = [s.name for s in sent]
    for name in ("task-pending", "task-started", "task-paused", "task-resumed", "task-completed"):
        assert names.count(name) == 1, name
    assert names.count("order-received") == 40
    assert summary.report()[-1] == "every answer was as expected"


def test_faults_get_the_answers_a_correct_receiver_gives(
    app: Flask, live_url: str, clock: Clock, sent: list[SentSignal]
) -> None:
    campaign = build_campaign(orders=60, seed=12, duplicates=0.1, reorder=True, bad_signatures=0.1)
    summary = run(campaign, live_url, clock, concurrency=6)
    assert summary.ok, summary.report()
    forged = campaign.count(Role.FORGED)
    assert summary.by_outcome()["401/6"] == forged
    genuine = campaign.genuine
    assert stored_count(app) == len(genuine)  # nothing forged stored, duplicates stored once
    store = get_store(app)
    paused = next(d for d in genuine if d.label == "task PAUSED")
    assert store.get_delivery(paused.request_id).transition.applied is False  # stale
    assert store.get_task(campaign.task_id).status is TaskStatus.COMPLETED
    assert [s.kwargs["reason"] for s in sent if s.name == "callback-rejected"] == (
        ["bad-signature"] * forged
    )
    rows = {row[0] for row in summary.counts()}
    assert rows == {"genuine", "duplicate", "forged"}


@pytest.mark.parametrize(("skew", "stored"), [(400, False), (-30, True), (45, True)])
def test_skew_inside_and_outside_the_window(
    app: Flask, live_url: str, clock: Clock, skew: int, stored: bool
) -> None:
    campaign = build_campaign(orders=10, seed=13, skew=skew, span=20)
    summary = run(campaign, live_url, clock)
    assert summary.ok, summary.report()
    expected = "200/0" if stored else "401/6"
    assert summary.by_outcome() == {expected: len(campaign.deliveries)}
    assert stored_count(app) == (len(campaign.deliveries) if stored else 0)


def test_a_failing_receiver_is_flagged(app: Flask, live_url: str, clock: Clock) -> None:
    def crm_down(sender: Any, **kwargs: Any) -> None:
        raise ConnectionError("CRM down")

    signals.task_completed.connect(crm_down, app, weak=False)
    try:
        summary = run(build_campaign(orders=10, seed=14), live_url, clock)
    finally:
        signals.task_completed.disconnect(crm_down, app)
    assert not summary.ok
    [failed] = summary.unexpected
    assert (failed.delivery.label, failed.outcome) == ("task COMPLETED", "500/5001")
    report = "\n".join(summary.report())
    assert "genuine  200/0     500/5001  1      UNEXPECTED" in report
    assert "1 unexpected answer(s):" in report
    assert (
        "expected 200/0, got 500/5001: a receiver raised; the delivery is kept as failed" in report
    )
    assert "CRM down" not in report  # the receiver's text stays with the receiver


def always_ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A receiver that checks nothing: accepts everything."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json")])
    reply = {"retCode": 0, "retMsg": "ok", "responseID": "0" * 32}
    return [json.dumps(reply).encode()]


def test_a_receiver_that_accepts_forgeries_is_flagged(clock: Clock) -> None:
    campaign = build_campaign(orders=10, seed=15, bad_signatures=0.2)
    with serve(always_ok) as url:
        summary = run(campaign, url, clock)
    assert not summary.ok
    assert {r.delivery.role for r in summary.unexpected} == {Role.FORGED}
    assert len(summary.unexpected) == campaign.count(Role.FORGED)


def test_no_receiver(clock: Clock) -> None:
    campaign = build_campaign(orders=1, seed=1)
    summary = run(campaign, "http://127.0.0.1:9", clock, timeout=2)
    assert not summary.ok
    assert {r.outcome for r in summary.results} == {"no reply"}
    assert "ConnectionRefusedError" in summary.results[0].error  # type: ignore[operator]


def test_delay_paces_the_deliveries(app: Flask, live_url: str, clock: Clock) -> None:
    campaign = build_campaign(orders=3, seed=16)
    summary = run(campaign, live_url, clock, delay=0.05, concurrency=1)
    assert summary.ok
    assert summary.elapsed >= 0.05 * (len(campaign.deliveries) - 1)


def test_a_concurrent_duplicate_may_be_told_to_try_later() -> None:
    """409/7 is right for either copy only while the other copy is accepted."""
    campaign = build_campaign(orders=1, seed=1, duplicates=1.0)
    genuine = campaign.genuine[0]
    copy = next(
        d for d in campaign.deliveries if d.role is Role.DUPLICATE and d.created == genuine.created
    )
    either = frozenset({"200/0", "409/7"})

    def result(delivery: Delivery, status: int, code: int) -> Result:
        reply = HttpReply(status, code, "")
        return Result(delivery=delivery, create_ts=NOW, expected=either, reply=reply)

    def summary(*results: Result) -> Summary:
        return Summary(campaign=campaign, url="http://h", results=results, elapsed=0)

    assert summary(result(genuine, 409, 7), result(copy, 200, 0)).ok
    lost = summary(result(genuine, 409, 7), result(copy, 409, 7))
    assert [r.delivery.role for r in lost.unexpected] == [Role.GENUINE]


def test_window_defaults() -> None:
    assert Window() == Window(max_age=300, max_future_skew=60)


# -- The command -------------------------------------------------------------------------------


def simulate(app: Flask, *args: str) -> CliResult:
    return app.test_cli_runner().invoke(args=["callbot", "simulate", *args])


def test_the_command_runs_a_campaign_with_faults(app: Flask, live_url: str) -> None:
    result = simulate(
        app,
        live_url + "/api/v3/taskCallback",  # a full callback URL works too
        "--orders", "50", "--duplicates", "0.05", "--reorder", "--bad-signatures", "0.05",
        "--seed", "21", "--concurrency", "3", "--serialization", "compact",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "simulating" in result.stderr  # the progress bar
    out = result.stdout.splitlines()
    assert out[0].startswith("task sim-") and out[0].endswith(
        ": 50 orders, " + out[0].split(", ")[1]
    )
    assert f"to {live_url} in" in out[1]
    assert out[2].split() == ["ROLE", "EXPECTED", "ANSWER", "COUNT"]
    assert any(line.split()[:3] == ["forged", "401/6", "401/6"] for line in out)
    assert out[-1] == "every answer was as expected"
    task_id = out[0].split()[1].rstrip(":")
    assert get_store(app).get_task(task_id).status is TaskStatus.COMPLETED
    assert b'"taskStatus":3,' in get_store(app).list_deliveries(limit=1)[0].body  # compact


@pytest.mark.parametrize(("future_skew", "answer"), [(60, "401/6"), (300, "200/0")])
def test_the_command_reads_the_window_from_the_app(
    make_app: Callable[..., Flask], future_skew: int, answer: str
) -> None:
    app = make_app(CALLBOT_MAX_FUTURE_SKEW=future_skew)
    with serve(app) as url:
        result = simulate(app, url, "--orders", "5", "--skew", "200", "--seed", "1")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("genuine"))
    assert row.split()[1:3] == [answer, answer]


def test_the_command_exits_1_on_an_unexpected_answer(app: Flask, live_url: str) -> None:
    def crm_down(sender: Any, **kwargs: Any) -> None:
        raise ConnectionError("CRM down")

    signals.order_received.connect(crm_down, app, weak=False)
    try:
        result = simulate(app, live_url, "--orders", "5", "--seed", "2")
    finally:
        signals.order_received.disconnect(crm_down, app)
    assert result.exit_code == 1
    assert "5 unexpected answer(s):" in result.stdout
    assert "UNEXPECTED" in result.stdout


def test_the_command_uses_target_credentials(app: Flask, live_url: str) -> None:
    env = {"CALLBOT_TARGET_SECRET_KEY": "someone-elses-key-0123456"}
    result = app.test_cli_runner().invoke(
        args=["callbot", "simulate", live_url, "--orders", "2"], env=env
    )
    assert result.exit_code == 1
    assert "genuine  200/0     401/6" in result.stdout
    assert "someone-elses-key" not in result.output
