"""The callbot tables under Alembic: the branch reproduces the schema, takes over databases made
before it with their data, races safely, prints offline SQL, leaves the schema to a host that
asks, and rides a host's Flask-Migrate (run for real in a temporary host app)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask

from flask_callbot import create_blueprint
from flask_callbot.migrations import VERSIONS_LOCATION, include_name
from flask_callbot.state import get_state
from flask_callbot.store import HEAD_REVISION, SCHEMA_VERSION, Store, metadata
from flask_callbot.store.migrate import history
from flask_callbot.testing import task_payload

from support import SECRET, UUID, Clock, Sender, assert_reply, order_call_payload

ROOT = Path(__file__).resolve().parent.parent
TABLES = sorted(metadata.tables)


def run(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["callbot", *args])


def differences(engine: sa.Engine) -> list[Any]:
    """What Alembic's autogenerate sees between the database and the package's tables."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"include_name": lambda name, type_, parents: type_ != "table" or name in TABLES},
        )
        return list(compare_metadata(context, metadata))


def contents(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            name: sorted(conn.execute(table.select()).all(), key=repr)
            for name, table in metadata.tables.items()
        }


def version_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.text("SELECT version_num FROM callbot_alembic_version")).scalars()
        )


def test_the_head_revision_is_the_schema_version() -> None:
    (head,) = [info for info in history() if info.is_head]
    assert head.revision == HEAD_REVISION == f"callbot_{SCHEMA_VERSION:04d}"
    assert Path(VERSIONS_LOCATION, "callbot_0003_tables.py").is_file()


def test_the_branch_reproduces_the_tables(app: Flask) -> None:
    store = get_state(app).store
    store.create_schema()
    assert differences(store.engine) == []
    assert version_rows(store.engine) == [HEAD_REVISION]
    assert store.peek_schema_revision() == HEAD_REVISION


