"""Fixtures: a real app, a real test client, a real store (SQLite; PostgreSQL when asked)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_callbot import create_blueprint
from flask_callbot.testing import SentSignal

from support import POSTGRES_URL, SECRET, UUID, Clock, Sender, postgres_schema, serve

#: pytester runs small user test suites against the pytest plugin (tests/test_pytest_fixtures.py).
pytest_plugins = ["pytester"]


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Every store-backed test runs on SQLite, and on PostgreSQL when CALLBOT_TEST_POSTGRES_URL
    names a server: each test gets a schema of its own there, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'callbot.sqlite3'}"
        return
    if not POSTGRES_URL:
        pytest.skip("set CALLBOT_TEST_POSTGRES_URL to run the PostgreSQL tests")
    with postgres_schema() as url:
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_app(tmp_path: Any, clock: Clock, database_url: str) -> Iterator[Callable[..., Flask]]:
    """Build apps on one store (a second app on the same store is a restart)."""
    apps: list[Flask] = []

    def make(*, celery: Any = None, **config: Any) -> Flask:
        """``celery``: a Celery app, bound as the Flask docs do (``app.extensions["celery"]``)."""
        app = Flask("callbot_test", instance_path=str(tmp_path / "instance"))
        app.config.update(
            CALLBOT_SECRET_KEY=SECRET,
            CALLBOT_UUID=UUID,
            CALLBOT_DATABASE_URL=database_url,
        )
        app.config.update(config)
        if celery is not None:
            app.extensions["celery"] = celery
        app.register_blueprint(create_blueprint(clock=clock))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["callbot"].store.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def sender(app: Flask, clock: Clock) -> Sender:
    return Sender(app.test_client(), clock)


@pytest.fixture
def sent(callbot_signals: list[SentSignal]) -> list[SentSignal]:
    """Every flask_callbot signal the app sends during the test, in order: the pytest plugin's
    ``callbot_signals``, by a shorter name."""
    return callbot_signals


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    """``app`` served over real HTTP on a loopback port, for the commands that post to a URL."""
    with serve(app) as url:
        yield url
