"""``flask callbot doctor``: the configuration checklist, on real stores and clocks."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from celery import Celery
from click.testing import Result
from flask import Flask

from flask_callbot.diagnostics import Step, StepStatus, check_configuration, check_dispatch
from flask_callbot.state import get_state
from flask_callbot.store import SCHEMA_VERSION

from support import NOW, SECRET, Clock

REDIS_URL = os.environ.get("CALLBOT_TEST_REDIS_URL")


def doctor(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["callbot", "doctor", *args])


def use_the_real_clock(app: Flask) -> None:
    """As in production (the fixture's app runs on the test's clock); the state is frozen, so
    it is replaced, as a registration with ``create_blueprint(clock=time.time)`` would make it."""
    app.extensions["callbot"] = dataclasses.replace(get_state(app), clock=time.time)


def statuses(result: Result) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in result.output.splitlines()[:-1]:
        status, rest = line.split(None, 1)
        found.setdefault(rest.split(":")[0], []).append(status)
    return found


def test_a_sound_configuration(app: Flask) -> None:
    use_the_real_clock(app)
    result = doctor(app)
    assert result.exit_code == 0, result.output
    on_a_file = get_state(app).store.db.sqlite_file is not None  # its free space is reported
    assert statuses(result) == {
        "secret key": ["OK"],
        "uuid": ["OK"],
        "algorithm": ["OK", "OK"],
        "store": ["OK"],
        **({"disk": ["OK"]} if on_a_file else {}),
        "clock": ["OK"],
        "dispatch": ["OK"],
    }
    assert "OK      secret key: 32 characters (u7Mf…GSr)" in result.output
    assert "OK      dispatch: inline: receivers run in the request" in result.output
    assert "OK      algorithm: MD5 accepted and available" in result.output
    assert "tables not created yet" in result.output
    assert "window 300 s back, 60 s ahead" in result.output
    assert result.output.endswith("0 problem(s), 0 warning(s)\n")
    assert SECRET not in result.output


def test_the_store_version_is_read(app: Flask) -> None:
    assert app.test_cli_runner().invoke(args=["callbot", "init-db"]).exit_code == 0
    assert f"reachable, schema version {SCHEMA_VERSION}" in doctor(app).output
    store = get_state(app).store
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE callbot_alembic_version SET version_num = 'callbot_0099'"))
    result = doctor(app)
    assert result.exit_code == 1
    refusal = f"at schema version 99, newer than this flask_callbot ({SCHEMA_VERSION}): upgrade"
    assert refusal in result.output


def test_short_and_rotated_keys(make_app: Callable[..., Flask]) -> None:
    app = make_app(CALLBOT_SECRET_KEY=[SECRET, "tooshort-key"], CALLBOT_SIGN_ALGORITHMS="SHA256")
    result = doctor(app)
    assert result.exit_code == 0, result.output  # warnings only
    assert "OK      secret key 1 of 2: 32 characters (u7Mf…GSr)" in result.output
    assert "WARN    secret key 2 of 2: only 12 characters (toos…key)" in result.output
    assert "WARN    algorithm: MD5 is not accepted" in result.output
    assert "3 warning(s)" in result.output  # also the test's injected clock


def test_an_unreachable_store(make_app: Callable[..., Flask]) -> None:
    app = make_app(CALLBOT_DATABASE_URL="sqlite:////nonexistent-dir/sub/callbot.sqlite3")
    result = doctor(app)
    assert result.exit_code == 1
    assert "PROBLEM store: sqlite:////nonexistent-dir/sub/callbot.sqlite3 unreachable" in (
        result.output
    )
    assert "1 problem(s)" in result.output


def test_a_password_is_never_shown(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        CALLBOT_DATABASE_URL="postgresql+psycopg://callbot:hunter2secret@127.0.0.1:9/callbot",
        CALLBOT_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 2}},
    )
    result = doctor(app)
    assert result.exit_code == 1
    assert "PROBLEM store: postgresql+psycopg://callbot:***@127.0.0.1:9/callbot unreachable" in (
        result.output
    )
    assert "hunter2secret" not in result.output


def test_celery_dispatch_with_its_broker_down(make_app: Callable[..., Flask]) -> None:
    celery = Celery("down", broker="redis://:hunter2secret@127.0.0.1:1/0")
    app = make_app(CALLBOT_DISPATCH="celery", celery=celery)
    result = doctor(app)
    assert result.exit_code == 1
    assert "PROBLEM dispatch: celery: broker redis://:**@127.0.0.1:1/0 unreachable (" in (
        result.output
    )
    assert "): callbacks would be answered 503" in result.output
    assert "hunter2secret" not in result.output


@pytest.mark.skipif(not REDIS_URL, reason="set CALLBOT_TEST_REDIS_URL to run the Celery tests")
def test_celery_dispatch_with_its_broker_up(make_app: Callable[..., Flask]) -> None:
    celery = Celery("up", broker=REDIS_URL)
    app = make_app(CALLBOT_DISPATCH="celery", celery=celery)
    result = doctor(app)
    assert "OK      dispatch: celery: broker redis://" in result.output
    assert " reachable\n" in result.output
    celery.close()


def test_celery_dispatch_without_a_celery_app(app: Flask) -> None:
    """Registration refuses it; a state built another way is still reported."""
    state = get_state(app)
    settings = dataclasses.replace(state.settings, dispatch="celery")
    assert check_dispatch(settings, bound=False) == Step(
        StepStatus.PROBLEM,
        "dispatch",
        "celery, but no Celery app is bound: every callback would be answered 503",
    )


def test_the_clock(app: Flask, clock: Clock) -> None:
    injected = doctor(app)
    assert "WARN    clock: the app's clock differs from the system's by" in injected.output
    use_the_real_clock(app)
    now = int(time.time())
    assert doctor(app, "--reference", str(now + 2)).exit_code == 0
    ahead = doctor(app, "--reference", str(now + 120))
    assert ahead.exit_code == 1
    assert "PROBLEM clock: the reference" in ahead.output
    assert "ahead of the system clock: its requests fall outside the window" in ahead.output
    drifting = doctor(app, "--reference", str(now - 30))
    assert drifting.exit_code == 0
    assert "WARN    clock: the reference" in drifting.output
    assert "behind the system clock: inside the window, but keep NTP running" in drifting.output


def checks(app: Flask, **changes: object) -> list[Step]:
    state = get_state(app)
    settings = dataclasses.replace(state.settings, **changes)  # type: ignore[arg-type]
    return check_configuration(settings, state.store, now=NOW, system_now=NOW)


@pytest.mark.parametrize(
    ("changes", "status", "text"),
    [
        ({"secret_keys": (" " + SECRET,)}, StepStatus.WARN, "has spaces around it"),
    ],
)
def test_check_configuration(
    app: Flask, changes: dict[str, object], status: StepStatus, text: str
) -> None:
    found = [step for step in checks(app, **changes) if text in step.detail]
    assert [step.status for step in found] == [status]


def test_a_system_clock_in_the_past(app: Flask) -> None:
    state = get_state(app)
    steps = check_configuration(state.settings, state.store, now=86400, system_now=86400)
    assert steps[-1] == Step(
        StepStatus.PROBLEM,
        "clock",
        "the system clock says 1970-01-02 00:00:00 UTC: it is wrong (is NTP running?)",
    )
