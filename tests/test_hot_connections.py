"""The hot path's connections (``flask_callbot.store.connections`` and ``.writer``).

SQLite: a file store writes on one connection per process, which the writers' turn grants;
threads take turns on it and leave no descriptor behind, a transaction cut short leaves
nothing, a broken connection is replaced, dispose closes it; processes opening a new file at
once all open it. PostgreSQL: the connection of the
last transaction is kept checked out for the next one (one, counted by the pool); cut while
idle, it is found dead and replaced before use. Both: a forked child writes on connections of
its own and never touches its parent's.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_callbot import StoreUnavailable, create_blueprint, get_store
from flask_callbot.state import get_state
from flask_callbot.testing import task_payload

from support import (
    POSTGRES_URL,
    SECRET,
    UUID,
    Clock,
    CuttableLink,
    Sender,
    assert_reply,
    run_script,
)
from support import postgres_schema as fresh_schema

#: The kept connection is pinged before use once idle this long (engine._PING_AFTER_IDLE).
PING_AFTER_IDLE = 1.0

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/self/fd (Linux)"
)
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="set CALLBOT_TEST_POSTGRES_URL to run the PostgreSQL tests"
)


def open_descriptors() -> int:
    gc.collect()  # what earlier tests dropped is closed first
    return len(os.listdir("/proc/self/fd"))


def build(url: str, clock: Clock, instance: Path) -> Flask:
    app = Flask("hot_connections", instance_path=str(instance))
    app.config.update(CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID, CALLBOT_DATABASE_URL=url)
    app.register_blueprint(create_blueprint(clock=clock))
    return app


@pytest.fixture
def file_app(tmp_path: Path, clock: Clock) -> Iterator[Flask]:
    app = build(f"sqlite:///{tmp_path / 'callbot.sqlite3'}", clock, tmp_path)
    yield app
    get_state(app).store.dispose()


def post_tasks(app: Flask, clock: Clock, prefix: str, count: int) -> list[int]:
    sender = Sender(app.test_client(), clock)
    payloads = (task_payload(taskID=f"T{n % 3}") for n in range(count))
    return [
        sender.post("task", payload, request_id=f"{prefix}-{n}").status_code
        for n, payload in enumerate(payloads)
    ]


def task_ids(app: Flask) -> list[str]:
    with get_state(app).store.engine.connect() as conn:
        return list(conn.scalars(sa.text("SELECT task_id FROM callbot_tasks ORDER BY task_id")))


def all_processed_once(app: Flask, count: int) -> None:
    deliveries = get_store(app).list_deliveries(limit=None)
    assert len(deliveries) == count
    assert {delivery.outcome.value for delivery in deliveries} == {"processed"}
    assert {delivery.attempts for delivery in deliveries} == {1}


@needs_proc
def test_sqlite_threads_write_in_turn_on_one_connection_and_leave_no_descriptor_behind(
    file_app: Flask, clock: Clock
) -> None:
    assert post_tasks(file_app, clock, "first", 1) == [200]  # the writer and its lock are open
    before = open_descriptors()
    replies: list[int] = []

    def post(name: str) -> None:
        replies.extend(post_tasks(file_app, clock, name, 10))

    for wave in range(3):  # short-lived threads, as a thread-per-request server makes
        threads = [threading.Thread(target=post, args=(f"{wave}.{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert replies == [200] * 240
    assert open_descriptors() <= before  # no lock file nor connection per thread
    all_processed_once(file_app, 241)


def test_sqlite_a_transaction_cut_short_leaves_nothing_and_the_next_one_writes(
    file_app: Flask, clock: Clock
) -> None:
    db = get_state(file_app).store.db
    with pytest.raises(KeyboardInterrupt), db.writing_on_driver() as transaction:  # noqa: PT012
        transaction.run("INSERT INTO callbot_tasks (task_id) VALUES ('half-done')")
        raise KeyboardInterrupt
    assert task_ids(file_app) == []
    assert post_tasks(file_app, clock, "next", 2) == [200, 200]
    assert task_ids(file_app) == ["T0", "T1"]


def test_sqlite_a_writer_connection_that_breaks_is_replaced(file_app: Flask, clock: Clock) -> None:
    assert post_tasks(file_app, clock, "before", 1) == [200]
    db = get_state(file_app).store.db
    with (  # noqa: PT012 - the failure is the transaction's, at its second statement
        pytest.raises(StoreUnavailable, match="connection was lost"),
        db.writing_on_driver() as transaction,
    ):
        transaction.connection.close()  # the connection dies under the transaction
        transaction.run("SELECT 1")
    assert post_tasks(file_app, clock, "after", 2) == [200, 200]
    all_processed_once(file_app, 3)


@needs_proc
def test_sqlite_dispose_closes_the_writer_connection_and_the_lock_file(
    tmp_path: Path, clock: Clock
) -> None:
    before = open_descriptors()
    app = build(f"sqlite:///{tmp_path / 'callbot.sqlite3'}", clock, tmp_path)
    assert post_tasks(app, clock, "one", 3) == [200] * 3
    assert open_descriptors() > before
    get_state(app).store.dispose()
    assert open_descriptors() == before
    response = Sender(app.test_client(), clock).post("task", task_payload(), request_id="again")
    assert_reply(response, 200, 0)  # a store disposed of opens what it needs again
    get_state(app).store.dispose()


#: Six processes open the same new SQLite file at the same moment, twenty times over; each
#: prints what opening it came to.
OPENING_AT_ONCE = """
import multiprocessing, os, sys, tempfile, time
from flask_callbot.store.engine import create_engine

