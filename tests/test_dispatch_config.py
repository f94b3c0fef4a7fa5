"""Dispatch modes without a broker: configuration, refusal when unbound, Celery stays optional."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from flask import Flask

from flask_callbot import ConfigurationError, create_blueprint, get_store
from flask_callbot.celery_dispatch import PROCESS_TASK, SWEEP_TASK, init_celery, retry_countdown
from flask_callbot.state import get_state
from flask_callbot.testing import record_signals, task_payload

from support import Sender, assert_reply

ROOT = Path(__file__).resolve().parent.parent


def test_dispatch_must_be_inline_or_celery(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigurationError, match="CALLBOT_DISPATCH"):
        make_app(CALLBOT_DISPATCH="rq")
    with pytest.raises(ConfigurationError, match="CALLBOT_CELERY_QUEUE"):
        make_app(CALLBOT_DISPATCH="celery", CALLBOT_CELERY_QUEUE="")
    with pytest.raises(ConfigurationError, match="CALLBOT_CELERY_MAX_RETRIES"):
        make_app(CALLBOT_DISPATCH="celery", CALLBOT_CELERY_MAX_RETRIES=-1)


def unreachable_celery(name: str = "unreachable") -> Celery:
    """A Celery app whose broker refuses connections: every publish fails."""
    celery = Celery(name, broker="redis://127.0.0.1:1/0")
    celery.conf.broker_connection_timeout = 1
    return celery


def test_celery_mode_without_a_celery_app_is_refused_at_registration(
    make_app: Callable[..., Flask],
) -> None:
    """Registration refuses it: else every callback would be answered 503 until noticed."""
    with pytest.raises(ConfigurationError, match=r"no Celery app is bound: put it in app\.exten"):
        make_app(CALLBOT_DISPATCH="celery")


def test_celery_mode_without_celery_installed_names_the_extra(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "flask_callbot.celery_dispatch", raising=False)
    monkeypatch.setitem(sys.modules, "celery", None)  # as if it were not installed
    with pytest.raises(
        ConfigurationError, match=r"needs Celery: pip install 'flask-callbot\[celery"
    ):
        make_app(CALLBOT_DISPATCH="celery", celery=object())


def test_sweep_without_celery_installed_names_the_extra(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    monkeypatch.delitem(sys.modules, "flask_callbot.celery_dispatch", raising=False)
    monkeypatch.setitem(sys.modules, "celery", None)  # as if it were not installed
    result = app.test_cli_runner().invoke(args=["callbot", "sweep"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "sweep is for Celery dispatch: pip install 'flask-callbot[celery]'" in result.output


def test_sweep_needs_celery_dispatch(make_app: Callable[..., Flask]) -> None:
    result = make_app().test_cli_runner().invoke(args=["callbot", "sweep"])
    assert result.exit_code == 1
    assert 'sweep needs CALLBOT_DISPATCH = "celery" and init_celery(app)' in result.output


def test_celery_mode_with_the_broker_down_acknowledges_nothing(
    make_app: Callable[..., Flask], sender: Sender
) -> None:
    app = make_app(CALLBOT_DISPATCH="celery", celery=unreachable_celery())
    client = Sender(app.test_client(), sender.clock)
    with record_signals(sender=app) as sent:
        reply = client.post("task", task_payload(), request_id="unbound")
    assert assert_reply(reply, 503, 7)["retMsg"] == "the task queue is unavailable; retry later"
    assert sent == []
    delivery = get_store(app).get_delivery("unbound")
    assert (delivery.outcome, delivery.enqueued_at, delivery.attempts) == ("queued", None, 0)


def test_a_queued_delivery_is_taken_inline_once_dispatch_is_inline_again(
    make_app: Callable[..., Flask], sender: Sender
) -> None:
    """Switching back to inline dispatch leaves no delivery stranded in the queue state."""
    queued_app = make_app(CALLBOT_DISPATCH="celery", celery=unreachable_celery())
    Sender(queued_app.test_client(), sender.clock).post("task", task_payload(), request_id="q")
    inline_app = make_app()
    with record_signals(sender=inline_app) as sent:
        reply = Sender(inline_app.test_client(), sender.clock).post(
            "task", task_payload(), request_id="q"
        )
    assert_reply(reply, 200, 0)
    assert [s.name for s in sent][:2] == ["callback-received", "task-status-changed"]
    assert get_store(inline_app).get_delivery("q").outcome == "processed"


def test_registration_binds_the_flask_docs_celery_app(tmp_path: Path) -> None:
    app = Flask("docs_pattern", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY="secret", CALLBOT_UUID="account", CALLBOT_DISPATCH="celery"
    )
    celery = Celery(app.name, broker="redis://127.0.0.1:1/0")  # never connected here
    app.extensions["celery"] = celery
    app.register_blueprint(create_blueprint())
    assert {PROCESS_TASK, SWEEP_TASK} <= set(celery.tasks)
    assert app.extensions["callbot"].enqueue is not None
    get_state(app).store.dispose()


def test_init_celery_after_registration_gives_the_state_its_dispatcher(
    make_app: Callable[..., Flask],
) -> None:
    """Binding another Celery app to a registered app: the one change to its state, made by
    replacing it (a request already running keeps the state it began with)."""
    app = make_app(
        CALLBOT_DISPATCH="celery", celery=Celery("first", broker="redis://127.0.0.1:1/0")
    )
    before = app.extensions["callbot"]
    assert before.enqueue is not None
    celery = Celery("late", broker="redis://127.0.0.1:1/0")  # never connected here
    init_celery(app, celery)
    after = app.extensions["callbot"]
    assert {PROCESS_TASK, SWEEP_TASK} <= set(celery.tasks)
    assert after.enqueue is not None
    assert after.enqueue is not before.enqueue
    assert (after.settings, after.store, after.clock) == (
        before.settings,
        before.store,
        before.clock,
    )


def test_init_celery_needs_a_celery_app(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigurationError, match="needs a Celery app"):
        init_celery(make_app())


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    assert [retry_countdown(n, 2, 600) for n in range(10)] == [
        2, 4, 8, 16, 32, 64, 128, 256, 512, 600
    ]  # fmt: skip


def test_inline_dispatch_never_imports_celery(tmp_path: Path) -> None:
    script = f"""
import json, sys
from flask import Flask
from flask_callbot import create_blueprint
from flask_callbot.testing import sign_headers
app = Flask("inline", instance_path={str(tmp_path)!r})
app.config.update(CALLBOT_SECRET_KEY="s", CALLBOT_UUID="u", CALLBOT_DATABASE_URL="sqlite://")
app.register_blueprint(create_blueprint())
body = json.dumps({{"taskID": "t", "userTaskID": "u", "taskStatus": 1}}).encode()
reply = app.test_client().post(
    "/api/v3/taskCallback", data=body, headers=sign_headers(body, secret_key="s", uuid="u")
)
assert reply.status_code == 200, reply.get_data()
app.test_cli_runner().invoke(args=["callbot", "events"])
print(sorted(name for name in sys.modules if name.split(".")[0] in ("celery", "kombu")))
"""
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
