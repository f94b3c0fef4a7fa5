"""The documentation cannot rot: every Python sample in README.md and docs/ compiles, and runs
unless marked ``<!-- not run: why -->``; the configuration table matches the code's defaults;
every ``flask callbot`` command named exists; the README's test command is the one CI runs."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from flask import Flask

from flask_callbot import signals
from flask_callbot.cli import create_group
from flask_callbot.config import DEFAULTS
from flask_callbot.testing import CallbotClient, task_payload

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- not run: [^>]+ -->\n)?```(\w*)\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Sample:
    page: Path
    line: int
    language: str
    code: str
    run: bool


def samples(page: Path) -> Iterator[Sample]:
    text = page.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(2)) + 1
        yield Sample(page, line, match[2], match[3], run=match[1] is None)


def python_samples(page: Path) -> list[Sample]:
    return [sample for sample in samples(page) if sample.language == "python"]


def label(page: Path) -> str:
    return str(page.relative_to(ROOT))


class Recorder:
    """Stands for the host's own services the samples call (``crm``, ``sms``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return call


def namespace() -> dict[str, Any]:
    """What a sample may take as given: the host's app (not yet set up), its services."""
    app = Flask("docs_sample")
    app.config.update(
        CALLBOT_SECRET_KEY="docs-secret-key",
        CALLBOT_UUID="DocsAccount",
        CALLBOT_DATABASE_URL="sqlite://",
    )
    return {
        "__name__": "docs_sample",
        "app": app,
        "signals": signals,
        "crm": Recorder(),
        "sms": Recorder(),
        "celery_app": Celery("docs_sample"),
    }


def test_there_are_samples_to_check() -> None:
    assert len([s for page in PAGES for s in python_samples(page)]) >= 12


@pytest.mark.parametrize("page", PAGES, ids=label)
def test_every_python_sample_compiles(page: Path) -> None:
    for sample in python_samples(page):
        compile(sample.code, f"{label(page)}:{sample.line}", "exec", ast.PyCF_ONLY_AST)


@pytest.mark.parametrize("page", PAGES, ids=label)
def test_every_python_sample_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's samples run in order in one namespace, as a reader would paste them."""
    monkeypatch.chdir(tmp_path)  # an app's default instance folder
    scope = namespace()
    for sample in python_samples(page):
        if sample.run:
            code = sample.code.replace('"..."', '"placeholder-value"')  # the credentials' blanks
            exec(compile(code, f"{label(page)}:{sample.line}", "exec"), scope)  # noqa: S102


@pytest.mark.parametrize("page", [ROOT / "README.md", ROOT / "docs" / "quickstart.md"], ids=label)
def test_the_minimal_integration_receives_a_completed_task(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    [sample] = [s for s in python_samples(page) if "create_blueprint()" in s.code]
    scope = namespace()
    exec(sample.code.replace('"..."', '"placeholder-value"'), scope)  # noqa: S102
    app = scope["app"]
    assert sorted(str(rule) for rule in app.url_map.iter_rules() if "/hooks/" in str(rule)) == [
        "/hooks/api/v3/callCallback",
        "/hooks/api/v3/orderCallback",
        "/hooks/api/v3/taskCallback",
    ]
    reply = CallbotClient.for_app(app).post("task", task_payload(taskStatus=3))
    assert reply.get_json()["retCode"] == 0
    [(method, args, _)] = scope["crm"].calls
    assert (method, args[0]) == ("mark_campaign_done", task_payload()["userTaskID"])


def configuration_table() -> dict[str, str]:
    """``CALLBOT_*`` key -> its documented default, from docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(CALLBOT_\w+)` \| (.*?) \|", text, re.M)
    assert len(rows) == len(dict(rows)), "a key is documented twice"
    return dict(rows)


def test_the_configuration_table_lists_every_key_with_its_default() -> None:
    documented = configuration_table()
    assert sorted(documented) == sorted(DEFAULTS)
    for key, cell in documented.items():
        if key in ("CALLBOT_SECRET_KEY", "CALLBOT_UUID"):
            assert (cell, DEFAULTS[key]) == ("required", None)
        elif key == "CALLBOT_DATABASE_URL":  # computed at registration from the instance path
            assert (cell, DEFAULTS[key]) == (
                "`sqlite:///<app.instance_path>/callbot.sqlite3`",
                None,
            )
        else:
            value = re.match(r"`([^`]*)`", cell)
            assert value is not None, (key, cell)
            assert ast.literal_eval(value[1]) == DEFAULTS[key], (key, cell)


def test_every_flask_callbot_command_named_exists() -> None:
    group = create_group()
    commands = set(group.list_commands(None))  # type: ignore[arg-type]
    db = set(group.commands["db"].commands)  # type: ignore[attr-defined]
    named = set()
    for page in PAGES:
        for command, sub in re.findall(
            r"flask callbot ([a-z-]+)(?:\s+([a-z-]+))?", page.read_text()
        ):
            named.add(command)
            assert command in commands, (label(page), command)
            if command == "db":
                assert sub in db, (label(page), sub)
    assert named == commands, "every command is documented"


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    [readme] = [s.code.strip() for s in samples(ROOT / "README.md") if "pytest" in s.code]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f'bash -c "{readme}"' in ci


def test_every_page_is_in_the_table_of_contents() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    assert pages == set(re.findall(r"^([a-z]+)$", index, re.M))
