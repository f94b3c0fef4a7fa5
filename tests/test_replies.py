"""Every row of the reply table on all three routes: HTTP status, retCode, signals, storage."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_callbot import signals
from flask_callbot.routes import ROUTES
from flask_callbot.testing import SentSignal, record_signals, sign_headers, task_payload

from support import NOW, SECRET, UUID, Clock, Sender, assert_reply, names, payload_for, stored_count

ACCEPTED = {
    "task": ["callback-received", "task-status-changed", "task-started", "task-progress"],
    "order": ["callback-received", "order-received"],
    "call": ["callback-received", "call-received"],
}
#: Removing these from the payload leaves it without its required fields.
REQUIRED = {
    "task": (["taskID", "taskStatus"], "taskID, taskStatus"),
    "order": (["orderID", "taskID"], "orderID, taskID"),
    "call": (["orderID", "callInfoDetail"], "callInfoDetail.callID, orderID"),
}


@pytest.fixture(params=["task", "order", "call"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def rejected(sent: list[SentSignal]) -> list[tuple[str, str | None]]:
    assert names(sent) == ["callback-rejected"] * len(sent)
    return [(s.kwargs["reason"], s.kwargs["request_id"]) for s in sent]


def test_accepted(app: Flask, sender: Sender, sent: list[SentSignal], kind: str) -> None:
    body = assert_reply(sender.post(kind, payload_for(kind), request_id="r-1"), 200, 0)
    assert body["retMsg"] == "success"
    assert names(sent) == ACCEPTED[kind]
    assert sent[0].sender is app
    assert sent[0].kwargs["event"].request_id == "r-1"
    assert stored_count(app) == 1


def test_reply_ids_are_fresh(sender: Sender) -> None:
    first = sender.post("task", task_payload(), request_id="same").get_json()
    second = sender.post("task", task_payload(), request_id="same").get_json()
    assert first["responseID"] != second["responseID"]


def test_duplicate_is_acknowledged_without_signals(
    app: Flask, sender: Sender, sent: list[SentSignal], kind: str
) -> None:
    assert_reply(sender.post(kind, payload_for(kind), request_id="dup"), 200, 0)
    sent.clear()
    body = assert_reply(sender.post(kind, payload_for(kind), request_id="dup"), 200, 0)
    assert "duplicate" in body["retMsg"]
    assert sent == []
    assert stored_count(app) == 1


def test_same_request_id_while_the_first_is_processing(app: Flask, clock: Clock, kind: str) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(sender: Any, **extra: Any) -> None:
        entered.set()
        assert release.wait(10)

    replies: list[Any] = []
    signals.callback_received.connect(slow, app, weak=False)
    try:
        first = threading.Thread(
            target=lambda: replies.append(
                Sender(app.test_client(), clock).post(kind, payload_for(kind), request_id="busy")
            )
        )
        first.start()
        assert entered.wait(10)
        with record_signals(sender=app) as sent:
            second = Sender(app.test_client(), clock).post(
                kind, payload_for(kind), request_id="busy"
            )
        assert_reply(second, 409, 7)
        assert sent == []
        release.set()
        first.join(10)
    finally:
        release.set()
        signals.callback_received.disconnect(slow, app)
    assert_reply(replies[0], 200, 0)
    assert stored_count(app) == 1


def test_stale_update_is_recorded_not_applied(
    app: Flask, sender: Sender, sent: list[SentSignal]
) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=3), create_ts=NOW), 200, 0)
    sent.clear()
    body = assert_reply(sender.post("task", task_payload(taskStatus=2), create_ts=NOW - 10), 200, 0)
    assert "stale" in body["retMsg"]
    assert names(sent) == ["callback-received"]
    assert stored_count(app) == 2
    state = app.extensions["callbot"].store.get_task("T100")
    assert state.status == 3 and state.status_request_ts == NOW


@pytest.mark.parametrize("header", ["requestID", "uuid", "createTs", "sign"])
def test_missing_auth_header(
    app: Flask, sender: Sender, sent: list[SentSignal], header: str, kind: str
) -> None:
    body = json.dumps(payload_for(kind)).encode()
    headers = sign_headers(body, secret_key=SECRET, uuid=UUID, create_ts=NOW, request_id="m-1")
    del headers[header]
    reply = sender.client.post(ROUTES[kind], data=body, headers=headers)
    assert header in assert_reply(reply, 401, 6001)["retMsg"]
    expected_id = None if header == "requestID" else "m-1"
    assert rejected(sent) == [("missing-auth-header", expected_id)]
    assert stored_count(app) == 0


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"headers": {"createTs": "17e8"}}, "malformed-auth-header"),
        ({"headers": {"sign": "XYZ"}}, "malformed-auth-header"),
        ({"headers": {"algorithm": "SHA512"}}, "malformed-auth-header"),
        ({"headers": {"sign": "0" * 32}}, "bad-signature"),
        ({"secret_key": "not-the-secret"}, "bad-signature"),
        ({"create_ts": NOW - 301}, "timestamp-out-of-window"),
        ({"create_ts": NOW + 61}, "timestamp-out-of-window"),
    ],
)
def test_refused_auth(
    app: Flask,
    sender: Sender,
    sent: list[SentSignal],
    options: dict[str, Any],
    reason: str,
    kind: str,
) -> None:
    key = options.get("secret_key", SECRET)  # a client signs as one account: make one for it
    post_options = {name: value for name, value in options.items() if name != "secret_key"}
    client = Sender(sender.client, sender.clock, secret_key=key)
    assert_reply(client.post(kind, payload_for(kind), request_id="a-1", **post_options), 401, 6)
    assert rejected(sent) == [(reason, "a-1")]
    assert stored_count(app) == 0


def test_window_edges_are_accepted(sender: Sender) -> None:
    assert_reply(sender.post("task", task_payload(), create_ts=NOW - 300), 200, 0)
    assert_reply(sender.post("task", task_payload(), create_ts=NOW + 60), 200, 0)


def test_uuid_that_is_not_ours(
    app: Flask, sender: Sender, sent: list[SentSignal], kind: str
) -> None:
    someone_else = Sender(sender.client, sender.clock, uuid="SomeoneElse123")
    reply = someone_else.post(kind, payload_for(kind), request_id="u-1")
    assert_reply(reply, 401, 6002)
    assert rejected(sent) == [("unknown-account", "u-1")]
    assert stored_count(app) == 0


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe\x00", b"[1]", b'{"a": NaN}'])
def test_body_not_a_json_object(
    app: Flask, sender: Sender, sent: list[SentSignal], body: bytes, kind: str
) -> None:
    assert_reply(sender.post(kind, body, request_id="b-1"), 400, 3)
    assert rejected(sent) == [("malformed-body", "b-1")]
    assert stored_count(app) == 0


def test_required_field_missing(
    app: Flask, sender: Sender, sent: list[SentSignal], kind: str
) -> None:
    payload = payload_for(kind)
    removed, named = REQUIRED[kind]
    for field in removed:
        del payload[field]
    body = assert_reply(sender.post(kind, payload), 400, 2)
    assert body["retMsg"] == f"missing required field(s): {named}"
    assert [s.kwargs["reason"] for s in sent] == ["missing-field"]
    assert stored_count(app) == 0


def test_field_with_wrong_value(app: Flask, sender: Sender, sent: list[SentSignal]) -> None:
    reply = sender.post("task", task_payload(taskStat={"totalCall": "many"}))
    assert "taskStat.totalCall" in assert_reply(reply, 400, 4)["retMsg"]
    payload = payload_for("call")
    payload["callInfoDetail"]["intents"][1]["intentLevel"] = "high"
    reply = sender.post("call", payload)
    assert "callInfoDetail.intents.1.intentLevel" in assert_reply(reply, 400, 4)["retMsg"]
    reply = sender.post("order", payload_for("order", finish="maybe"))
    assert "finish" in assert_reply(reply, 400, 4)["retMsg"]
    assert [s.kwargs["reason"] for s in sent] == ["invalid-field"] * 3
    assert stored_count(app) == 0


def test_body_over_the_limit(make_app: Callable[..., Flask], clock: Clock, kind: str) -> None:
    app = make_app(CALLBOT_MAX_CONTENT_LENGTH=4096)
    sender = Sender(app.test_client(), clock)
    with record_signals(sender=app) as sent:
        big = payload_for(kind, padding="x" * 4096)
        assert_reply(sender.post(kind, big, request_id="big"), 413, 4)
        assert_reply(sender.post(kind, payload_for(kind)), 200, 0)
    assert rejected(sent[:1]) == [("payload-too-large", "big")]
    assert stored_count(app) == 1


def test_default_limit_is_one_mebibyte(app: Flask, sender: Sender) -> None:
    payload = task_payload(padding="")
    size = len(json.dumps(payload).encode())
    payload["padding"] = "x" * (1024 * 1024 - size)
    assert_reply(sender.post("task", payload), 200, 0)
    payload["padding"] += "x"
    assert_reply(sender.post("task", payload), 413, 4)


def test_receiver_raised(
    app: Flask,
    sender: Sender,
    sent: list[SentSignal],
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(sender: Any, **extra: Any) -> None:
        raise RuntimeError("CRM is down")

    signals.callback_received.connect(broken, app, weak=False)
    try:
        body = assert_reply(sender.post(kind, payload_for(kind), request_id="f-1"), 500, 5001)
    finally:
        signals.callback_received.disconnect(broken, app)
    # The exception's text is the host's: kept in the store and the log, never sent back.
    assert body["retMsg"] == "a receiver raised; the delivery is kept as failed"
    assert names(sent) == ACCEPTED[kind]  # the later signals were still sent
    delivery = app.extensions["callbot"].store.get_delivery("f-1")
    assert delivery.outcome == "failed"
    assert "callback-received: RuntimeError: CRM is down" in delivery.error
    logged = [r for r in caplog.records if r.exc_info and "CRM is down" in str(r.exc_info[1])]
    assert logged, "the receiver's exception is logged with its traceback"


def test_store_unreachable_then_back(
    tmp_path: Any, make_app: Callable[..., Flask], clock: Clock, kind: str
) -> None:
    folder = tmp_path / "not-yet"
    app = make_app(CALLBOT_DATABASE_URL=f"sqlite:///{folder / 'callbot.sqlite3'}")
    sender = Sender(app.test_client(), clock)
    with record_signals(sender=app) as sent:
        assert_reply(sender.post(kind, payload_for(kind), request_id="s-1"), 503, 7)
        assert sent == []
        folder.mkdir()  # the database comes back: no restart needed
        assert_reply(sender.post(kind, payload_for(kind), request_id="s-1"), 200, 0)
    assert names(sent) == ACCEPTED[kind]


def test_only_post_is_routed(sender: Sender, kind: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        assert sender.client.open(ROUTES[kind], method=method).status_code == 405


def test_a_receiver_error_with_nul_is_stored(app: Flask, sender: Sender) -> None:
    """PostgreSQL text cannot hold NUL: the failure must still be recorded, not lost."""

    def broken(sender: Any, **extra: Any) -> None:
        raise RuntimeError("gateway said \x00 and hung up")

    signals.callback_received.connect(broken, app, weak=False)
    try:
        assert_reply(sender.post("task", task_payload(), request_id="nul"), 500, 5001)
    finally:
        signals.callback_received.disconnect(broken, app)
    delivery = app.extensions["callbot"].store.get_delivery("nul")
    assert delivery.outcome == "failed"
    assert "gateway said \\0 and hung up" in delivery.error


def test_database_errors_never_show_statement_values(app: Flask) -> None:
    import sqlalchemy as sa

    store = app.extensions["callbot"].store
    store.create_schema()
    secret_value = "body-marker-7f3a"
    with pytest.raises(sa.exc.DBAPIError) as caught, store.engine.begin() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table WHERE x = :v"), {"v": secret_value})
    assert secret_value not in str(caught.value)
