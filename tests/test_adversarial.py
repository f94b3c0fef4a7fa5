"""The adversarial corpus: hostile or broken requests, each with the reply it must get, and proof
that nothing was stored and no signal but ``callback_rejected`` was sent."""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask

from flask_callbot import pipeline
from flask_callbot.events import CallbackKind
from flask_callbot.routes import ROUTES
from flask_callbot.testing import (
    call_payload,
    order_payload,
    record_signals,
    serialize,
    sign_headers,
    task_payload,
)

from support import NOW, SECRET, UUID, assert_reply, stored_count

KINDS = ["task", "order", "call"]
REQUEST_ID = "adversarial-0001"
#: A string placed in every body, so the log test can prove no body reached a log line.
MARKER = "zq-body-marker-7731"


def payload(kind: str) -> dict[str, Any]:
    factory = {"task": task_payload, "order": order_payload, "call": call_payload}[kind]
    return factory(other=MARKER) if kind != "task" else factory(sceneID=MARKER)


#: Headers signed with the app's credentials at the test clock's time (keywords override them);
#: the malformed cases start from these and change them.
signed = functools.partial(
    sign_headers, secret_key=SECRET, uuid=UUID, request_id=REQUEST_ID, create_ts=NOW
)


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: list[tuple[str, str]]
    method: str = "POST"


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[str], Request]
    status: int
    ret_code: int | None  # None: not a callbot reply (Flask's own 405)
    kinds: list[str] = field(default_factory=lambda: KINDS)


def body_case(id: str, make_body: Callable[[str], bytes], status: int, ret_code: int) -> Case:
    """A correctly signed request whose body is the problem."""

    def build(kind: str) -> Request:
        body = make_body(kind)
        return Request(body, list(signed(body).items()))

    return Case(id, build, status, ret_code)


def json_body(mutate: Callable[[dict[str, Any]], Any]) -> Callable[[str], bytes]:
    def make(kind: str) -> bytes:
        data = payload(kind)
        mutate(data)
        return serialize(data)

    return make


def header_case(
    id: str, change: Callable[[dict[str, str]], list[tuple[str, str]]], ret_code: int
) -> Case:
    """A valid body and signature, then the headers tampered with."""

    def build(kind: str) -> Request:
        body = serialize(payload(kind))
        return Request(body, change(signed(body)))

    return Case(id, build, 401, ret_code)


def replace(name: str, value: str) -> Callable[[dict[str, str]], list[tuple[str, str]]]:
    return lambda headers: list({**headers, name: value}.items())


def without(name: str) -> Callable[[dict[str, str]], list[tuple[str, str]]]:
    return lambda headers: [(k, v) for k, v in headers.items() if k != name]


def repeated(name: str) -> Callable[[dict[str, str]], list[tuple[str, str]]]:
    return lambda headers: [*headers.items(), (name, headers[name])]


def signed_case(id: str, ret_code: int, **overrides: Any) -> Case:
    """A request correctly signed with the secret, over header values the receiver must refuse."""

    def build(kind: str) -> Request:
        body = serialize(payload(kind))
        return Request(body, list(signed(body, **overrides).items()))

    return Case(id, build, 401, ret_code)


def nested(depth: int) -> Callable[[str], bytes]:
    return lambda kind: b'{"deep": ' + b"[" * depth + b"]" * depth + b"}"


def md5_padding(message_length: int) -> bytes:
    """MD5's padding for a message of that many bytes: what a length-extension attack appends."""
    zeros = (55 - message_length) % 64
    return b"\x80" + b"\x00" * zeros + struct.pack("<Q", message_length * 8)


def length_extension(kind: str) -> Request:
    """The classic forgery on a secret-prefix MD5: keep the genuine digest's state, append
    padding and new bytes after the last signed field (the uuid). The receiver must refuse the
    uuid's form before hashing anything."""
    body = serialize(payload(kind))
    headers = signed(body)
    message_length = len(SECRET) + len(b"&body=") + len(body) + 200  # the attacker's guess
    suffix = md5_padding(message_length).decode("latin-1") + "&admin=1"
    return Request(body, list({**headers, "uuid": UUID + suffix}.items()))


def wrong_type_cases() -> Iterator[Case]:
    """Every known field, at every level, given a value of the wrong type: 400/4, never 5xx."""
    for kind in KINDS:
        for path in leaf_paths(payload(kind)):

            def make_body(_: str, path: tuple[str | int, ...] = path, kind: str = kind) -> bytes:
                data = payload(kind)
                target = data
                for key in path[:-1]:
                    target = target[key]
                current = target[path[-1]]
                target[path[-1]] = "not-a-list" if isinstance(current, list) else [1]
                return serialize(data)

            def build(k: str, make_body: Callable[[str], bytes] = make_body) -> Request:
                body = make_body(k)
                return Request(body, list(signed(body).items()))

            name = ".".join(str(p) for p in path)
            yield Case(f"wrong-type-{kind}-{name}", build, 400, 4, kinds=[kind])


