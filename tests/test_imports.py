"""What each use of flask_callbot imports: a receiver loads only the runtime; the simulator, the
diagnostics, the OpenAPI generator and the testing helpers load when their command or helper is
used; metrics and Celery dispatch when configured. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The modules a receiver runs on (a subpackage counts once, by its name under flask_callbot).
RUNTIME = {
    "blueprint",
    "cli",
    "config",
    "dispatch",
    "errors",
    "events",
    "ordering",
    "pipeline",
    "routes",
    "schemas",
    "signals",
    "signing",
    "state",
    "store",
    "tables",  # the operations commands' plain-text tables (stdlib only)
}
#: What the debugging commands add (``send``, ``simulate``, ``verify``, ``doctor``, ``openapi``).
TOOLS = {"cli_tools", "diagnostics", "openapi", "simulator", "testing", "vendor_api", "wire"}

SETUP = """
from flask import Flask
from flask_callbot import create_blueprint
app = Flask("imports", instance_path={instance!r})
app.config.update(CALLBOT_SECRET_KEY="s", CALLBOT_UUID="u", CALLBOT_DATABASE_URL="sqlite://")
"""
REGISTER = "app.register_blueprint(create_blueprint(clock=lambda: 1_800_000_000))\n"
RECEIVE = """
from flask_callbot.signing import compute_signature
body = b'{"taskID": "t", "userTaskID": "u", "taskStatus": 1}'
headers = {"requestID": "r1", "uuid": "u", "createTs": "1800000000"}
headers["sign"] = compute_signature("s", body, create_ts="1800000000", request_id="r1", uuid="u")
reply = app.test_client().post("/api/v3/taskCallback", data=body, headers=headers)
assert reply.status_code == 200, reply.get_data()
"""
REPORT = """
import json, sys
print(json.dumps(sorted({n.split(".")[1] for n in sys.modules if n.startswith("flask_callbot.")})))
"""


def loaded(script: str, tmp_path: Path) -> set[str]:
    """The flask_callbot modules loaded once ``script`` has run in a fresh interpreter."""
    code = SETUP.format(instance=str(tmp_path)) + script + REPORT
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_importing_the_package_loads_the_runtime_only() -> None:
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", "import flask_callbot" + REPORT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert set(json.loads(result.stdout)) == RUNTIME


def test_a_receiver_loads_the_runtime_only(tmp_path: Path) -> None:
    """Registering, receiving a callback and an operations command load nothing more."""
    operations = 'assert app.test_cli_runner().invoke(args=["callbot", "events"]).exit_code == 0\n'
    assert loaded(REGISTER + RECEIVE + operations, tmp_path) == RUNTIME


def test_the_command_group_names_the_tools_without_importing_them(tmp_path: Path) -> None:
    script = REGISTER + (
        "names = app.cli.get_command(None, 'callbot').list_commands(None)\n"
        "assert names == ['db', 'doctor', 'events', 'init-db', 'openapi', 'prune', 'reconcile',"
        " 'replay', 'send', 'show', 'simulate', 'sweep', 'tasks', 'verify'], names\n"
    )
    assert loaded(script, tmp_path) == RUNTIME


@pytest.mark.parametrize("command", ["doctor", "openapi", "--help"])
def test_a_debugging_command_loads_the_tools(command: str, tmp_path: Path) -> None:
    script = REGISTER + f"app.test_cli_runner().invoke(args=['callbot', {command!r}])\n"
    assert loaded(script, tmp_path) == RUNTIME | TOOLS


def test_the_testing_helpers_load_the_wire_format_not_the_tools(tmp_path: Path) -> None:
    assert loaded("import flask_callbot.testing\n", tmp_path) == RUNTIME | {"testing", "wire"}


def test_metrics_load_when_configured(tmp_path: Path) -> None:
    script = "app.config['CALLBOT_METRICS'] = True\n" + REGISTER + RECEIVE
    assert loaded(script, tmp_path) == RUNTIME | {"metrics"}


def test_celery_dispatch_loads_when_configured(tmp_path: Path) -> None:
    script = (
        "from celery import Celery\n"
        "app.config['CALLBOT_DISPATCH'] = 'celery'\n"
        "app.extensions['celery'] = Celery('imports', broker='redis://127.0.0.1:1/0')\n" + REGISTER
    )
    assert loaded(script, tmp_path) == RUNTIME | {"celery_dispatch"}
