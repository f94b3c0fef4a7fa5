"""The pytest plugin, as a user gets it: installed via the pytest11 entry point, used by a small
test suite of their own (run with pytester) that defines its own ``app`` fixture."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Running pytest inside pytest: flask_callbot is already imported (unrewritten) when the inner
# run marks the plugin's package for assertion rewriting. That warning is about the harness,
# not about the plugin; every other warning still fails the inner runs.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")
STRICT = ("-W", "error", "-W", "ignore::pytest.PytestAssertRewriteWarning")

ROOT = Path(__file__).resolve().parent.parent

USER_CONFTEST = """
import pytest
from flask import Flask
from flask_callbot import create_blueprint


@pytest.fixture
def app(tmp_path):
    app = Flask("user_app", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY=["u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr", "old-key-0123456789"],
        CALLBOT_UUID="Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR",
        CALLBOT_DATABASE_URL="sqlite://",
    )
    app.register_blueprint(create_blueprint(), url_prefix="/hooks")
    yield app
    app.extensions["callbot"].store.dispose()
"""

USER_TESTS = """
from flask_callbot import TaskStatus, get_store
from flask_callbot.testing import call_payload, task_payload


def test_a_task_completes(app, callbot_client, callbot_signals):
    reply = callbot_client.post("task", task_payload(taskStatus=3))
    assert reply.status_code == 200
    assert reply.get_json()["retCode"] == 0
    assert "task-completed" in [s.name for s in callbot_signals]
    assert all(s.sender is app for s in callbot_signals)
    assert get_store(app).get_task("T100").status is TaskStatus.COMPLETED


def test_a_call_is_signalled(callbot_client, callbot_signals):
    callbot_client.post("call", call_payload(), serialization="compact")
    assert [s.name for s in callbot_signals] == ["callback-received", "call-received"]
    assert callbot_signals[1].kwargs["event"].call.intent_tags[0] == "interested"


def test_signals_are_per_test(callbot_signals):
    assert callbot_signals == []


def test_a_forgery_is_refused(callbot_client, callbot_signals):
    reply = callbot_client.post("task", task_payload(), headers={"sign": "A" * 32})
    assert reply.status_code == 401
    assert [s.kwargs["reason"] for s in callbot_signals] == ["bad-signature"]
"""


def test_fixtures_work_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_receiver=USER_TESTS)
    result = pytester.runpytest(*STRICT, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_the_docs_example_runs_as_written(pytester: pytest.Pytester) -> None:
    section = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    conftest, code = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[:2]
    assert conftest.startswith("# conftest.py\n"), "the docs show the app fixture they need"
    assert "callbot_client" in code
    test_lines = [line for line in code.splitlines() if line.strip()]
    assert len(test_lines) <= 5, "the docs promise a five-line test"
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_readme=code)
    result = pytester.runpytest(*STRICT, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_fixtures_catch_a_broken_receiver(pytester: pytest.Pytester) -> None:
    """A user's test fails when their receiver breaks: the fixtures are not a rubber stamp."""
    pytester.makeconftest(
        USER_CONFTEST
        + """

from flask_callbot import signals


@pytest.fixture(autouse=True)
def crm(app):
    def push(sender, event, previous, **extra):
        raise ConnectionError("CRM down")

    signals.task_completed.connect(push, app, weak=False)
    yield
    signals.task_completed.disconnect(push, app)
"""
    )
    pytester.makepyfile(test_receiver=USER_TESTS)
    result = pytester.runpytest(*STRICT, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_a_task_completes*", "*assert 500 == 200*"])


def test_loaded_through_the_entry_point_and_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_receiver=USER_TESTS)
    shown = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    shown.stdout.fnmatch_lines(
        [
            "*fixtures defined from flask_callbot.pytest_plugin*",
            "callbot_client*",
            "callbot_signals*",
        ]
    )
    disabled = pytester.runpytest("-p", "no:flask_callbot", "-p", "no:cacheprovider")
    disabled.stdout.fnmatch_lines(["*fixture 'callbot_client' not found*"])
    assert disabled.ret == pytest.ExitCode.TESTS_FAILED


def test_nothing_is_autouse(pytester: pytest.Pytester) -> None:
    """A project without an ``app`` fixture is untouched by the plugin."""
    pytester.makepyfile(
        test_plain="""
def test_unrelated():
    assert 1 + 1 == 2
"""
    )
    plan = pytester.runpytest("--setup-plan", "-p", "no:cacheprovider")
    plan.stdout.fnmatch_lines(["*test_plain.py::test_unrelated*"])
    assert "SETUP" not in plan.stdout.str()  # no fixture at all, autouse or other
    result = pytester.runpytest(*STRICT, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
