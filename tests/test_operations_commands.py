"""The operations commands under ``flask callbot``, run with Flask's CLI runner on a real store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask

from flask_callbot import StoreUnavailable, TaskStatus, get_store, signals
from flask_callbot.state import get_state
from flask_callbot.store import Store
from flask_callbot.testing import SentSignal, record_signals, task_payload

from support import NOW, Clock, Sender, assert_reply, names, order_call_payload


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["callbot", *args])


@pytest.fixture
def broken(app: Flask) -> Any:
    """A task_started receiver that raises until ``broken.fixed = True``."""

    class Broken:
        def __init__(self) -> None:
            self.fixed = False
            self.calls: list[Any] = []

        def __call__(self, sender: Any, **kwargs: Any) -> None:
            self.calls.append(kwargs["previous"])
            if not self.fixed:
                raise ConnectionError("CRM unreachable")

    receiver = Broken()
    signals.task_started.connect(receiver, app, weak=False)
    yield receiver
    signals.task_started.disconnect(receiver, app)


def seed(sender: Sender, clock: Clock) -> None:
    sender.post("task", task_payload(taskStatus=1), request_id="t-1", create_ts=NOW - 100)
    clock.now = NOW + 3600
    sender.post("task", task_payload(taskStatus=5), request_id="t-2", create_ts=NOW + 3600)
    sender.post("task", task_payload(taskStatus=2), request_id="t-stale", create_ts=NOW + 3500)
    sender.post("order", order_call_payload(), request_id="o-1", create_ts=NOW + 3600)
    sender.post("task", task_payload(taskID="T200", taskStatus=3), request_id="t-3")


def test_events_lists_newest_first_with_transitions(
    app: Flask, sender: Sender, clock: Clock
) -> None:
    seed(sender, clock)
    result = run(app, "events")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "RECEIVED", "REQUEST", "ID", "KIND", "TASK", "ORDER", "OUTCOME", "TRIES", "CHANGE", "ERROR"
    ]  # fmt: skip
    assert [line.split()[2] for line in lines[1:]] == ["t-3", "o-1", "t-stale", "t-2", "t-1"]
    assert "new->COMPLETED" in lines[1]
    assert "order-0001" in lines[2]
    assert "stale" in lines[3]
    assert "PENDING->PAUSED" in lines[4]
    assert "new->PENDING" in lines[5]
    assert lines[5].startswith("2027-01-15 08:00:00")  # NOW, by the app's clock, in UTC


def test_events_filters(app: Flask, sender: Sender, clock: Clock, broken: Any) -> None:
    seed(sender, clock)
    sender.post("task", task_payload(taskID="T300", taskStatus=2), request_id="t-bad")

    def ids(*args: str) -> list[str]:
        result = run(app, "events", *args)
        assert result.exit_code == 0, result.output
        return [line.split()[2] for line in result.output.splitlines()[1:]]

    assert ids("--outcome", "failed") == ["t-bad"]
    assert ids("--task", "T200") == ["t-3"]
    assert ids("--kind", "order") == ["o-1"]
    assert ids("--since", "30m") == ["t-bad", "t-3", "o-1", "t-stale", "t-2"]
    assert ids("--until", "2027-01-15T08:30:00") == ["t-1"]
    assert ids("--since", "2027-01-15T10:00:00+01:00", "--limit", "2") == ["t-bad", "t-3"]
    assert "CRM unreachable" in run(app, "events", "--outcome", "failed").output
    assert run(app, "events", "--kind", "sms").exit_code == 2
    bad = run(app, "events", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "neither an ISO date/time nor a duration" in bad.output


def test_events_when_empty(app: Flask) -> None:
    assert run(app, "events").output == "(none)\n"


def test_show_prints_headers_body_outcome_and_error(
    app: Flask, sender: Sender, broken: Any
) -> None:
    sender.post("call", order_call_payload(), request_id="c-1", create_ts=NOW)
    sender.post("task", task_payload(taskStatus=2), request_id="t-bad", create_ts=NOW)
    result = run(app, "show", "c-1")
    assert result.exit_code == 0, result.output
    assert "kind:         call" in result.output
    assert "outcome:      processed" in result.output
    assert "requestID: c-1" in result.output
    assert "createTs: 1800000000" in result.output
    assert '"smsContent": "您好，感谢您的接听！"' in result.output  # readable, not escaped
    failed = run(app, "show", "t-bad").output
    assert "outcome:      failed" in failed
    assert "change:       new->IN_PROGRESS" in failed
    assert "task-started: ConnectionError: CRM unreachable" in failed
    missing = run(app, "show", "nope")
    assert missing.exit_code == 1
    assert "no delivery with requestID nope" in missing.output


def test_replay_one_sends_the_stored_transition_again(
    app: Flask, sender: Sender, clock: Clock, broken: Any, sent: list[SentSignal]
) -> None:
    sender.post("task", task_payload(taskStatus=1), request_id="t-1", create_ts=NOW)
    assert_reply(sender.post("task", task_payload(taskStatus=2), request_id="t-2"), 500, 5001)
    sender.post("task", task_payload(taskStatus=5), request_id="t-3", create_ts=NOW + 1)
    broken.fixed = True
    sent.clear()
    result = run(app, "replay", "t-2")
    assert result.exit_code == 0, result.output
    assert "t-2: processed" in result.output
    assert names(sent) == [
        "callback-received",
        "task-status-changed",
        "task-started",
        "task-progress",
    ]
    assert sent[2].kwargs["previous"] is TaskStatus.PENDING
    delivery = get_store(app).get_delivery("t-2")
    assert (delivery.outcome, delivery.attempts, delivery.error) == ("processed", 2, None)
    assert get_store(app).get_task("T100").status is TaskStatus.PAUSED  # state is not re-applied


def test_replay_failed_reports_each(app: Flask, sender: Sender, broken: Any) -> None:
    for number in range(3):
        sender.post(
            "task", task_payload(taskID=f"T{number}", taskStatus=2), request_id=f"f-{number}"
        )
    sender.post("task", task_payload(taskID="ok", taskStatus=1), request_id="fine")
    still_broken = run(app, "replay", "--failed")
    assert still_broken.exit_code == 1
    assert "f-0: failed: task-started: ConnectionError: CRM unreachable" in still_broken.output
    assert "0 processed, 3 not" in still_broken.output
    assert "replaying" in still_broken.stderr  # the progress bar
    broken.fixed = True
    result = run(app, "replay", "--failed")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "f-0: processed",
        "f-1: processed",
        "f-2: processed",
        "3 processed, 0 not",
    ]
    assert run(app, "replay", "--failed").output == "nothing to replay\n"
    assert get_store(app).get_delivery("f-1").attempts == 3


def test_replay_skips_unknown_and_in_progress(app: Flask, sender: Sender, clock: Clock) -> None:
    # A delivery whose worker is still on it (recorded, not finished).
    entered: list[str] = []

    def hold(sender: Any, **kwargs: Any) -> None:
        entered.append(kwargs["event"].request_id)
        result = run(app, "replay", "held", "nope")
        assert result.exit_code == 1
        assert "held: skipped: requestID held is being processed right now" in result.output
        assert "nope: skipped: no delivery with requestID nope" in result.output

    signals.callback_received.connect(hold, app, weak=False)
    try:
        assert_reply(sender.post("task", task_payload(), request_id="held"), 200, 0)
    finally:
        signals.callback_received.disconnect(hold, app)
    assert entered == ["held"]


def test_replay_needs_ids_or_failed(app: Flask) -> None:
    assert run(app, "replay").exit_code == 2
    assert run(app, "replay", "x", "--failed").exit_code == 2


def test_tasks_table(app: Flask, sender: Sender, clock: Clock) -> None:
    seed(sender, clock)
    sender.post("task", task_payload(taskID="T400", taskStatus=9, taskStat=None))
    result = run(app, "tasks")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["TASK", "USER", "TASK", "STATUS", "FINISHED", "ANSWERED", "UPDATED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"T100", "T200", "T400"}
    assert rows["T100"][1:5] == ["crm-campaign-42", "PAUSED", "5/10", "50%"]
    assert rows["T200"][2] == "COMPLETED"
    assert rows["T400"][2] == "9"
    assert run(app, "tasks", "--limit", "1").output.count("\n") == 2


def test_prune_keeps_failed_unless_asked(
    app: Flask, sender: Sender, clock: Clock, broken: Any
) -> None:
    sender.post("task", task_payload(taskID="A", taskStatus=1), request_id="old-ok")
    sender.post("task", task_payload(taskID="B", taskStatus=2), request_id="old-failed")
    clock.now = NOW + 40 * 86400
    sender.post("task", task_payload(taskID="A", taskStatus=3), request_id="new-ok")
    result = run(app, "prune", "--older-than", "30d")
    assert result.exit_code == 0, result.output
    assert "deleted 1 deliveries" in result.stdout
    assert "pruning" in result.stderr
    store = get_store(app)
    assert store.get_delivery("old-ok") is None
    assert store.get_delivery("old-failed") is not None
    assert store.get_delivery("new-ok") is not None
    assert store.get_task("A").status is TaskStatus.COMPLETED  # tasks are untouched
    assert (
        "deleted 1 deliveries" in run(app, "prune", "--older-than", "4w", "--include-failed").output
    )
    assert store.get_delivery("old-failed") is None
    bad = run(app, "prune", "--older-than", "a month")
    assert bad.exit_code == 2
    assert "not a duration" in bad.output
    assert run(app, "prune").exit_code == 2


def test_prune_in_batches(app: Flask, sender: Sender, clock: Clock) -> None:
    for number in range(5):
        sender.post("order", order_call_payload(orderID=f"o{number}"), request_id=f"o-{number}")
    store = get_state(app).store
    cutoff = datetime.fromtimestamp(NOW + 1, UTC)
    assert store.count_prunable(before=cutoff) == 5
    assert list(store.prune(before=cutoff, batch_size=2)) == [2, 2, 1]
    assert store.count_prunable(before=cutoff) == 0


def test_init_db_reports_the_schema_version(app: Flask) -> None:
    result = run(app, "init-db")
    assert result.exit_code == 0, result.output
    assert result.output == "callbot schema version 3\n"
    assert run(app, "init-db").output == "callbot schema version 3\n"


def _downgrade_to(store: Store, version: int) -> None:
    """Make the tables look as schema ``version`` wrote them (the columns and tables it lacked)."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE callbot_calls")
        conn.exec_driver_sql("DROP INDEX ix_callbot_tasks_user_task_id")
        conn.exec_driver_sql("ALTER TABLE callbot_deliveries DROP COLUMN source")
        conn.exec_driver_sql("ALTER TABLE callbot_orders DROP COLUMN order_request_id")
        if version < 2:
            conn.exec_driver_sql("ALTER TABLE callbot_deliveries DROP COLUMN enqueued_at")
        _as_made_before_alembic(conn, version)