def open_store(url, start, results):
    while time.time() < start:
        pass
    try:
        engine = create_engine(url, {})
        engine.raw_connection().close()
        engine.dispose()
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))

context = multiprocessing.get_context("fork")
for attempt in range(20):
    url = f"sqlite:///{os.path.join(sys.argv[1], f'new-{attempt}.sqlite3')}"
    results, start = context.Queue(), time.time() + 0.2
    openers = [context.Process(target=open_store, args=(url, start, results)) for _ in range(6)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join()
    for _ in openers:
        print(results.get())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sqlite_processes_opening_a_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    """Switching a new file to WAL, SQLite refuses all but one of the processes racing for it
    at once ("database is locked", without waiting): the others try again (gunicorn's workers
    on their first requests used to answer some of them 503)."""
    assert run_script(OPENING_AT_ONCE, str(tmp_path)).split() == ["ok"] * 120
    for attempt in range(20):
        with contextlib.closing(sqlite3.connect(tmp_path / f"new-{attempt}.sqlite3")) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.fixture
def linked_postgres(tmp_path: Path, clock: Clock) -> Iterator[tuple[Flask, CuttableLink]]:
    """An app on a fresh PostgreSQL schema, reached through a TCP relay the test can cut."""
    with fresh_schema() as url:
        parsed = sa.make_url(url)
        link = CuttableLink(parsed.port or 5432)
        link.up()
        linked = parsed.set(port=link.port).render_as_string(hide_password=False)
        app = build(linked, clock, tmp_path)
        try:
            yield app, link
        finally:
            get_state(app).store.dispose()
            link.down()


@needs_postgres
def test_postgres_keeps_one_connection_checked_out_between_deliveries(
    linked_postgres: tuple[Flask, CuttableLink], clock: Clock
) -> None:
    app, _ = linked_postgres
    pool = get_state(app).store.engine.pool
    assert post_tasks(app, clock, "one", 20) == [200] * 20
    assert pool.checkedout() == 1  # type: ignore[attr-defined]  # QueuePool's count
    replies: list[int] = []

    def post(name: str) -> None:
        replies.extend(post_tasks(app, clock, name, 10))

    threads = [threading.Thread(target=post, args=(f"thread{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replies == [200] * 60
    assert pool.checkedout() == 1  # type: ignore[attr-defined]  # the others went back
    all_processed_once(app, 80)
    get_state(app).store.dispose()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


@needs_postgres
def test_postgres_a_kept_connection_cut_while_idle_is_replaced_before_use(
    linked_postgres: tuple[Flask, CuttableLink], clock: Clock
) -> None:
    app, link = linked_postgres
    assert post_tasks(app, clock, "before", 2) == [200, 200]
    link.down()  # every connection through the relay is cut, the kept one too
    link.up()
    time.sleep(PING_AFTER_IDLE + 0.2)
    assert post_tasks(app, clock, "after", 3) == [200] * 3  # pinged, found dead, replaced
    all_processed_once(app, 5)


@needs_postgres
def test_postgres_a_kept_connection_cut_just_after_use_fails_one_request_unacknowledged(
    linked_postgres: tuple[Flask, CuttableLink], clock: Clock
) -> None:
    """Used within the last second, the kept connection is not pinged (as the pool's are
    not): its death costs one 503, nothing is acknowledged, and the vendor's retry lands."""
    app, link = linked_postgres
    assert post_tasks(app, clock, "before", 1) == [200]
    link.down()
    link.up()
    sender = Sender(app.test_client(), clock)
    assert_reply(sender.post("task", task_payload(), request_id="cut"), 503, 7)
    assert_reply(sender.post("task", task_payload(), request_id="cut"), 200, 0)
    all_processed_once(app, 2)


#: A parent writes (its hot-path connection open), forks; the child writes on connections of
#: its own while the parent goes on, then exits normally (its exit handlers run); the parent
#: writes on after it.
FORKING = """
import json, os, sys
from flask import Flask
from flask_callbot import create_blueprint, get_store
from flask_callbot.state import get_state
from flask_callbot.testing import CallbotClient, task_payload

app = Flask("forking", instance_path=sys.argv[2])
app.config.update(CALLBOT_SECRET_KEY="s", CALLBOT_UUID="u", CALLBOT_DATABASE_URL=sys.argv[1])
app.register_blueprint(create_blueprint())
client = CallbotClient.for_app(app)

def send(prefix, count):
    return [
        client.post("task", task_payload(taskID=f"T{n % 4}"), request_id=f"{prefix}-{n}")
        .status_code
        for n in range(count)
    ]

replies = send("parent-before", 5)
child = os.fork()
if child == 0:
    sys.exit(0 if send("child", 40) == [200] * 40 else 1)
replies += send("parent-during", 40)
_, status = os.waitpid(child, 0)
replies += send("parent-after", 5)
store = get_store(app)
engine = get_state(app).store.engine
intact = "ok"
if engine.dialect.name == "sqlite":
    with engine.connect() as conn:
        intact = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
print(json.dumps({
    "child_exit": os.waitstatus_to_exitcode(status),
    "replies": replies,
    "outcomes": sorted({d.outcome.value for d in store.list_deliveries(limit=None)}),
    "deliveries": len(store.list_deliveries(limit=None)),
    "intact": intact,
}))
get_state(app).store.dispose()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_on_its_own_connections_and_leaves_the_parents_alone(
    database_url: str, tmp_path: Path
) -> None:
    assert json.loads(run_script(FORKING, database_url, str(tmp_path))) == {
        "child_exit": 0,
        "replies": [200] * 50,
        "outcomes": ["processed"],
        "deliveries": 90,
        "intact": "ok",
    }
