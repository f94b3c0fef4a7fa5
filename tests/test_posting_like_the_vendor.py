"""flask_callbot.testing: serialisations, payload factories, CallbotClient; the route helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_callbot import CallEvent, ConfigurationError, OrderEvent, TaskEvent, create_blueprint
from flask_callbot import get_store as store_of
from flask_callbot.events import CallbackKind
from flask_callbot.routes import ROUTES, callback_url, find_prefix, split_callback_url
from flask_callbot.schemas import build_event, decode_body
from flask_callbot.state import get_state
from flask_callbot.testing import (
    CallbotClient,
    SentSignal,
    call_payload,
    order_payload,
    serialize,
    sign_headers,
    task_payload,
)

from support import NOW, SECRET, UUID, Clock, assert_reply

FACTORIES: dict[str, Callable[..., dict[str, Any]]] = {
    "task": task_payload,
    "order": order_payload,
    "call": call_payload,
}


def test_python_serialization_is_json_dumps_defaults() -> None:
    payload = {"customerId": "1234", "appKey": "xxxxxx", "status": 1, "name": "王"}
    assert serialize(payload) == serialize(payload, "python")
    assert serialize(payload, "python") == (
        b'{"customerId": "1234", "appKey": "xxxxxx", "status": 1, "name": "\\u738b"}'
    )


def test_compact_serialization_is_raw_utf8_without_spaces() -> None:
    payload = {"customerId": "1234", "appKey": "xxxxxx", "status": 1, "name": "王"}
    assert serialize(payload, "compact") == (
        '{"customerId":"1234","appKey":"xxxxxx","status":1,"name":"王"}'.encode()
    )


def test_unknown_serialization_is_refused() -> None:
    with pytest.raises(ValueError, match="python, compact"):
        serialize({}, "pretty")


@pytest.mark.parametrize("kind", ["task", "order", "call"])
def test_factories_build_valid_events(kind: str) -> None:
    payload = FACTORIES[kind]()
    event = build_event(
        CallbackKind(kind), decode_body(serialize(payload)), request_id="r", request_ts=NOW
    )
    expected = {"task": TaskEvent, "order": OrderEvent, "call": CallEvent}[kind]
    assert type(event) is expected


def test_task_payload_statistics_add_up() -> None:
    stat = task_payload()["taskStat"]
    assert stat["finishRate"] == round(stat["finishOrderCount"] / stat["totalOrderCount"], 2)
    assert stat["answerRate"] == round(stat["totalAnswerCall"] / stat["totalCall"], 2)
    assert stat["answerOrderCount"] <= stat["finishOrderCount"] <= stat["totalOrderCount"]


@pytest.mark.parametrize("kind", ["order", "call"])
def test_order_and_call_payloads_are_realistic(kind: str) -> None:
    payload = FACTORIES[kind]()
    detail = payload["callInfoDetail"]
    assert payload["callbackType"] == {"order": 2, "call": 3}[kind]
    assert len(detail["intents"]) >= 2
    assert all(any("\u4e00" <= c <= "\u9fff" for c in i["intentName"]) for i in detail["intents"])
    assert len(detail["sms"]) == 1
    assert all(value is not None for value in detail["agent"].values())
    assert {param["name"] for param in detail["params"]} == {"product", "discount"}
    # The vendor documents callingNumber and lineAddress on the call page only.
    assert ("callingNumber" in detail) is (kind == "call")


@pytest.mark.parametrize("kind", ["task", "order", "call"])
def test_overrides_replace_top_level_keys_and_dicts_are_fresh(kind: str) -> None:
    factory = FACTORIES[kind]
    changed = factory(taskID="T9", extra={"a": 1})
    assert changed["taskID"] == "T9"
    assert changed["extra"] == {"a": 1}
    pristine = factory()
    mutated = factory()
    mutated["taskID"] = "mutated"
    for value in mutated.values():
        if isinstance(value, dict):
            value.clear()  # taskStat, callInfoDetail: nested dicts are fresh too
    assert factory() == pristine
    assert factory()["taskID"] == "T100"


def test_client_posts_the_exact_signed_bytes(
    app: Flask, callbot_client: CallbotClient, callbot_signals: list[SentSignal]
) -> None:
    for style, request_id in (("python", "r-python"), ("compact", "r-compact")):
        payload = call_payload()
        payload["callInfoDetail"]["callID"] = f"call-{style}"  # two calls: each is news
        reply = callbot_client.post("call", payload, serialization=style, request_id=request_id)
        assert_reply(reply, 200, 0)
        stored = store_of(app).get_delivery(request_id)
        assert stored.body == serialize(payload, style)
        assert stored.headers["createTs"] == str(NOW)  # stamped by the app's clock
    assert "王小明".encode() in store_of(app).get_delivery("r-compact").body
    assert [s.name for s in callbot_signals].count("call-received") == 2


def test_client_posts_bytes_unchanged(app: Flask, callbot_client: CallbotClient) -> None:
    body = b'{ "taskID" : "T1",\n  "userTaskID": "u", "taskStatus": 1 }'
    assert_reply(callbot_client.post("task", body, request_id="raw"), 200, 0)
    assert store_of(app).get_delivery("raw").body == body


def test_client_options(app: Flask, callbot_client: CallbotClient) -> None:
    reply = callbot_client.post(
        "order",
        order_payload(),
        algorithm="SHA256",
        algorithm_header=True,
        request_id="sha",
        create_ts=NOW - 10,
    )
    assert_reply(reply, 200, 0)
    stored = store_of(app).get_delivery("sha")
    assert stored.headers["algorithm"] == "SHA256"
    assert len(stored.headers["sign"]) == 64
    assert stored.request_ts == NOW - 10
    tampered = callbot_client.post("task", task_payload(), headers={"sign": "0" * 32})
    assert_reply(tampered, 401, 6)
    missing = callbot_client.post("task", task_payload(), headers={"uuid": ""})
    assert_reply(missing, 401, 6001)
    assert reply.request.headers["Content-Type"] == "application/json"


def test_client_rejects_an_unknown_kind(callbot_client: CallbotClient) -> None:
    with pytest.raises(ValueError, match="sms"):
        callbot_client.post("sms", task_payload())


def test_for_app_reads_prefix_first_key_and_clock(tmp_path: Any) -> None:
    clock = Clock(NOW + 5)
    app = Flask("prefixed", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY=[SECRET, "an-older-key-still-accepted"],
        CALLBOT_UUID=UUID,
        CALLBOT_DATABASE_URL="sqlite://",
    )
    app.register_blueprint(create_blueprint(name="vendor", clock=clock), url_prefix="/hooks/")
    client = CallbotClient.for_app(app)
    assert (client.secret_key, client.uuid, client.prefix) == (SECRET, UUID, "/hooks")
    assert client.url("order") == "/hooks/api/v3/orderCallback"
    assert_reply(client.post("task", task_payload(), request_id="p"), 200, 0)
    assert store_of(app).get_delivery("p").request_ts == NOW + 5
    get_state(app).store.dispose()


def test_for_app_needs_the_blueprint(tmp_path: Any) -> None:
    app = Flask("bare", instance_path=str(tmp_path))
    with pytest.raises(ConfigurationError, match="create_blueprint"):
        CallbotClient.for_app(app)
    with pytest.raises(ConfigurationError, match="create_blueprint"):
        find_prefix(app)


def test_find_prefix_ignores_lookalike_routes(tmp_path: Any) -> None:
    app = Flask("lookalike", instance_path=str(tmp_path))
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID, CALLBOT_DATABASE_URL="sqlite://"
    )
    app.add_url_rule(
        "/a/api/v3/taskCallback", endpoint="mine.task_callback", view_func=lambda: "no"
    )
    app.register_blueprint(create_blueprint(), url_prefix="/z")
    assert find_prefix(app) == "/z"
    get_state(app).store.dispose()


@pytest.mark.parametrize(
    ("url", "base", "kind"),
    [
        ("http://h:5000", "http://h:5000", None),
        ("http://h:5000/hooks/", "http://h:5000/hooks", None),
        ("https://h/hooks/api/v3/orderCallback", "https://h/hooks", CallbackKind.ORDER),
        ("http://h/api/v3/callCallback/", "http://h", CallbackKind.CALL),
        ("http://h/api/v3/taskCallback?x=1", "http://h", CallbackKind.TASK),
    ],
)
def test_split_callback_url(url: str, base: str, kind: CallbackKind | None) -> None:
    assert split_callback_url(url) == (base, kind)


@pytest.mark.parametrize("url", ["ftp://h/x", "h:5000", "/api/v3/taskCallback", "http://"])
def test_split_callback_url_needs_http(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        split_callback_url(url)


def test_callback_url() -> None:
    expected = "http://h/hooks" + ROUTES[CallbackKind.TASK]
    assert callback_url("http://h/hooks/", CallbackKind.TASK) == expected


def test_sign_headers_defaults_and_algorithm_header() -> None:
    headers = sign_headers(b"{}", secret_key=SECRET, uuid=UUID, algorithm="sha256")
    assert set(headers) == {"requestID", "uuid", "createTs", "sign"}
    assert len(headers["requestID"]) == 32
    assert len(headers["sign"]) == 64
    with_header = sign_headers(b"{}", secret_key=SECRET, uuid=UUID, algorithm_header=True)
    assert with_header["algorithm"] == "MD5"
    assert json.loads(json.dumps(with_header)) == with_header