def _as_made_before_alembic(conn: sa.Connection, version: int) -> None:
    """The version table of flask-callbot 0.1 in place of Alembic's, as that version wrote it."""
    conn.exec_driver_sql("DROP TABLE callbot_alembic_version")
    conn.exec_driver_sql(
        "CREATE TABLE callbot_schema_version (version INTEGER NOT NULL PRIMARY KEY, "
        "applied_at TIMESTAMP NOT NULL)"
    )
    conn.execute(
        sa.text("INSERT INTO callbot_schema_version VALUES (:v, :at)"),
        {"v": version, "at": "2026-01-01 00:00:00"},
    )


def _reopen(store: Store) -> Store:
    return type(store)(str(store.engine.url.render_as_string(hide_password=False)))


def test_init_db_upgrades_version_1_tables(app: Flask, sender: Sender) -> None:
    """Tables written by schema version 1 (no enqueued_at) are upgraded in place, data kept."""
    sender.post("task", task_payload(), request_id="kept")
    store = get_state(app).store
    _downgrade_to(store, 1)
    assert store.get_schema_version() == 1
    fresh = _reopen(store)
    try:
        result = run(app, "init-db")
        assert result.output == "callbot schema version 3\n", result.exception
        assert store.get_delivery("kept").enqueued_at is None
        assert fresh.get_schema_version() == 3
    finally:
        fresh.dispose()