def leaf_paths(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Each field's path; a list or object field is itself a path (then its items)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            if isinstance(item, dict | list) and key != "recordDetail":
                yield from leaf_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:1]):
            yield from leaf_paths(item, (*prefix, index))


def unsigned(body: bytes) -> Callable[[str], Request]:
    return lambda kind: Request(body, [])


def other_method(method: str) -> Callable[[str], Request]:
    def build(kind: str) -> Request:
        body = serialize(payload(kind))
        return Request(body, list(signed(body).items()), method=method)

    return build


def replayed_with_another_body(kind: str) -> Request:
    body = serialize(payload(kind))
    headers = signed(body)
    other = payload(kind)
    other["taskID"] = "T999"
    return Request(serialize(other), list(headers.items()))


def sign_changed(transform: Callable[[str], str]) -> Callable[[dict[str, str]], Any]:
    return lambda headers: list({**headers, "sign": transform(headers["sign"])}.items())


def flip_one_hex_digit(sign: str) -> str:
    return ("0" if sign[0] != "0" else "1") + sign[1:]


def mixed_case_but_wrong(sign: str) -> str:
    return flip_one_hex_digit(sign).lower()


def set_int(value: Any) -> Callable[[dict[str, Any]], None]:
    """Put ``value`` in an integer field of the payload (taskStatus, or callStatus)."""

    def apply(data: dict[str, Any]) -> None:
        if "taskStatus" in data:
            data["taskStatus"] = value
        else:
            data["callInfoDetail"]["callStatus"] = value

    return apply


def int_literal(raw: bytes) -> Callable[[str], bytes]:
    """A full payload whose integer field is written as these raw JSON bytes."""

    def make(kind: str) -> bytes:
        return json_body(set_int("@@"))(kind).replace(b'"@@"', raw)

    return make


def huge_float(kind: str) -> Request:
    data = payload(kind)
    data["taskStat"]["finishRate"] = "@@"
    body = serialize(data).replace(b'"@@"', b"1e999")
    return Request(body, list(signed(body).items()))


def drop_required(data: dict[str, Any]) -> None:
    del data["taskID"]


