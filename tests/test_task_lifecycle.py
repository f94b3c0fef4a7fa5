"""Task state over many deliveries: transitions, staleness, failures, redelivery, restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask

from flask_callbot import TaskStatus, signals
from flask_callbot.events import CallbackKind
from flask_callbot.schemas import build_event
from flask_callbot.store import NewDelivery
from flask_callbot.testing import SentSignal, record_signals, sign_headers, task_payload

from support import NOW, SECRET, UUID, Clock, Sender, assert_reply, names

CHANGE = "task-status-changed"


def transitions(sent: list[SentSignal]) -> list[tuple[str, Any]]:
    """(signal, previous) for the status-specific signals, in order."""
    return [
        (s.name, s.kwargs["previous"]) for s in sent if "previous" in s.kwargs and s.name != CHANGE
    ]


def test_full_lifecycle(sender: Sender, sent: list[SentSignal]) -> None:
    for offset, status in enumerate([1, 2, 5, 2, 3]):
        reply = sender.post("task", task_payload(taskStatus=status), create_ts=NOW + offset)
        assert_reply(reply, 200, 0)
    P = TaskStatus
    assert transitions(sent) == [
        ("task-pending", None),
        ("task-started", P.PENDING),
        ("task-paused", P.IN_PROGRESS),
        ("task-resumed", P.PAUSED),
        ("task-completed", P.IN_PROGRESS),
    ]
    changes = [s for s in sent if s.name == CHANGE]
    assert [c.kwargs["event"].status for c in changes] == [1, 2, 5, 2, 3]
    assert names(sent).count("task-progress") == 5
    assert names(sent).count("callback-received") == 5


def test_signal_order_within_one_delivery(sender: Sender, sent: list[SentSignal]) -> None:
    sender.post("task", task_payload(taskStatus=1))
    assert names(sent) == ["callback-received", CHANGE, "task-pending", "task-progress"]
    event = sent[0].kwargs["event"]
    assert all(s.kwargs["event"] is event for s in sent)


def test_same_status_with_new_stats_sends_progress_only(
    app: Flask, sender: Sender, sent: list[SentSignal]
) -> None:
    sender.post("task", task_payload(taskStatus=2), create_ts=NOW)
    sent.clear()
    stats = {"finishOrderCount": 9, "totalOrderCount": 10, "finishRate": 0.9}
    assert_reply(sender.post("task", task_payload(taskStat=stats), create_ts=NOW + 1), 200, 0)
    assert names(sent) == ["callback-received", "task-progress"]
    assert sent[1].kwargs["event"].stat.finish_rate == 0.9
    state = app.extensions["callbot"].store.get_task("T100")
    assert state.stats["finish_order_count"] == 9
    assert state.stats["total_call"] is None  # stats are replaced, not merged


def test_status_4_is_task_failed(sender: Sender, sent: list[SentSignal]) -> None:
    sender.post("task", task_payload(taskStatus=2), create_ts=NOW)
    sender.post("task", task_payload(taskStatus=4), create_ts=NOW + 1)
    assert transitions(sent)[-1] == ("task-failed", TaskStatus.IN_PROGRESS)


def test_unknown_status_changes_without_a_specific_signal(
    sender: Sender, sent: list[SentSignal]
) -> None:
    sender.post("task", task_payload(taskStatus=2), create_ts=NOW)
    sent.clear()
    assert_reply(sender.post("task", task_payload(taskStatus=9), create_ts=NOW + 1), 200, 0)
    assert names(sent) == ["callback-received", CHANGE, "task-progress"]
    assert sent[1].kwargs["previous"] is TaskStatus.IN_PROGRESS
    sent.clear()
    sender.post("task", task_payload(taskStatus=5), create_ts=NOW + 2)
    assert transitions(sent) == [("task-paused", 9)]


def test_tasks_are_tracked_independently(sender: Sender, sent: list[SentSignal]) -> None:
    sender.post("task", task_payload(taskID="A", taskStatus=5), create_ts=NOW)
    sender.post("task", task_payload(taskID="B", taskStatus=2), create_ts=NOW + 1)
    sender.post("task", task_payload(taskID="A", taskStatus=2), create_ts=NOW + 2)
    assert transitions(sent) == [
        ("task-paused", None),
        ("task-started", None),
        ("task-resumed", TaskStatus.PAUSED),
    ]


def test_stale_update_after_newer_changes_nothing(
    app: Flask, sender: Sender, sent: list[SentSignal]
) -> None:
    sender.post("task", task_payload(taskStatus=2), create_ts=NOW)
    sender.post("task", task_payload(taskStatus=3), create_ts=NOW + 5)
    before = app.extensions["callbot"].store.get_task("T100")
    sent.clear()
    late = task_payload(taskStatus=5, taskStat={"finishOrderCount": 1})
    assert_reply(sender.post("task", late, request_id="late", create_ts=NOW + 2), 200, 0)
    assert names(sent) == ["callback-received"]
    assert app.extensions["callbot"].store.get_task("T100") == before
    delivery = app.extensions["callbot"].store.get_delivery("late")
    assert delivery.outcome == "processed"
    assert delivery.transition.applied is False
    sent.clear()
    sender.post("task", task_payload(taskStatus=3), create_ts=NOW + 6)
    assert names(sent) == ["callback-received", "task-progress"]  # still COMPLETED


def test_same_second_updates_apply_in_arrival_order(sender: Sender, sent: list[SentSignal]) -> None:
    sender.post("task", task_payload(taskStatus=2), create_ts=NOW)
    sender.post("task", task_payload(taskStatus=5), create_ts=NOW)
    assert transitions(sent)[-1] == ("task-paused", TaskStatus.IN_PROGRESS)


def test_receiver_failure_then_redelivery_resends_the_same_transition(
    app: Flask, sender: Sender, sent: list[SentSignal]
) -> None:
    calls = []

    def flaky(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs["previous"])
        if len(calls) == 1:
            raise ConnectionError("SMS gateway timeout")

    sender.post("task", task_payload(taskStatus=1), create_ts=NOW)
    signals.task_started.connect(flaky, app, weak=False)
    try:
        first = task_payload(taskStatus=2)
        assert_reply(sender.post("task", first, request_id="x", create_ts=NOW + 1), 500, 5001)
        # The state moved on meanwhile; the failed transition must not be lost.
        sender.post("task", task_payload(taskStatus=5), create_ts=NOW + 2)
        sent.clear()
        assert_reply(sender.post("task", first, request_id="x", create_ts=NOW + 1), 200, 0)
        assert names(sent) == ["callback-received", CHANGE, "task-started", "task-progress"]
        assert sent[1].kwargs["previous"] is TaskStatus.PENDING
        assert calls == [TaskStatus.PENDING, TaskStatus.PENDING]
        delivery = app.extensions["callbot"].store.get_delivery("x")
        assert (delivery.outcome, delivery.attempts, delivery.error) == ("processed", 2, None)
        sent.clear()
        assert_reply(sender.post("task", first, request_id="x", create_ts=NOW + 1), 200, 0)
        assert sent == []
    finally:
        signals.task_started.disconnect(flaky, app)
    assert app.extensions["callbot"].store.get_task("T100").status is TaskStatus.PAUSED


def test_redelivery_may_carry_a_new_create_ts(
    app: Flask, sender: Sender, sent: list[SentSignal]
) -> None:
    def broken(sender: Any, **extra: Any) -> None:
        raise RuntimeError("down")

    signals.callback_received.connect(broken, app, weak=False)
    try:
        sender.post("task", task_payload(), request_id="again", create_ts=NOW)
    finally:
        signals.callback_received.disconnect(broken, app)
    sent.clear()
    assert_reply(
        sender.post("task", task_payload(), request_id="again", create_ts=NOW + 30), 200, 0
    )
    assert "task-started" in names(sent)


def test_request_id_reused_for_another_body_is_refused(
    app: Flask, sender: Sender, sent: list[SentSignal]
) -> None:
    sender.post("task", task_payload(taskStatus=2), request_id="once")
    sent.clear()
    reply = sender.post("task", task_payload(taskStatus=3), request_id="once")
    assert_reply(reply, 409, 4)
    assert [(s.name, s.kwargs["reason"]) for s in sent] == [
        ("callback-rejected", "request-id-reused")
    ]
    assert app.extensions["callbot"].store.get_task("T100").status is TaskStatus.IN_PROGRESS


def test_abandoned_delivery_is_taken_up_after_the_lease(
    app: Flask, sender: Sender, clock: Clock, sent: list[SentSignal]
) -> None:
    """A worker that died after recording leaves the delivery pending; a redelivery finishes it."""
    payload = task_payload(taskStatus=2)
    body = json.dumps(payload).encode()
    store = app.extensions["callbot"].store
    event = build_event(CallbackKind.TASK, payload, request_id="dead", request_ts=NOW)
    headers = sign_headers(body, secret_key=SECRET, uuid=UUID, request_id="dead", create_ts=NOW)
    delivery = NewDelivery(
        request_id="dead",
        kind=CallbackKind.TASK,
        request_ts=NOW,
        headers=headers,
        body=body,
        event=event,
    )
    store.record(delivery, now=NOW, lease=60)  # ... and the worker is killed here
    assert_reply(sender.post("task", body, request_id="dead", create_ts=NOW), 409, 7)
    assert sent == []
    clock.now = NOW + 61
    assert_reply(sender.post("task", body, request_id="dead", create_ts=NOW + 60), 200, 0)
    assert transitions(sent) == [("task-started", None)]
    assert store.get_delivery("dead").attempts == 2


def test_state_survives_a_restart(make_app: Callable[..., Flask], clock: Clock) -> None:
    first = make_app()
    Sender(first.test_client(), clock).post("task", task_payload(taskStatus=5), create_ts=NOW)
    first.extensions["callbot"].store.dispose()
    second = make_app()
    with record_signals(sender=second) as sent:
        reply = Sender(second.test_client(), clock).post(
            "task", task_payload(taskStatus=2), create_ts=NOW + 1
        )
    assert_reply(reply, 200, 0)
    assert transitions(sent) == [("task-resumed", TaskStatus.PAUSED)]


def test_request_built_like_the_vendor_python_sample(app: Flask, sent: list[SentSignal]) -> None:
    payload = task_payload()
    body = json.dumps(payload).encode()  # default separators ", " and ": ", ASCII escapes
    assert b'", "' in body
    headers = sign_headers(body, secret_key=SECRET, uuid=UUID, create_ts=NOW)
    headers["requestId"] = headers.pop("requestID")
    assert "algorithm" not in headers
    reply = app.test_client().post("/api/v3/taskCallback", data=body, headers=headers)
    assert_reply(reply, 200, 0)
    assert sent[0].kwargs["event"].request_id == headers["requestId"]


def test_compact_utf8_body_signed_with_sha256(app: Flask, sent: list[SentSignal]) -> None:
    payload = task_payload(userTaskID="双十一回访", sceneID="满意度调查<v2>&")
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert "双十一".encode() in body
    headers = sign_headers(
        body,
        secret_key=SECRET,
        uuid=UUID,
        create_ts=NOW,
        algorithm="SHA256",
        algorithm_header=True,
    )
    assert headers["algorithm"] == "SHA256" and len(headers["sign"]) == 64
    reply = app.test_client().post("/api/v3/taskCallback", data=body, headers=headers)
    assert_reply(reply, 200, 0)
    event = sent[0].kwargs["event"]
    assert (event.user_task_id, event.scene_id) == ("双十一回访", "满意度调查<v2>&")


def test_async_receivers_are_run(app: Flask, sender: Sender) -> None:
    seen = []

    async def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs["event"].task_id)

    signals.task_progress.connect(receiver, app, weak=False)
    try:
        assert_reply(sender.post("task", task_payload()), 200, 0)
    finally:
        signals.task_progress.disconnect(receiver, app)
    assert seen == ["T100"]