def test_version_2_tables_learn_the_calls_already_signalled(app: Flask, sender: Sender) -> None:
    """Schema 3 tracks each call's first report; the upgrade fills it from the deliveries kept,
    so a call signalled before the upgrade is not news again afterwards."""
    first = order_call_payload(orderID="o1")
    first["callInfoDetail"]["callID"] = "call-1"
    assert_reply(sender.post("call", first, request_id="c-1"), 200, 0)
    assert_reply(sender.post("order", first, request_id="o-1"), 200, 0)
    store = get_state(app).store
    _downgrade_to(store, 2)
    fresh = _reopen(store)
    try:
        assert run(app, "init-db").output == "callbot schema version 3\n"
        assert fresh.reported("T100") == ({"o1"}, {("o1", "call-1")})
        assert fresh.get_task_by_user_task_id("no-such-task") is None
        with record_signals(sender=app) as sent:
            assert_reply(sender.post("call", first, request_id="c-1-again"), 200, 0)
            assert_reply(sender.post("order", first, request_id="o-1-again"), 200, 0)
        assert names(sent) == ["callback-received"] * 2  # recorded, but not news
    finally:
        fresh.dispose()


def test_a_newer_schema_is_refused(app: Flask, sender: Sender) -> None:
    store = get_state(app).store
    store.create_schema()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE callbot_alembic_version SET version_num = 'callbot_0099'")
    fresh = type(store)(str(store.engine.url.render_as_string(hide_password=False)))
    try:
        with pytest.raises(StoreUnavailable, match="schema version 99, newer than"):
            fresh.create_schema()
    finally:
        fresh.dispose()