CORPUS: list[Case] = [
    # The body.
    body_case("empty-body", lambda kind: b"", 400, 3),
    body_case("invalid-utf8", lambda kind: b'{"taskID": "\xff\xfe"}', 400, 3),
    body_case(
        "utf16-body", lambda kind: serialize(payload(kind)).decode().encode("utf-16"), 400, 3
    ),
    body_case("lone-surrogate", lambda kind: b'{"taskID": "\\ud800"}', 400, 3),
    body_case("not-json", lambda kind: b"taskID=T100&taskStatus=2", 400, 3),
    body_case("truncated-json", lambda kind: serialize(payload(kind))[:-1], 400, 3),
    body_case("json-array", lambda kind: b"[]", 400, 3),
    body_case("json-string", lambda kind: b'"x"', 400, 3),
    body_case("json-number", lambda kind: b"1", 400, 3),
    body_case("json-null", lambda kind: b"null", 400, 3),
    body_case("deeply-nested", nested(100_000), 400, 3),
    body_case("nan", int_literal(b"NaN"), 400, 3),
    body_case("infinity", int_literal(b"Infinity"), 400, 3),
    body_case("minus-infinity", int_literal(b"-Infinity"), 400, 3),
    body_case("duplicate-keys", lambda kind: b'{"taskID": "a", "taskID": "b"}', 400, 3),
    body_case("huge-integer-literal", json_body(set_int(10**30)), 400, 4),
    body_case("huge-digit-run", int_literal(b"9" * 5000), 400, 3),
    body_case("long-digit-run", int_literal(b"9" * 4000), 400, 4),
    body_case("huge-exponent", int_literal(b"1e400"), 400, 4),
    Case("huge-float", huge_float, 400, 4, kinds=["task"]),
    body_case("int-as-float", json_body(set_int(2.5)), 400, 4),
    body_case("int-as-bool", json_body(set_int(True)), 400, 4),
    body_case("int-with-space", json_body(set_int(" 1")), 400, 4),
    body_case("int-with-underscore", json_body(set_int("1_000")), 400, 4),
    body_case("int-in-arabic-digits", json_body(set_int("\u0663")), 400, 4),
    body_case("int-with-plus", json_body(set_int("+1")), 400, 4),
    body_case("int-over-64-bits", json_body(set_int(str(2**63))), 400, 4),
    body_case("nul-in-string", json_body(lambda d: d.update(taskID="T\x00100")), 400, 4),
    body_case("required-field-null", json_body(lambda d: d.update(taskID=None)), 400, 2),
    body_case("required-field-missing", json_body(drop_required), 400, 2),
    body_case("id-too-long", json_body(lambda d: d.update(taskID="T" * 256)), 400, 4),
    body_case("empty-id", json_body(lambda d: d.update(taskID="")), 400, 4),
    # The auth headers.
    Case("no-headers", unsigned(b"{}"), 401, 6001),
    *[header_case(f"missing-{h}", without(h), 6001) for h in ("requestID", "uuid", "createTs")],
    header_case("missing-sign", without("sign"), 6001),
    *[
        header_case(f"empty-{h}", replace(h, ""), 6001)
        for h in ("requestID", "uuid", "createTs", "sign")
    ],
    *[
        header_case(f"repeated-{h}", repeated(h), 6)
        for h in ("requestID", "uuid", "createTs", "sign")
    ],
    header_case("requestID-too-long", replace("requestID", "r" * 129), 6),
    header_case("uuid-too-long", replace("uuid", "u" * 65), 6),
    header_case("createTs-too-long", replace("createTs", "1" * 13), 6),
    header_case("sign-too-long", sign_changed(lambda s: s + "0"), 6),
    header_case("requestID-with-amp", replace("requestID", "a&uuid=x"), 6),
    header_case("requestID-with-eq", replace("requestID", "a=b"), 6),
    header_case("uuid-with-amp", replace("uuid", UUID + "&x=1"), 6),
    header_case("requestID-control-char", replace("requestID", "a\x01b"), 6),
    header_case("requestID-nul", replace("requestID", "a\x00b"), 6),
    header_case("requestID-tab", replace("requestID", "a\tb"), 6),
    header_case("uuid-control-char", replace("uuid", UUID + "\x7f"), 6),
    header_case("requestID-non-ascii", replace("requestID", "r\u00e9quest"), 6),
    header_case("uuid-non-ascii", replace("uuid", UUID + "\u00e9"), 6),
    header_case("uuid-cjk", replace("uuid", "\u4e2d"), 6),
    header_case("algorithm-unknown", replace("algorithm", "SHA1"), 6),
    header_case("algorithm-empty", replace("algorithm", ""), 6),
    header_case("createTs-far-past", replace("createTs", "0"), 6),
    header_case("createTs-just-too-old", replace("createTs", str(NOW - 301)), 6),
    header_case("createTs-far-future", replace("createTs", "999999999999"), 6),
    header_case("createTs-just-too-new", replace("createTs", str(NOW + 61)), 6),
    header_case("createTs-milliseconds", replace("createTs", str(NOW * 1000)), 6),
    header_case("createTs-negative", replace("createTs", "-1"), 6),
    header_case("createTs-float", replace("createTs", f"{NOW}.5"), 6),
    header_case("createTs-exponent", replace("createTs", "1.8e9"), 6),
    header_case("createTs-spaces", replace("createTs", f" {NOW}"), 6),
    header_case("createTs-word", replace("createTs", "now"), 6),
    header_case("createTs-arabic-digits", replace("createTs", "\u0661" * 10), 6),
    header_case("sign-too-short", sign_changed(lambda s: s[:-1]), 6),
    header_case("sign-sha1-length", sign_changed(lambda s: s[:32] + "0" * 8), 6),
    header_case("sign-not-hex", sign_changed(lambda s: "g" + s[1:]), 6),
    header_case("sign-wrong-digit", sign_changed(flip_one_hex_digit), 6),
    header_case("sign-lower-case-and-wrong", sign_changed(mixed_case_but_wrong), 6),
    header_case("sign-of-sha256-length-for-md5", sign_changed(lambda s: s * 2), 6),
    header_case("foreign-uuid", replace("uuid", "SomeoneElsesAccount"), 6002),
    header_case("uuid-with-trailing-bytes", replace("uuid", UUID + "AAAA"), 6002),
    header_case("uuid-prefix", replace("uuid", UUID[:-1]), 6002),
    signed_case("foreign-uuid-validly-signed", 6002, uuid="SomeoneElsesAccount"),
    signed_case("signed-too-old", 6, create_ts=NOW - 3600),
    Case("length-extension", length_extension, 401, 6),
    Case("replayed-with-another-body", replayed_with_another_body, 401, 6),
    header_case(
        "sign-of-another-request",
        lambda headers: list({**headers, "requestID": "adversarial-0002"}.items()),
        6,
    ),
    # Methods: only POST is routed.
    Case("get", other_method("GET"), 405, None),
    Case("put", other_method("PUT"), 405, None),
    Case("head", other_method("HEAD"), 405, None),
    Case("delete", other_method("DELETE"), 405, None),
    Case("patch", other_method("PATCH"), 405, None),
    *wrong_type_cases(),
]


