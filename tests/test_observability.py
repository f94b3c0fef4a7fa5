"""Observability: one structured log line per request, and the optional Prometheus metrics."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flask_callbot import ConfigurationError, create_blueprint, signals
from flask_callbot.metrics import get_registry, metrics_view
from flask_callbot.testing import task_payload

from support import NOW, SECRET, UUID, Clock, Sender, assert_reply, order_call_payload

FIELDS = {"request_id", "kind", "outcome", "reason", "http_status", "ret_code", "latency_ms"}


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if hasattr(record, "callbot")]


@pytest.fixture
def failing_progress(app: Flask) -> Iterator[None]:
    def fail(sender: Any, **extra: Any) -> None:
        raise RuntimeError("the CRM is down")

    signals.task_progress.connect(fail, app, weak=False)
    yield
    signals.task_progress.disconnect(fail, app)


def test_every_outcome_is_one_structured_line(
    app: Flask, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_callbot")
    assert_reply(sender.post("task", task_payload(taskStatus=3), request_id="new-1"), 200, 0)
    assert_reply(sender.post("task", task_payload(taskStatus=3), request_id="new-1"), 200, 0)
    stale = task_payload(taskStatus=2)
    assert_reply(sender.post("task", stale, request_id="old-1", create_ts=NOW - 10), 200, 0)
    assert_reply(sender.post("task", task_payload(), headers={"sign": "0" * 32}), 401, 6)
    assert_reply(sender.post("order", b"[]", request_id="bad-body"), 400, 3)
    records = lines(caplog)
    assert [r.callbot["outcome"] for r in records] == [  # type: ignore[attr-defined]
        "accepted",
        "duplicate",
        "stale",
        "rejected",
        "rejected",
    ]
    for record in records:
        fields = record.callbot  # type: ignore[attr-defined]
        assert set(fields) >= FIELDS
        assert isinstance(fields["latency_ms"], float) and fields["latency_ms"] >= 0
        assert record.getMessage().startswith(
            f"callbot request_id={fields['request_id']} kind={fields['kind']} "
            f"outcome={fields['outcome']} http_status={fields['http_status']} "
            f"ret_code={fields['ret_code']} latency_ms="
        )
    accepted, _, _, bad_sign, bad_body = (r.callbot for r in records)  # type: ignore[attr-defined]
    assert accepted["request_id"] == "new-1" and accepted["kind"] == "task"
    assert (accepted["http_status"], accepted["ret_code"], accepted["reason"]) == (200, 0, None)
    assert (bad_sign["reason"], bad_sign["http_status"], bad_sign["ret_code"]) == (
        "bad-signature",
        401,
        6,
    )
    assert (bad_body["kind"], bad_body["reason"], bad_body["request_id"]) == (
        "order",
        "malformed-body",
        "bad-body",
    )
    assert all(r.levelno == logging.INFO for r in records)


@pytest.mark.usefixtures("failing_progress")
def test_a_receiver_failure_is_a_warning_line_without_its_message(
    sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_callbot")
    assert_reply(sender.post("task", task_payload(), request_id="fails"), 500, 5001)
    (record,) = lines(caplog)
    assert record.levelno == logging.WARNING
    assert record.callbot["outcome"] == "receiver_failed"  # type: ignore[attr-defined]
    assert "the CRM is down" not in record.getMessage()  # the host's text: in its traceback


def test_a_delivery_held_by_another_worker_is_busy(
    app: Flask, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_callbot")
    again: list[Any] = []

    def redeliver(sender_app: Any, **extra: Any) -> None:  # while the first one is held
        again.append(sender.post("task", task_payload(), request_id="held"))

    signals.callback_received.connect(redeliver, app, weak=False)
    try:
        assert_reply(sender.post("task", task_payload(), request_id="held"), 200, 0)
    finally:
        signals.callback_received.disconnect(redeliver, app)
    assert_reply(again[0], 409, 7)
    busy, accepted = (r.callbot for r in lines(caplog))  # type: ignore[attr-defined]
    assert (busy["outcome"], busy["http_status"], busy["ret_code"]) == ("busy", 409, 7)
    assert accepted["outcome"] == "accepted"


def test_queue_unavailable_is_its_own_outcome(
    make_app: Callable[..., Flask], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = Celery("unreachable", broker="redis://127.0.0.1:1/0")  # nothing can be enqueued
    app = make_app(CALLBOT_DISPATCH="celery", celery=unreachable)
    caplog.set_level(logging.DEBUG, logger="flask_callbot")
    assert_reply(Sender(app.test_client(), clock).post("task", task_payload()), 503, 7)
    (record,) = lines(caplog)
    assert record.callbot["outcome"] == "queue_unavailable"  # type: ignore[attr-defined]


def test_an_unreachable_store_is_its_own_outcome(
    tmp_path: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask("unreachable", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET,
        CALLBOT_UUID=UUID,
        CALLBOT_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none",
        CALLBOT_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 1}},
    )
    app.register_blueprint(create_blueprint(clock=clock))
    caplog.set_level(logging.DEBUG, logger="flask_callbot")
    assert_reply(Sender(app.test_client(), clock).post("task", task_payload()), 503, 7)
    (record,) = lines(caplog)
    assert record.callbot["outcome"] == "store_unavailable"  # type: ignore[attr-defined]
    app.extensions["callbot"].store.dispose()


def scrape(app: Flask) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_outcomes_lag_latency_and_failures(
    make_app: Callable[..., Flask], clock: Clock
) -> None:
    app = make_app(CALLBOT_METRICS=True)
    app.add_url_rule("/metrics", view_func=metrics_view)
    sender = Sender(app.test_client(), clock)

    def fail(sender: Any, **extra: Any) -> None:
        raise RuntimeError("down")

    assert_reply(sender.post("task", task_payload(), create_ts=NOW - 4), 200, 0)
    assert_reply(sender.post("order", task_payload()), 400, 2)
    assert_reply(sender.post("call", task_payload(), headers={"uuid": "other"}), 401, 6002)
    signals.order_received.connect(fail, app, weak=False)
    try:
        assert_reply(sender.post("order", order_call_payload(), create_ts=NOW - 30), 500, 5001)
    finally:
        signals.order_received.disconnect(fail, app)

    samples = scrape(app)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("callbot_deliveries_total", kind="task", outcome="accepted") == 1
    assert value("callbot_deliveries_total", kind="order", outcome="rejected") == 1
    assert value("callbot_deliveries_total", kind="call", outcome="rejected") == 1
    assert value("callbot_deliveries_total", kind="order", outcome="receiver_failed") == 1
    assert value("callbot_handling_seconds_count", kind="task") == 1
    assert value("callbot_handling_seconds_count", kind="order") == 2
    # Lag: authentic requests only (the foreign uuid never was); now minus createTs.
    assert value("callbot_delivery_lag_seconds_sum", kind="task") == 4
    assert value("callbot_delivery_lag_seconds_sum", kind="order") == 30  # 0 s + 30 s
    assert value("callbot_delivery_lag_seconds_count", kind="order") == 2
    assert ("callbot_delivery_lag_seconds_count", (("kind", "call"),)) not in samples
    assert value("callbot_failed_deliveries") == 1


def test_each_app_has_its_own_registry(make_app: Callable[..., Flask]) -> None:
    first, second = make_app(CALLBOT_METRICS=True), make_app(CALLBOT_METRICS=True)
    assert get_registry(first) is not get_registry(second)
    with first.app_context():
        assert get_registry() is get_registry(first)


def test_a_shared_registry_is_used_once(make_app: Callable[..., Flask]) -> None:
    registry = CollectorRegistry()
    app = make_app(CALLBOT_METRICS=True, CALLBOT_METRICS_REGISTRY=registry)
    assert get_registry(app) is registry
    with pytest.raises(ConfigurationError, match="already holds flask_callbot's metrics"):
        make_app(CALLBOT_METRICS=True, CALLBOT_METRICS_REGISTRY=registry)


def test_metrics_configuration_errors(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="CALLBOT_METRICS must be True or False"):
        make_app(CALLBOT_METRICS="yes")
    with pytest.raises(ConfigurationError, match="CALLBOT_METRICS_REGISTRY must be"):
        make_app(CALLBOT_METRICS=True, CALLBOT_METRICS_REGISTRY="default")
    app = make_app()
    with pytest.raises(ConfigurationError, match="metrics are off"):
        get_registry(app)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'flask-callbot\[metrics\]'"):
        make_app(CALLBOT_METRICS=True)


def test_prometheus_client_is_not_imported_unless_metrics_are_on(tmp_path: Any) -> None:
    script = f"""
import sys
from flask import Flask
from flask_callbot import create_blueprint
from flask_callbot.testing import CallbotClient, task_payload
app = Flask("quiet", instance_path={str(tmp_path)!r})
app.config.update(CALLBOT_SECRET_KEY={SECRET!r}, CALLBOT_UUID={UUID!r},
                  CALLBOT_DATABASE_URL="sqlite://")
app.register_blueprint(create_blueprint())
assert CallbotClient.for_app(app).post("task", task_payload()).status_code == 200
assert "prometheus_client" not in sys.modules, "imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)  # noqa: S603