def test_a_database_made_before_alembic_is_taken_over_untouched(
    make_app: Callable[..., Flask], database_url: str, clock: Clock
) -> None:
    """Tables as flask-callbot 0.1 made them (``create_all``, then version 3 recorded in its own
    table), served with the schema left to the host, hold data; the upgrade keeps every row."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.exec_driver_sql(
            "CREATE TABLE callbot_schema_version (version INTEGER NOT NULL PRIMARY KEY, "
            "applied_at TIMESTAMP NOT NULL)"
        )
        conn.execute(
            sa.text("INSERT INTO callbot_schema_version VALUES (3, :at)"),
            {"at": "2026-01-01 00:00:00"},
        )
    app = make_app(CALLBOT_MANAGE_SCHEMA=False)
    sender = Sender(app.test_client(), clock)
    assert_reply(sender.post("task", task_payload(), request_id="t-1"), 200, 0)
    assert_reply(sender.post("call", order_call_payload(), request_id="c-1"), 200, 0)
    before = contents(engine)
    assert sum(map(len, before.values())) >= 4
    assert "schema version 3 (made before Alembic" in run(app, "db", "current").output
    result = run(app, "db", "upgrade")
    assert result.output == f"callbot schema version 3 ({HEAD_REVISION})\n", result.output
    assert contents(engine) == before
    assert not sa.inspect(engine).has_table("callbot_schema_version")
    assert version_rows(engine) == [HEAD_REVISION]
    assert differences(engine) == []
    engine.dispose()


def test_the_schema_left_to_the_host(
    make_app: Callable[..., Flask], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """``CALLBOT_MANAGE_SCHEMA = False``: nothing is created; registration and doctor name the
    command; callbacks are refused as the store being unavailable (retried) until it is run."""
    with caplog.at_level(logging.WARNING, logger="flask_callbot"):
        app = make_app(CALLBOT_MANAGE_SCHEMA=False)
    assert "the callbot tables do not exist: run `flask callbot db upgrade`" in caplog.text
    doctor = run(app, "doctor")
    assert "PROBLEM store:" in doctor.output and "flask callbot db upgrade" in doctor.output
    sender = Sender(app.test_client(), clock)
    assert_reply(sender.post("task", task_payload(), request_id="t-1"), 503, 7)
    assert get_state(app).store.peek_schema_version() is None
    assert run(app, "db", "upgrade").exit_code == 0
    assert_reply(sender.post("task", task_payload(), request_id="t-1"), 200, 0)
    assert f"({HEAD_REVISION}, head)" in run(app, "db", "current").output


def test_an_older_database_is_reported_when_not_managed(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    store = get_state(app).store
    store.create_schema()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE callbot_deliveries DROP COLUMN source")
        conn.exec_driver_sql("UPDATE callbot_alembic_version SET version_num = 'callbot_0002'")
    with caplog.at_level(logging.WARNING, logger="flask_callbot"):
        unmanaged = make_app(CALLBOT_MANAGE_SCHEMA=False)
    expected = "at schema version 2, this flask_callbot needs 3: run `flask callbot db upgrade`"
    assert expected in caplog.text
    assert expected in run(unmanaged, "doctor").output


def test_offline_sql_creates_the_tables(app: Flask, database_url: str) -> None:
    result = run(app, "db", "upgrade", "--sql")
    assert result.exit_code == 0, result.output
    sql = result.output
    assert "CREATE TABLE callbot_deliveries" in sql
    assert f"VALUES ('{HEAD_REVISION}')" in sql
    store = get_state(app).store
    assert store.peek_schema_version() is None  # printing changed nothing
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:  # what a DBA would run
        for statement in sql.split(";\n"):
            statement = statement.strip()
            if statement and statement not in ("BEGIN", "COMMIT"):
                conn.exec_driver_sql(statement)
    assert differences(engine) == []
    assert store.peek_schema_revision() == HEAD_REVISION
    engine.dispose()
    up_to_date = run(app, "db", "upgrade", "--sql", f"{HEAD_REVISION}:callbot@head").output
    assert "CREATE TABLE" not in up_to_date


def test_the_host_engine_is_used_as_it_is(tmp_path: Path, database_url: str, clock: Clock) -> None:
    """``CALLBOT_ENGINE``: one pool, the host's; its connections keep their own transaction
    behaviour (no SQLite tuning), and disposing of the store leaves the engine to the host."""
    engine = sa.create_engine(database_url)
    app = Flask("host", instance_path=str(tmp_path / "instance"))
    app.config.update(CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID, CALLBOT_ENGINE=lambda: engine)
    app.register_blueprint(create_blueprint(clock=clock))
    store = get_state(app).store
    assert store.engine is engine
    assert_reply(Sender(app.test_client(), clock).post("task", task_payload()), 200, 0)
    with engine.connect() as conn:  # the host's own transaction still rolls back
        conn.execute(sa.text("DELETE FROM callbot_deliveries"))
        conn.rollback()
        assert conn.execute(sa.text("SELECT count(*) FROM callbot_deliveries")).scalar() == 1
    store.dispose()
    assert engine.pool.checkedin() >= 1  # not disposed
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_a_host_engine_and_a_url_conflict(tmp_path: Path) -> None:
    from flask_callbot import ConfigurationError

    app = Flask("host", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET,
        CALLBOT_UUID=UUID,
        CALLBOT_ENGINE=sa.create_engine("sqlite://"),
        CALLBOT_DATABASE_URL="sqlite://",
    )
    with pytest.raises(ConfigurationError, match="CALLBOT_DATABASE_URL would be ignored"):
        app.register_blueprint(create_blueprint())


RACER = """
import sys, time, os
from flask import Flask
from flask_callbot import create_blueprint
from flask_callbot.state import get_state
app = Flask("racer")
app.config.update(CALLBOT_SECRET_KEY="s", CALLBOT_UUID="u", CALLBOT_DATABASE_URL=sys.argv[1])
app.register_blueprint(create_blueprint())
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
get_state(app).store.create_schema()
print(get_state(app).store.peek_schema_revision())
"""


@pytest.mark.skipif(
    not os.environ.get("CALLBOT_TEST_MULTIPROCESS"),
    reason="set CALLBOT_TEST_MULTIPROCESS=1 to run the multi-process tests",
)
def test_processes_racing_to_create_the_tables(tmp_path: Path, database_url: str) -> None:
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", RACER, database_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    time.sleep(2)  # every racer imported and registered
    go.touch()
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        assert out.strip() == HEAD_REVISION
    engine = sa.create_engine(database_url)
    assert version_rows(engine) == [HEAD_REVISION]
    assert differences(engine) == []
    engine.dispose()


HOST_APP = """
import os
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


