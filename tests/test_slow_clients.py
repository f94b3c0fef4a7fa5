"""Clients that never finish their body: the worker is freed after ``CALLBOT_BODY_TIMEOUT`` and
the request is logged as what it is (``outcome=incomplete``), not as an error of ours.

Over real HTTP (Werkzeug's threaded server, which exposes the client's socket as gunicorn does);
the deployments that hold under many such clients are tested under gunicorn in
``test_multiprocess.py``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_callbot import ConfigurationError, get_store
from flask_callbot.testing import record_signals, sign_headers, task_payload

from support import SECRET, UUID, Clock, serve, stored_count


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.callbot for r in caplog.records if hasattr(r, "callbot")]  # type: ignore[attr-defined]


def request_head(body: bytes, clock: Clock, request_id: str) -> bytes:
    headers = sign_headers(
        body, secret_key=SECRET, uuid=UUID, request_id=request_id, create_ts=int(clock.now)
    )
    head = "POST /api/v3/taskCallback HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()


def test_a_stalled_body_is_given_up_after_the_body_timeout(
    make_app: Callable[..., Flask], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flask_callbot")
    app = make_app(CALLBOT_BODY_TIMEOUT=0.5)
    body = json.dumps(task_payload()).encode()
    with record_signals(sender=app) as sent, serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(request_head(body, clock, "stalled") + body[:40])
            started = time.monotonic()
            reply = client.recv(65536)  # then nothing more is sent
            waited = time.monotonic() - started
            while chunk := client.recv(65536):  # until the server closes the connection
                reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 BAD REQUEST"
    assert b"Connection: close" in rest
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["retCode"] == 3
    assert 0.4 < waited < 5
    assert lines(caplog) == [
        {
            "request_id": "stalled",
            "kind": "task",
            "outcome": "incomplete",
            "reason": "incomplete-body",
            "http_status": 400,
            "ret_code": 3,
            "latency_ms": lines(caplog)[0]["latency_ms"],
            "detail": "the body did not arrive whole: the client disconnected or stopped sending",
        }
    ]
    assert next(r for r in caplog.records if hasattr(r, "callbot")).levelno == logging.INFO
    assert sent == []  # not authenticated, so not refused either: nothing to signal
    assert get_store(app).get_delivery("stalled") is None
    assert stored_count(app) == 0


def test_a_client_that_hangs_up_mid_body_is_logged_as_incomplete(
    make_app: Callable[..., Flask], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flask_callbot")
    app = make_app()
    body = json.dumps(task_payload()).encode()
    with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(request_head(body, clock, "gone") + body[:40])
        deadline = time.monotonic() + 10
        while not lines(caplog):
            assert time.monotonic() < deadline, "the request was never logged"
            time.sleep(0.02)
    (line,) = lines(caplog)
    assert (line["request_id"], line["outcome"], line["reason"]) == (
        "gone",
        "incomplete",
        "incomplete-body",
    )
    assert stored_count(app) == 0


@pytest.mark.parametrize("value", [0, -1, "10", True, float("nan")])
def test_the_body_timeout_is_a_positive_number(
    make_app: Callable[..., Flask], value: object
) -> None:
    with pytest.raises(ConfigurationError, match="CALLBOT_BODY_TIMEOUT"):
        make_app(CALLBOT_BODY_TIMEOUT=value)
