"""The OpenAPI document: valid 3.1, and accurate: the app's real replies and its real validation
agree with what the document says."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from flask_callbot import RequestRejected, create_blueprint, signals
from flask_callbot.events import CallbackKind
from flask_callbot.openapi import build_openapi
from flask_callbot.schemas import build_event, decode_body
from flask_callbot.signing import parse_auth_headers
from flask_callbot.testing import CallbotClient, serialize, task_payload

from support import NOW, SECRET, UUID, order_call_payload

STATUSES = ["200", "400", "401", "409", "413", "500", "503"]
URI = "urn:callbot-openapi"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_openapi()


def validator(document: dict[str, Any], pointer: str) -> Draft202012Validator:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(URI, resource)
    return Draft202012Validator({"$ref": f"{URI}#{pointer}"}, registry=registry)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == "0.1.0"
    assert list(document["paths"]) == [
        "/api/v3/taskCallback",
        "/api/v3/orderCallback",
        "/api/v3/callCallback",
    ]


def test_paths_follow_the_prefix(tmp_path: Path) -> None:
    app = Flask("documented", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID, CALLBOT_DATABASE_URL="sqlite://"
    )
    app.register_blueprint(create_blueprint(), url_prefix="/hooks")
    assert next(iter(build_openapi(app)["paths"])) == "/hooks/api/v3/taskCallback"
    assert next(iter(build_openapi(app, prefix="/x")["paths"])) == "/x/api/v3/taskCallback"
    app.extensions["callbot"].store.dispose()


def test_each_operation(document: dict[str, Any]) -> None:
    for path, body in (("task", "TaskCallback"), ("order", "NumberCallback")):
        operation = document["paths"][f"/api/v3/{path}Callback"]["post"]
        assert operation["operationId"] == f"{path}Callback"
        refs = [p["$ref"].rsplit("/", 1)[1] for p in operation["parameters"]]
        assert refs == ["requestID", "uuid", "createTs", "sign", "algorithm"]
        content = operation["requestBody"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{body}"}
        assert operation["requestBody"]["required"] is True
        assert sorted(operation["responses"]) == STATUSES
    parameters = document["components"]["parameters"]
    assert [name for name, p in parameters.items() if p["required"]] == [
        "requestID", "uuid", "createTs", "sign"
    ]  # fmt: skip
    assert all(p["in"] == "header" for p in parameters.values())


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("requestID", "abc-123_X.y"),
        ("requestID", "a" * 128),
        ("requestID", "a" * 129),
        ("requestID", "a&b"),
        ("requestID", "a b"),
        ("uuid", "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR"),
        ("uuid", "a.b"),
        ("uuid", "a" * 65),
        ("createTs", "1700000000"),
        ("createTs", "-1"),
        ("createTs", "1e9"),
        ("createTs", "1" * 13),
        ("sign", "a" * 32),
        ("sign", "F" * 64),
        ("sign", "a" * 33),
        ("sign", "g" * 32),
        ("algorithm", "MD5"),
        ("algorithm", "sha256"),
        ("algorithm", "SHA1"),
    ],
)
def test_header_patterns_agree_with_the_receiver(
    document: dict[str, Any], header: str, value: str
) -> None:
    pattern = document["components"]["parameters"][header]["schema"]["pattern"]
    documented = re.search(pattern, value) is not None
    headers = {"requestID": "r", "uuid": "u", "createTs": "1", "sign": "a" * 32, header: value}
    try:
        parse_auth_headers(headers)
        accepted = True
    except RequestRejected:
        accepted = False
    assert documented is accepted


def accepts(kind: CallbackKind, payload: dict[str, Any]) -> bool:
    try:
        build_event(kind, decode_body(serialize(payload)), request_id="r", request_ts=NOW)
    except RequestRejected:
        return False
    return True


def without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


def with_call(**fields: Any) -> dict[str, Any]:
    payload = order_call_payload()
    payload["callInfoDetail"] = {**payload["callInfoDetail"], **fields}
    return payload


TASK_CASES: list[dict[str, Any]] = [
    task_payload(),
    task_payload(callbackType="1"),
    task_payload(callbackType=None),
    task_payload(callbackType=2.0),
    task_payload(callbackType="x"),
    task_payload(callbackType=2.5),
    task_payload(callbackType=True),
    task_payload(taskStatus="3"),
    task_payload(taskStatus=9),
    task_payload(taskStatus=None),
    task_payload(taskStatus="abc"),
    without(task_payload(), "taskStatus"),
    without(task_payload(), "userTaskID"),
    task_payload(taskID=""),
    task_payload(taskID=7),
    task_payload(taskID="x" * 255),
    task_payload(taskID="x" * 256),
    task_payload(taskStat=None),
    task_payload(taskStat="x"),
    task_payload(taskStat={"finishRate": "0.5", "totalCall": "12"}),
    task_payload(taskStat={"finishRate": True}),
    task_payload(taskStat={"finishRate": 0, "answerRate": 1}),
    task_payload(taskStat={"totalCall": 2**63}),
    task_payload(taskStat={"totalCall": 2**63 - 1}),
    task_payload(taskStat={"totalCall": -(2**63) - 1}),
    task_payload(newField={"any": ["thing"]}),
]
ORDER_CALL_CASES: list[dict[str, Any]] = [
    order_call_payload(),
    order_call_payload(callbackType=3),
    order_call_payload(finish="yes"),
    order_call_payload(finish=0),
    order_call_payload(finish=2),
    order_call_payload(finish="maybe"),
    order_call_payload(finish=None),
    order_call_payload(orderID=""),
    order_call_payload(orderID=None),
    order_call_payload(userPhone=8613800138000),
    order_call_payload(callInfoDetail=None),
    without(order_call_payload(), "callInfoDetail"),
    order_call_payload(callInfoDetail={"callID": "c"}),
    order_call_payload(callInfoDetail={"callID": ""}),
    order_call_payload(callInfoDetail="c"),
    with_call(intents=None),
    with_call(intents="x"),
    with_call(intents=[None]),
    with_call(intents=[1]),
    with_call(intents=[{"intentLevel": "2"}]),
    with_call(intents=[{"intentLevel": 2.5}]),
    with_call(recordDetail=[{"a": 1}, "free", 3]),
    with_call(recordDetail="x"),
    with_call(agent=None),
    with_call(agent={"agentName": None, "manualHangupBy": None}),
    with_call(agent=[]),
    with_call(callStatus="1"),
    with_call(callDuration=True),
    with_call(params=[{"name": "a", "value": 1}]),
    with_call(sms=[{"smsSendTs": "1799999070"}]),
]


@pytest.mark.parametrize("case", range(len(TASK_CASES)))
def test_the_task_schema_agrees_with_the_receiver(document: dict[str, Any], case: int) -> None:
    payload = TASK_CASES[case]
    documented = validator(document, "/components/schemas/TaskCallback").is_valid(payload)
    assert documented is accepts(CallbackKind.TASK, payload), payload


@pytest.mark.parametrize("case", range(len(ORDER_CALL_CASES)))
def test_the_number_schema_agrees_with_the_receiver(document: dict[str, Any], case: int) -> None:
    payload = ORDER_CALL_CASES[case]
    documented = validator(document, "/components/schemas/NumberCallback").is_valid(payload)
    for kind in (CallbackKind.ORDER, CallbackKind.CALL):
        assert documented is accepts(kind, payload), payload


def test_both_outcomes_are_covered() -> None:
    """The agreement tests mean something only if both answers occur."""
    task = [accepts(CallbackKind.TASK, p) for p in TASK_CASES]
    order_call = [accepts(CallbackKind.ORDER, p) for p in ORDER_CALL_CASES]
    assert 5 < sum(task) < len(task) - 5
    assert 5 < sum(order_call) < len(order_call) - 5


def test_real_replies_match_the_documented_responses(
    make_app: Callable[..., Flask], document: dict[str, Any]
) -> None:
    app = make_app(CALLBOT_MAX_CONTENT_LENGTH=4096)
    client = CallbotClient.for_app(app)

    def boom(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver down")

    replies = [
        client.post("task", task_payload(), request_id="ok"),
        client.post("task", task_payload(), request_id="ok"),  # a duplicate
        client.post("task", b"not json"),
        client.post("task", without(task_payload(), "taskID")),
        client.post("task", task_payload(taskStatus="x")),
        client.post("task", task_payload(), headers={"sign": ""}),
        client.post("task", task_payload(), headers={"sign": "0" * 32}),
        client.post("task", task_payload(), headers={"uuid": "someone"}),
        client.post("task", task_payload(taskStatus=3), request_id="ok"),  # reused requestID
        client.post("order", order_call_payload(padding="x" * 5000)),
    ]
    signals.order_received.connect(boom, app, weak=False)
    try:
        replies.append(client.post("order", order_call_payload()))
    finally:
        signals.order_received.disconnect(boom, app)
    broken = make_app(CALLBOT_DATABASE_URL="sqlite:////nonexistent-dir/callbot.sqlite3")
    replies.append(CallbotClient.for_app(broken).post("call", order_call_payload()))
    seen = set()
    for reply in replies:
        status = str(reply.status_code)
        errors = [
            e.message for e in reply_validator(document, status).iter_errors(reply.get_json())
        ]
        assert errors == [], (status, reply.get_json())
        seen.add(status)
    assert seen == set(STATUSES)
    wrong_code = {"retCode": 7, "retMsg": "x", "responseID": "0" * 32}
    assert not reply_validator(document, "200").is_valid(wrong_code)
    extra_key = {"retCode": 0, "retMsg": "x", "responseID": "0" * 32, "more": 1}
    assert not reply_validator(document, "200").is_valid(extra_key)


def reply_validator(document: dict[str, Any], status: str) -> Draft202012Validator:
    """The documented reply schema for ``status`` on every route (they share the components)."""
    ref = document["paths"]["/api/v3/taskCallback"]["post"]["responses"][status]["$ref"]
    name = ref.rsplit("/", 1)[1]
    return validator(document, f"/components/responses/{name}/content/application~1json/schema")


def test_the_command_prints_or_writes_the_document(app: Flask, tmp_path: Path) -> None:
    runner = app.test_cli_runner()
    printed = runner.invoke(args=["callbot", "openapi"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == build_openapi(app)
    target = tmp_path / "openapi.json"
    written = runner.invoke(args=["callbot", "openapi", "--output", str(target), "--prefix", "/h"])
    assert written.exit_code == 0, written.output
    assert written.output == f"wrote {target}\n"
    assert "/h/api/v3/callCallback" in json.loads(target.read_text(encoding="utf-8"))["paths"]


def test_without_apispec_the_extra_is_named(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apispec", None)  # as if it were not installed
    result = app.test_cli_runner().invoke(args=["callbot", "openapi"])
    assert result.exit_code == 1
    assert "needs apispec: pip install 'flask-callbot[openapi]'" in result.output
    with pytest.raises(ImportError, match=r"flask-callbot\[openapi\]"):
        build_openapi()