def send(app: Flask, kind: str, request: Request) -> Any:
    return app.test_client().open(
        ROUTES[kind], method=request.method, data=request.body, headers=request.headers
    )


def expect(case: Case, response: Any) -> None:
    if case.ret_code is None:
        assert response.status_code == case.status
    else:
        assert_reply(response, case.status, case.ret_code)


def run_case(app: Flask, case: Case, kind: str) -> None:
    with record_signals(sender=app) as sent:
        response = send(app, kind, case.build(kind))
    expect(case, response)
    expected = [] if case.ret_code is None else ["callback-rejected"]
    assert [s.name for s in sent] == expected
    assert stored_count(app) == 0
    assert stored_count(app, "callbot_tasks") == 0
    assert stored_count(app, "callbot_orders") == 0


@pytest.mark.parametrize(
    ("case", "kind"),
    [pytest.param(case, kind, id=f"{case.id}-{kind}") for case in CORPUS for kind in case.kinds],
)
def test_adversarial_request_is_refused_and_leaves_no_trace(
    app: Flask, case: Case, kind: str
) -> None:
    run_case(app, case, kind)


def test_the_corpus_covers_every_field_of_every_kind() -> None:
    wrong_types = [case for case in CORPUS if case.id.startswith("wrong-type-")]
    assert len(wrong_types) > 60
    for kind in KINDS:
        assert any(case.id.startswith(f"wrong-type-{kind}-") for case in wrong_types)


def test_a_lower_case_signature_is_accepted_once(app: Flask) -> None:
    """The vendor sends upper-case hex; any case verifies (the contract), exactly once."""
    body = serialize(payload("task"))
    headers = signed(body)
    headers["sign"] = headers["sign"].lower()
    client = app.test_client()
    assert_reply(client.post(ROUTES["task"], data=body, headers=headers), 200, 0)
    with record_signals(sender=app) as sent:
        assert_reply(client.post(ROUTES["task"], data=body, headers=headers), 200, 0)
    assert sent == []  # the duplicate runs nothing
    assert stored_count(app) == 1


def test_deep_nesting_below_the_parser_limit_is_accepted(app: Flask) -> None:
    """Deep but parseable unknown fields are kept in ``raw`` without harm."""
    data = payload("call")
    deep: Any = []
    for _ in range(400):
        deep = [deep]
    data["deepUnknown"] = deep
    body = serialize(data)
    assert_reply(app.test_client().post(ROUTES["call"], data=body, headers=signed(body)), 200, 0)


def test_surrogate_pairs_are_text_and_accepted(app: Flask) -> None:
    """Python's json.dumps escapes an emoji as a surrogate pair: that is text, not a refusal."""
    body = serialize(payload("call") | {"userName": "\U0001f600 Wang"})
    assert b"\\ud83d\\ude00" in body
    assert_reply(app.test_client().post(ROUTES["call"], data=body, headers=signed(body)), 200, 0)


class CountingStream(io.RawIOBase):
    """An endless request body that counts what the server read of it."""

    def __init__(self) -> None:
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        buffer[:size] = b"x" * size
        self.consumed += size
        return size


@pytest.mark.parametrize("kind", KINDS)
def test_a_declared_oversized_body_is_refused_unread(app: Flask, kind: str) -> None:
    stream = CountingStream()
    with record_signals(sender=app) as sent:
        response = app.test_client().post(
            ROUTES[kind],
            headers=signed(b"x"),
            environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": str(1024**3)},
        )
    assert_reply(response, 413, 4)
    assert stream.consumed == 0
    assert [(s.name, s.kwargs["reason"]) for s in sent] == [
        ("callback-rejected", "payload-too-large")
    ]
    assert stored_count(app) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_streamed_oversized_body_is_cut_at_the_limit(
    make_app: Callable[..., Flask], kind: str
) -> None:
    """Without a Content-Length (chunked), reading stops at the limit, not at the end."""
    limit = 64 * 1024
    app = make_app(CALLBOT_MAX_CONTENT_LENGTH=limit)
    stream = CountingStream()
    response = app.test_client().post(
        ROUTES[kind],
        headers={"Transfer-Encoding": "chunked", **signed(b"x")},
        environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True},
    )
    assert_reply(response, 413, 4)
    assert limit < stream.consumed <= 2 * limit
    assert stored_count(app) == 0


