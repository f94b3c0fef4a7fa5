"""The docs' Celery worker command, run as written against a module of the documented shape.

The worker module (``yourapp/celery_worker.py``) and the command line are read from
``docs/scaling.md``, so the documentation cannot drift from what works. ``yourapp`` itself is a
small app of the documented pattern: configured by ``from_prefixed_env()``, Celery app bound
before the blueprint.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from flask_callbot import get_store
from flask_callbot.testing import CallbotClient, task_payload

from support import SECRET, UUID

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("CALLBOT_TEST_REDIS_URL")

YOURAPP = """
import os

from celery import Celery
from flask import Flask

from flask_callbot import create_blueprint, signals


def create_app() -> Flask:
    app = Flask(__name__, instance_path=os.environ["YOURAPP_INSTANCE"])
    app.config.from_prefixed_env()
    app.config["CALLBOT_DISPATCH"] = "celery"
    celery_app = Celery(app.name)
    celery_app.config_from_object(
        {
            "broker_url": os.environ.get("YOURAPP_BROKER_URL", "redis://127.0.0.1:1/0"),
            "task_default_queue": os.environ.get("YOURAPP_QUEUE", "yourapp"),
            "broker_connection_retry_on_startup": True,
            "worker_hijack_root_logger": False,
        }
    )
    app.extensions["celery"] = celery_app
    app.register_blueprint(create_blueprint())
    signals.callback_received.connect(record, app)
    return app


def record(sender, event, **extra):
    with open(os.environ["YOURAPP_LOG"], "a") as log:
        log.write(f"{os.getpid()} {event.request_id}\\n")
"""


def guide() -> str:
    """The Celery dispatch guide, where the worker module and command are documented."""
    return (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")


def worker_module() -> str:
    """The docs' ``yourapp/celery_worker.py``, as written."""
    (block,) = re.findall(r"```python\n(# yourapp/celery_worker\.py.*?)```", guide(), re.S)
    return str(block)


def worker_command() -> list[str]:
    """The docs' worker command line (without its comment)."""
    (line,) = re.findall(r"^celery -A .*$", guide(), re.M)
    return shlex.split(line, comments=True)


@pytest.fixture
def yourapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    package = tmp_path / "src" / "yourapp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(YOURAPP)
    (package / "celery_worker.py").write_text(worker_module())
    env = {
        "PYTHONPATH": os.pathsep.join([str(package.parent), str(ROOT / "tests")]),
        "YOURAPP_INSTANCE": str(tmp_path / "instance"),
        "YOURAPP_LOG": str(tmp_path / "signals.log"),
        "YOURAPP_QUEUE": f"yourapp-{uuid.uuid4().hex[:8]}",
        # from_prefixed_env(): the FLASK_ prefix is dropped.
        "FLASK_CALLBOT_SECRET_KEY": SECRET,
        "FLASK_CALLBOT_UUID": UUID,
        "FLASK_CALLBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'callbot.sqlite3'}",
    }
    if BROKER_URL:
        env["YOURAPP_BROKER_URL"] = BROKER_URL
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(package.parent))
    yield {**os.environ, **env, "cwd": str(package.parent)}
    for name in ("yourapp", "yourapp.celery_worker"):
        sys.modules.pop(name, None)


def celery(env: dict[str, str], *args: str, **options: object) -> subprocess.Popen[bytes]:
    """``celery ARGS`` as a console would run it, from the folder holding ``yourapp``."""
    cwd = env.pop("cwd")
    return subprocess.Popen(  # noqa: S603 - our own interpreter, the docs' arguments
        [sys.executable, "-m", *args], cwd=cwd, env=env, **options
    )


def test_the_readme_documents_a_module_level_worker() -> None:
    assert worker_command() == ["celery", "-A", "yourapp.celery_worker", "worker"]
    assert 'celery_app = flask_app.extensions["celery"]' in worker_module()


def test_the_documented_worker_app_loads(yourapp: dict[str, str]) -> None:
    """``celery report`` loads the app as ``worker`` does, without needing the broker."""
    *load, _worker = worker_command()
    report = celery(yourapp, *load, "report", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = report.communicate(timeout=60)[0].decode()
    assert report.returncode == 0, output
    assert f"task_default_queue: '{yourapp['YOURAPP_QUEUE']}'" in output  # yourapp's config


@pytest.mark.skipif(not BROKER_URL, reason="set CALLBOT_TEST_REDIS_URL to run the Celery tests")
def test_the_documented_worker_processes_a_delivery(
    yourapp: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as worker_log:
        worker = celery(
            yourapp,
            *worker_command(),
            "--loglevel=INFO",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log_path.read_bytes():
            assert worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        import yourapp as web_module

        web: Flask = web_module.create_app()
        reply = CallbotClient.for_app(web).post("task", task_payload(), request_id="documented")
        assert (reply.status_code, reply.get_json()["retMsg"]) == (200, "queued")
        deadline = time.monotonic() + 30
        while (delivery := get_store(web).get_delivery("documented")).outcome != "processed":
            assert time.monotonic() < deadline, (delivery, log_path.read_text())
            time.sleep(0.1)
        (line,) = Path(yourapp["YOURAPP_LOG"]).read_text().splitlines()
        assert line == f"{worker.pid} documented"  # the worker ran the receiver
        web.extensions["callbot"].store.dispose()
        web.extensions["celery"].close()
    finally:
        worker.terminate()
        worker.wait(30)