class Customer(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80))
    if os.environ.get("HOST_STAGE") == "2":
        phone = db.Column(db.String(40))


app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["HOST_DATABASE_URL"]
db.init_app(app)
migrate = Migrate(app, db)
if os.environ.get("HOST_STAGE"):
    from flask_callbot import create_blueprint
    from flask_callbot.migrations import add_version_location, include_name

    migrate = Migrate(app, db, include_name=include_name)
    migrate.configure(add_version_location)
    app.config.update(
        CALLBOT_SECRET_KEY="s" * 32,
        CALLBOT_UUID="host-uuid",
        CALLBOT_MANAGE_SCHEMA=False,
        CALLBOT_ENGINE=lambda: db.engine,
    )
    app.register_blueprint(create_blueprint(), url_prefix="/hooks")
"""


def test_the_flask_migrate_recipe(tmp_path: Path, database_url: str) -> None:
    """A host app with its own Flask-Migrate history adds flask_callbot: its Alembic carries the
    callbot branch, its autogenerate never proposes to drop or alter the callbot tables."""
    (tmp_path / "host.py").write_text(HOST_APP)
    env = {**os.environ, "HOST_DATABASE_URL": database_url, "PYTHONPATH": str(tmp_path)}

    def flask_db(*args: str, stage: str = "") -> str:
        result = subprocess.run(  # noqa: S603 - our own interpreter
            [sys.executable, "-m", "flask", "--app", "host", "db", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, "HOST_STAGE": stage},
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    flask_db("init")
    flask_db("migrate", "-m", "customers")
    flask_db("upgrade")
    # flask_callbot ran standalone first: its tables exist, with data.
    standalone = Store(database_url)
    standalone.create_schema()
    with standalone.engine.begin() as conn:
        conn.execute(metadata.tables["callbot_tasks"].insert().values(task_id="kept"))
    standalone.dispose()
    # Then the host's Alembic takes the branch: a second head, merged into its history.
    assert HEAD_REVISION in flask_db("heads", stage="1")
    flask_db("merge", "heads", "-m", "callbot", stage="1")
    flask_db("upgrade", stage="1")
    engine = sa.create_engine(database_url)
    assert differences(engine) == []
    assert version_rows(engine) == [HEAD_REVISION]
    assert contents(engine)["callbot_tasks"][0].task_id == "kept"
    # The host's next model change: autogenerate sees it, and nothing of flask_callbot's.
    flask_db("migrate", "-m", "phones", stage="2")
    (script,) = list((tmp_path / "migrations" / "versions").glob("*phones.py"))
    text = script.read_text()
    assert "add_column(sa.Column('phone'" in text
    assert "callbot" not in text
    flask_db("upgrade", stage="2")
    assert "phone" in {c["name"] for c in sa.inspect(engine).get_columns("customer")}
    assert sa.inspect(engine).has_table("callbot_deliveries")
    engine.dispose()


def test_autogenerate_without_the_helper_would_drop_the_tables(app: Flask) -> None:
    """What :func:`include_name` prevents (so the recipe's check above can fail)."""
    store = get_state(app).store
    store.create_schema()
    with store.engine.connect() as conn:
        bare = compare_metadata(MigrationContext.configure(conn), sa.MetaData())
        helped = compare_metadata(
            MigrationContext.configure(conn, opts={"include_name": include_name}), sa.MetaData()
        )
    assert {diff[1].name for diff in bare if diff[0] == "remove_table"} >= set(TABLES)
    assert helped == []


def test_a_store_on_a_fresh_database_needs_no_command(database_url: str) -> None:
    store = Store(database_url)
    try:
        assert store.get_schema_version() == SCHEMA_VERSION
        assert store.list_tasks() == []
    finally:
        store.dispose()
