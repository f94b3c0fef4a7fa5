"""``flask callbot verify``: a captured request explained step by step, on the app's config."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from flask import Flask

from flask_callbot.diagnostics import CaptureError, mask_secret, parse_capture
from flask_callbot.testing import call_payload, serialize, sign_headers, task_payload

from support import NOW, SECRET, UUID

MASKED = "u7Mf…GSr"


#: Headers signed with the app's credentials at the test clock's time (keywords override them).
signed = functools.partial(sign_headers, secret_key=SECRET, uuid=UUID, create_ts=NOW)


def raw_http(
    body: bytes,
    headers: dict[str, str],
    *,
    path: str = "/api/v3/taskCallback",
    newline: str = "\r\n",
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: receiver.example", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return (newline.join(lines) + newline + newline).encode() + body


@pytest.fixture
def verify(app: Flask, tmp_path: Path) -> Callable[..., Result]:
    def run(capture: bytes, *args: str) -> Result:
        path = tmp_path / "capture"
        path.write_bytes(capture)
        return app.test_cli_runner().invoke(args=["callbot", "verify", str(path), *args])

    return run


def lines_of(result: Result, status: str) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith(status + " ")]


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_a_good_raw_request_verifies(verify: Callable[..., Result], newline: str) -> None:
    body = serialize(task_payload())
    result = verify(raw_http(body, signed(body), newline=newline))
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert (
        out[0] == f"request: raw HTTP, /api/v3/taskCallback (task callback), body {len(body)} bytes"
    )
    assert [line.split(":")[0].split(None, 1) for line in out[1:-1]] == [
        ["OK", "size"],
        ["OK", "headers"],
        ["OK", "time window"],
        ["OK", "uuid"],
        ["OK", "signature"],
        ["SKIP", "signature"],
        ["OK", "body"],
    ]
    assert f"signature: key 1 of 1 ({MASKED}), MD5: matches" in result.output
    assert "createTs 1800000000 is 0 s old" in result.output
    assert "a valid task callback (taskID T100, taskStatus 2)" in result.output
    assert out[-1] == "verdict: verifies: the receiver accepts it (200 retCode 0)"
    assert SECRET not in result.output


def test_a_json_capture(verify: Callable[..., Result]) -> None:
    body = serialize(call_payload(), "compact")
    capture = {"headers": signed(body), "body": body.decode(), "path": "/x/api/v3/callCallback"}
    result = verify(json.dumps(capture, ensure_ascii=False).encode())
    assert result.exit_code == 0, result.output
    assert "request: JSON, /x/api/v3/callCallback (call callback)" in result.output
    assert "a valid call callback (orderID order-0001, callID call-0001)" in result.output


def test_a_base64_body_keeps_exact_bytes(verify: Callable[..., Result]) -> None:
    body = b'{"taskID": "\xff"}'  # not UTF-8: only base64 can carry it
    capture = {"headers": signed(body), "body_base64": base64.b64encode(body).decode()}
    result = verify(json.dumps(capture).encode(), "--kind", "task")
    assert result.exit_code == 1
    assert "MD5: matches" in result.output  # the signature covers the exact bytes
    assert "FAIL    body: not a valid task callback: body is not valid UTF-8" in result.output
    assert result.output.endswith(
        "verdict: refused at body: the receiver answers 400 retCode 3 (malformed-body)\n"
    )


@pytest.mark.parametrize(
    ("signed_style", "sent_style"), [("compact", "python"), ("python", "compact")]
)
def test_a_reserialised_body_is_recognised(
    verify: Callable[..., Result], signed_style: str, sent_style: str
) -> None:
    payload = call_payload()
    sent = serialize(payload, sent_style)
    capture = raw_http(sent, signed(serialize(payload, signed_style)), path="/api/v3/callCallback")
    result = verify(capture)
    assert result.exit_code == 1
    [hint] = lines_of(result, "HINT")
    assert "the body was re-serialised: the signature matches the" in hint
    assert ("compact (no spaces" in hint) is (signed_style == "compact")
    assert hint.endswith("sign and send the same bytes")
    assert "verdict: refused at signature: the receiver answers 401 retCode 6 (bad-signature)" in (
        result.output
    )


def test_content_length_trims_an_appended_newline(verify: Callable[..., Result]) -> None:
    body = serialize(task_payload())
    headers = {**signed(body), "Content-Length": str(len(body))}
    result = verify(raw_http(body, headers) + b"\n")
    assert result.exit_code == 0, result.output
    assert "  note: 1 byte(s) after Content-Length" in result.output


def test_an_appended_newline_without_content_length_is_hinted(
    verify: Callable[..., Result],
) -> None:
    body = serialize(task_payload())
    result = verify(raw_http(body, signed(body)) + b"\r\n")
    assert result.exit_code == 1
    [hint] = lines_of(result, "HINT")
    assert "matches the body without its last 2 newline byte(s)" in hint


def test_a_chunked_body_is_decoded(verify: Callable[..., Result]) -> None:
    body = serialize(task_payload())
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    headers = {**signed(body), "Transfer-Encoding": "chunked"}
    result = verify(raw_http(chunked, headers))
    assert result.exit_code == 0, result.output
    assert "note: the chunked body was decoded" in result.output


def test_rotation_shows_each_key(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(CALLBOT_SECRET_KEY=["a-new-key-that-is-not-it-yet", SECRET])
    body = serialize(task_payload())
    path = tmp_path / "capture.http"
    path.write_bytes(raw_http(body, signed(body, algorithm="SHA256", algorithm_header=True)))
    result = app.test_cli_runner().invoke(args=["callbot", "verify", str(path)])
    assert result.exit_code == 0, result.output
    assert "FAIL    signature: key 1 of 2 (a-ne…yet), SHA256: no match" in result.output
    assert f"OK      signature: key 2 of 2 ({MASKED}), SHA256: matches" in result.output
    assert "headers: requestID, uuid, createTs, sign, algorithm present" in result.output


def test_a_disallowed_algorithm(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(CALLBOT_SIGN_ALGORITHMS=["MD5"])
    body = serialize(task_payload())
    path = tmp_path / "capture.http"
    path.write_bytes(raw_http(body, signed(body, algorithm="SHA256", algorithm_header=True)))
    result = app.test_cli_runner().invoke(args=["callbot", "verify", str(path)])
    assert result.exit_code == 1
    assert (
        "FAIL    signature: the algorithm header says SHA256, not in CALLBOT_SIGN_ALGORITHMS"
        in (result.output)
    )


def test_a_missing_header_skips_the_auth_steps(verify: Callable[..., Result]) -> None:
    body = serialize(task_payload())
    headers = signed(body)
    del headers["sign"]
    result = verify(raw_http(body, headers))
    assert result.exit_code == 1
    assert "FAIL    headers: missing header(s): sign" in result.output
    assert len(lines_of(result, "SKIP")) == 3
    assert "OK      body" in result.output  # still checked
    assert "the receiver answers 401 retCode 6001 (missing-auth-header)" in result.output


def test_another_account(verify: Callable[..., Result]) -> None:
    body = serialize(task_payload())
    result = verify(raw_http(body, signed(body, uuid="SomeoneElse")))
    assert result.exit_code == 1
    assert f"FAIL    uuid: SomeoneElse is not CALLBOT_UUID ({UUID})" in result.output
    assert "401 retCode 6002 (unknown-account)" in result.output


def test_the_time_window_and_now(verify: Callable[..., Result]) -> None:
    body = serialize(task_payload())
    capture = raw_http(body, signed(body, create_ts=NOW - 3600))
    old = verify(capture)
    assert old.exit_code == 1
    assert "FAIL    time window: createTs 1799996400 is 3600 s old" in old.output
    assert "pass --now with the time it was received" in old.output
    assert "401 retCode 6 (timestamp-out-of-window)" in old.output
    for moment in (str(NOW - 3590), "2027-01-15T07:00:10Z", "59m"):
        result = verify(capture, "--now", moment)
        assert result.exit_code == 0, (moment, result.output)
    ahead = verify(raw_http(body, signed(body, create_ts=NOW + 600)))
    assert "is 600 s in the future" in ahead.output
    assert "the sender's clock runs ahead" in ahead.output


def test_an_invalid_payload(verify: Callable[..., Result]) -> None:
    payload = task_payload()
    del payload["taskID"]
    body = serialize(payload)
    result = verify(raw_http(body, signed(body)))
    assert result.exit_code == 1
    assert "FAIL    body: not a valid task callback: missing required field(s): taskID" in (
        result.output
    )
    assert "400 retCode 2 (missing-field)" in result.output


def test_an_unknown_route_needs_kind(verify: Callable[..., Result]) -> None:
    body = serialize(task_payload())
    capture = raw_http(body, signed(body), path="/somewhere/else")
    result = verify(capture)
    assert result.exit_code == 1  # the body is not checked: no claim that it is accepted
    assert "SKIP    body: the route is unknown: give --kind" in result.output
    assert "(callback of unknown kind)" in result.output
    assert "accepts" not in result.output
    assert result.output.endswith(
        "verdict: undecided: the body was not checked; give --kind task|order|call\n"
    )
    with_kind = verify(capture, "--kind", "task")
    assert with_kind.exit_code == 0
    assert "OK      body" in with_kind.output
    assert "verdict: verifies: the receiver accepts it (200 retCode 0)" in with_kind.output


def test_a_body_over_the_limit(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(CALLBOT_MAX_CONTENT_LENGTH=100)
    body = serialize(task_payload())
    path = tmp_path / "capture.http"
    path.write_bytes(raw_http(body, signed(body)))
    result = app.test_cli_runner().invoke(args=["callbot", "verify", str(path)])
    assert result.exit_code == 1
    assert "413 retCode 4 (payload-too-large)" in result.output


def test_stdin(app: Flask) -> None:
    body = serialize(task_payload())
    result = app.test_cli_runner().invoke(
        args=["callbot", "verify", "-"], input=raw_http(body, signed(body))
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("capture", "message"),
    [
        (b"POST / HTTP/1.1\r\nrequestID: x", "no blank line after the headers"),
        (b"POST / HTTP/1.1\r\nnot a header\r\n\r\n{}", "line 2 is not a header"),
        (b"{nope", "not valid JSON"),
        (b'{"body": "{}"}', 'an object with "headers" and "body"'),
        (b'{"headers": {}, "body": {}}', '"body" must be a string'),
        (b'{"headers": {}}', 'exactly one of "body"'),
        (b'{"headers": {}, "body_base64": "***"}', "not valid base64"),
        (b'{"headers": 5, "body": ""}', '"headers" must be an object'),
    ],
)
def test_unreadable_captures(verify: Callable[..., Result], capture: bytes, message: str) -> None:
    result = verify(capture)
    assert result.exit_code == 1
    assert "Error: cannot read the capture:" in result.output
    assert message in result.output
    with pytest.raises(CaptureError, match=r"\w"):
        parse_capture(capture)


def test_a_capture_without_request_line() -> None:
    capture = parse_capture(b"requestID: r\nuuid: u\n\n{}")
    assert capture.path is None and capture.kind is None
    assert capture.headers == (("requestID", "r"), ("uuid", "u"))
    assert capture.body == b"{}"


def test_repeated_headers_are_kept() -> None:
    capture = parse_capture(b"POST http://h/api/v3/orderCallback HTTP/1.1\nsign: a\nsign: b\n\n")
    assert capture.headers == (("sign", "a"), ("sign", "b"))
    assert capture.kind is not None and capture.kind.value == "order"


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        (SECRET, MASKED),
        ("0123456789ab", "0123…9ab"),
        ("short", "…(5 characters)"),
        ("", "…(0 characters)"),
    ],
)
def test_mask_secret(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked


def test_a_configured_key_with_spaces_is_hinted(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(CALLBOT_SECRET_KEY=SECRET + "\n")  # pasted with its line end
    body = serialize(task_payload())
    path = tmp_path / "capture.http"
    path.write_bytes(raw_http(body, signed(body)))
    result = app.test_cli_runner().invoke(args=["callbot", "verify", str(path)])
    assert result.exit_code == 1
    [hint] = lines_of(result, "HINT")
    assert "CALLBOT_SECRET_KEY has spaces around it" in hint


def test_no_usual_slip(verify: Callable[..., Result]) -> None:
    body = serialize(task_payload())
    result = verify(raw_http(body, signed(body, secret_key="another-key-entirely-000")))
    assert result.exit_code == 1
    [hint] = lines_of(result, "HINT")
    assert "no usual slip explains it: check CALLBOT_SECRET_KEY" in hint
    assert "another-key" not in result.output