def test_a_body_at_the_limit_is_read(make_app: Callable[..., Flask]) -> None:
    data = payload("task")
    body = serialize(data)
    app = make_app(CALLBOT_MAX_CONTENT_LENGTH=len(body))
    client = app.test_client()
    assert_reply(client.post(ROUTES["task"], data=body, headers=signed(body)), 200, 0)
    bigger = serialize(data | {"pad": "x"})
    response = client.post(ROUTES["task"], data=bigger, headers=signed(bigger, request_id="r2"))
    assert_reply(response, 413, 4)


def test_header_values_no_http_client_can_send_are_refused_by_the_pipeline(app: Flask) -> None:
    """Through :func:`pipeline.handle` directly: any str, including what HTTP cannot carry."""
    body = serialize(payload("task"))
    genuine = signed(body)
    hostile = ["\n", "\r\n", "\u2028", "\ud800", "\U0001f600", "\x00" * 200, "A" * 10_000]
    with app.app_context(), record_signals(sender=app) as sent:
        for value in hostile:
            for name in ("requestID", "uuid", "createTs", "sign"):
                headers = {**genuine, name: genuine[name] + value}
                reply = pipeline.handle(app, CallbackKind.TASK, body, headers)
                assert (reply.http_status, reply.ret_code) == (401, 6), (name, value)
    assert {s.name for s in sent} == {"callback-rejected"}
    assert stored_count(app) == 0


def test_the_whole_corpus_leaks_no_secret_or_body_to_the_logs(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """Every log record at every level, of every logger, while the corpus and some accepted,
    duplicate, stale and failing deliveries run: no secret, no body, no piece of a body."""
    bodies: list[bytes] = []
    caplog.set_level(logging.DEBUG)
    for case in CORPUS:
        for kind in case.kinds:
            request = case.build(kind)
            bodies.append(request.body)
            send(app, kind, request)
    client = app.test_client()
    for index, kind in enumerate(KINDS * 2):
        data = copy.deepcopy(payload(kind))
        body = serialize(data)
        bodies.append(body)
        headers = signed(body, request_id=f"accepted-{index}")
        assert client.post(ROUTES[kind], data=body, headers=headers).status_code == 200
        assert client.post(ROUTES[kind], data=body, headers=headers).status_code == 200

    def fail(sender: Any, **extra: Any) -> None:
        raise RuntimeError("receiver down")

    from flask_callbot import signals

    signals.task_progress.connect(fail, app, weak=False)
    try:
        body = serialize(task_payload(taskStatus=3, sceneID=MARKER))
        bodies.append(body)
        response = client.post(ROUTES["task"], data=body, headers=signed(body, request_id="f-1"))
        assert response.status_code == 500
    finally:
        signals.task_progress.disconnect(fail, app)

    assert len(caplog.records) > len(CORPUS)
    forbidden = [SECRET, MARKER, hashlib.md5(SECRET.encode()).hexdigest()]
    for record in caplog.records:
        texts = [record.getMessage(), repr(record.args), repr(vars(record))]
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
        text = "\n".join(texts)
        for secret in forbidden:
            assert secret not in text, record.getMessage()
        for body in bodies:
            if len(body) >= 16:
                assert body.decode("latin-1") not in text, record.getMessage()
    assert MARKER not in caplog.text and SECRET not in caplog.text
    assert json.dumps(payload("task")) not in caplog.text


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 413)])
def test_a_streamed_body_at_the_limit_is_whole_and_one_byte_more_is_refused(
    make_app: Callable[..., Flask], extra: int, status: int
) -> None:
    """Werkzeug cuts a body without Content-Length at its limit: an over-limit body must not be
    taken for a whole one (it used to be, and then failed the signature with 401)."""
    body = serialize(payload("task"))
    app = make_app(CALLBOT_MAX_CONTENT_LENGTH=len(body))
    sent = body + b" " * extra  # JSON allows trailing whitespace: signed and valid
    response = app.test_client().post(
        ROUTES["task"],
        headers={"Transfer-Encoding": "chunked", **signed(sent)},
        environ_overrides={"wsgi.input": io.BytesIO(sent), "wsgi.input_terminated": True},
    )
    assert_reply(response, status, 0 if status == 200 else 4)
    assert stored_count(app) == (1 if status == 200 else 0)
