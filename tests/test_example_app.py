"""The example app: refuses to start without credentials, logs each transition in one line."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from example_app import DEV_SECRET_KEY, DEV_UUID, create_app, demo
from flask_callbot.testing import task_payload

from support import SECRET, UUID, Clock, Sender, assert_reply, order_call_payload, serve


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    for key in ("CALLBOT_SECRET_KEY", "CALLBOT_UUID", "CALLBOT_EXAMPLE_DEV_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CALLBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'example.sqlite3'}")
    return monkeypatch


def test_refuses_to_start_without_credentials(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="CALLBOT_SECRET_KEY and CALLBOT_UUID"):
        create_app()
    env.setenv("CALLBOT_SECRET_KEY", SECRET)
    with pytest.raises(RuntimeError, match="CALLBOT_EXAMPLE_DEV_MODE=1"):
        create_app()


def test_dev_mode_uses_the_public_dev_credentials(env: pytest.MonkeyPatch) -> None:
    env.setenv("CALLBOT_EXAMPLE_DEV_MODE", "1")
    app = create_app()
    assert app.config["CALLBOT_SECRET_KEY"] == DEV_SECRET_KEY
    assert app.config["CALLBOT_UUID"] == DEV_UUID


def test_logs_each_transition_in_one_line(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("CALLBOT_SECRET_KEY", SECRET)
    env.setenv("CALLBOT_UUID", UUID)
    app = create_app()
    clock = Clock(time.time())  # the example app runs on real time; sign with it too
    sender = Sender(app.test_client(), clock)
    with caplog.at_level(logging.INFO, logger="example_app"):
        for offset, status in enumerate([1, 2, 5, 2, 3]):
            ts = int(clock.now) + offset - 10
            assert_reply(sender.post("task", task_payload(taskStatus=status), create_ts=ts), 200, 0)
    lines = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert lines == [
        "task T100 (crm-campaign-42) finish 50% of 10, answer 50%: (new) -> PENDING [task-pending]",
        "task T100 (crm-campaign-42) finish 50% of 10, answer 50%: "
        "PENDING -> IN_PROGRESS [task-started]",
        "task T100 (crm-campaign-42) finish 50% of 10, answer 50%: "
        "IN_PROGRESS -> PAUSED [task-paused]",
        "task T100 (crm-campaign-42) finish 50% of 10, answer 50%: "
        "PAUSED -> IN_PROGRESS [task-resumed]",
        "task T100 (crm-campaign-42) finish 50% of 10, answer 50%: "
        "IN_PROGRESS -> COMPLETED [task-completed]",
    ]
    assert sum("progress" in r.getMessage() for r in caplog.records) == 5
    assert json.dumps(task_payload()) not in caplog.text  # bodies never reach the log


def test_follow_up_on_intent_and_finished_orders(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("CALLBOT_EXAMPLE_DEV_MODE", "1")
    app = create_app({"EXAMPLE_FOLLOW_UP_INTENT": "callback"})
    sender = Sender(app.test_client(), Clock(time.time()), secret_key=DEV_SECRET_KEY, uuid=DEV_UUID)
    no_intent = order_call_payload(orderID="order-0002")
    no_intent["callInfoDetail"]["intents"] = []
    with caplog.at_level(logging.INFO, logger="example_app"):
        for kind, payload in (("call", order_call_payload()), ("call", no_intent)):
            assert_reply(sender.post(kind, payload), 200, 0)
        assert_reply(sender.post("order", order_call_payload()), 200, 0)
    messages = [r.getMessage() for r in caplog.records if r.name == "example_app"]
    assert [m for m in messages if m.startswith("follow-up")] == [
        "follow-up: order order-0001 of task T100 hit intent 'callback'; "
        "an SMS would go to *********8000"
    ]
    assert (
        "order order-0001 of task T100: finished, last call call-0001 status 1, 60s, "
        "intents interested,callback,price"
    ) in messages
    assert "8613800138000" not in caplog.text


def test_the_demo_script_posts_a_signed_callback(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("CALLBOT_EXAMPLE_DEV_MODE", "1")
    app = create_app()
    with serve(app) as base, caplog.at_level(logging.INFO, logger="example_app"):
        url = f"{base}/api/v3/taskCallback"
        assert demo.main(["demo", url]) == 0
        assert demo.main(["demo", url, "5"]) == 0
    assert capsys.readouterr().out.splitlines() == ["200 retCode 0: success"] * 2
    assert "task demo-task-1 (demo-campaign)" in caplog.text
    assert "IN_PROGRESS -> PAUSED [task-paused]" in caplog.text
    env.setenv("CALLBOT_SECRET_KEY", "not-the-dev-key")
    env.setenv("CALLBOT_UUID", DEV_UUID)
    with serve(app) as base:
        assert demo.main(["demo", f"{base}/api/v3/taskCallback"]) == 1  # refused: 401
