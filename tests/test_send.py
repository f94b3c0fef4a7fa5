"""``flask callbot send``: one callback signed and posted over real HTTP to a served app."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_callbot import TaskStatus, get_store
from flask_callbot.testing import call_payload, order_payload, serialize, task_payload

from support import NOW, SECRET


def send(app: Flask, *args: str, env: dict[str, str] | None = None) -> Result:
    return app.test_cli_runner().invoke(args=["callbot", "send", *args], env=env)


def request_id_of(result: Result) -> str:
    return result.output.split("requestID ")[1].split(",")[0]


def test_sends_the_example_task(app: Flask, live_url: str) -> None:
    result = send(app, live_url, "--kind", "task", "--status", "5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"POST {live_url}/api/v3/taskCallback"
    assert f"task callback, {len(serialize(task_payload(taskStatus=5)))} bytes (python)" in lines[1]
    assert f"createTs {NOW}" in lines[1]  # the app's clock
    assert lines[2] == "200 retCode 0: success"
    stored = get_store(app).get_delivery(request_id_of(result))
    assert stored.body == serialize(task_payload(taskStatus=5), "python")
    assert get_store(app).get_task("T100").status is TaskStatus.PAUSED
    assert SECRET not in result.output


@pytest.mark.parametrize(("kind", "factory"), [("order", order_payload), ("call", call_payload)])
def test_a_full_route_implies_the_kind(app: Flask, live_url: str, kind: str, factory: Any) -> None:
    url = f"{live_url}/api/v3/{kind}Callback"
    result = send(app, url, "--serialization", "compact", "--status", "2")
    assert result.exit_code == 0, result.output
    assert f"{kind} callback" in result.output
    payload = factory()
    payload["callInfoDetail"]["callStatus"] = 2
    body = get_store(app).get_delivery(request_id_of(result)).body
    assert body == serialize(payload, "compact")
    assert "王小明".encode() in body  # raw UTF-8, as the vendor's Go server writes


def test_sends_a_file_reserialised_or_raw(app: Flask, live_url: str, tmp_path: Path) -> None:
    text = '{"taskID" : "F1",\n "userTaskID": "u", "taskStatus": 1, "note": "é"}\n'
    path = tmp_path / "payload.json"
    path.write_text(text, encoding="utf-8")
    result = send(app, live_url, "--kind", "task", "--file", str(path), "--status", "3")
    assert result.exit_code == 0, result.output
    stored = get_store(app).get_delivery(request_id_of(result))
    assert stored.body == serialize({**json.loads(text), "taskStatus": 3}, "python")
    raw = send(app, live_url, "--kind", "task", "--file", str(path), "--raw")
    assert raw.exit_code == 0, raw.output
    assert "bytes (as in the file)" in raw.output
    assert get_store(app).get_delivery(request_id_of(raw)).body == text.encode()


def test_signing_options(app: Flask, live_url: str) -> None:
    result = send(
        app,
        live_url,
        "--kind",
        "call",
        "--algorithm",
        "sha256",
        "--algorithm-header",
        "--request-id",
        "chosen-id",
        "--create-ts",
        str(NOW - 30),
    )
    assert result.exit_code == 0, result.output
    stored = get_store(app).get_delivery("chosen-id")
    assert stored.headers["algorithm"] == "SHA256"
    assert len(stored.headers["sign"]) == 64
    assert stored.request_ts == NOW - 30


def test_refusals_exit_1_with_the_reply(app: Flask, live_url: str) -> None:
    stale = send(app, live_url, "--kind", "task", "--create-ts", str(NOW - 3600))
    assert stale.exit_code == 1
    assert "401 retCode 6: createTs is more than 300 s old" in stale.output
    other = {"CALLBOT_TARGET_SECRET_KEY": "not-the-key-at-all-0123", "CALLBOT_TARGET_UUID": "x"}
    wrong = send(app, live_url, "--kind", "task", env=other)
    assert wrong.exit_code == 1
    assert "401 retCode 6002" in wrong.output  # uuid x is checked before the signature
    key_only = send(app, live_url, "--kind", "task", "--secret-key", "not-the-key-at-all-0123")
    assert "401 retCode 6: signature does not match" in key_only.output
    assert "not-the-key-at-all-0123" not in key_only.output


def test_a_wrong_prefix_hints_at_the_url(app: Flask, live_url: str) -> None:
    result = send(app, live_url + "/hooks", "--kind", "task")
    assert result.exit_code == 1
    assert "404: not a vendor-style reply (text/html" in result.stdout
    assert "is the URL right?" in result.stderr


def test_no_server(app: Flask) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = send(app, f"http://127.0.0.1:{port}", "--kind", "task", "--timeout", "2")
    assert result.exit_code == 1
    assert f"Error: no answer from http://127.0.0.1:{port}/api/v3/taskCallback" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://h"], "give --kind"),
        (["http://h/api/v3/taskCallback", "--kind", "order"], "but --kind is order"),
        (["http://h", "--kind", "task", "--raw"], "--raw sends a --file unchanged"),
        (["h:5000", "--kind", "task"], "is not an http(s) URL"),
        (["http://h", "--kind", "sms"], "'sms' is not one of"),
    ],
)
def test_usage_errors(app: Flask, args: list[str], message: str) -> None:
    result = send(app, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_bad_file(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    result = send(app, "http://h", "--kind", "task", "--file", str(path))
    assert result.exit_code == 2
    assert "the payload must be a JSON object" in result.output
    path.write_text("{nope")
    assert "not JSON" in send(app, "http://h", "--kind", "task", "--file", str(path)).output
