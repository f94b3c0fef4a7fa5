"""Property-based tests (hypothesis): signing round-trips, any one-byte change fails, any signed
JSON object gets a reply below 500, and the schema raises nothing but a validation refusal."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_callbot import RequestRejected
from flask_callbot.errors import InvalidField, MalformedBody, MissingField
from flask_callbot.events import CallbackKind
from flask_callbot.routes import ROUTES
from flask_callbot.schemas import build_event, decode_body
from flask_callbot.signing import AuthHeaders, verify_signature
from flask_callbot.testing import serialize, sign_headers, task_payload

from support import NOW, SECRET, UUID, order_call_payload

ALGORITHMS = ["MD5", "SHA256"]
FAST = settings(max_examples=150, derandomize=True, deadline=None)
WITH_APP = settings(
    max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

request_ids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True)
uuids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
timestamps = st.integers(min_value=0, max_value=10**12 - 1).map(str)
secrets = st.text(min_size=1, max_size=64).filter(lambda s: "\x00" not in s)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
KNOWN = [
    "taskID", "userTaskID", "taskStatus", "sceneID", "createTs", "taskStat", "callbackType",
    "orderID", "callInfoDetail", "userPhone", "finish", "callID", "callStatus", "intents",
    "agent", "sms", "params", "recordDetail", "finishRate", "intentLevel",
]  # fmt: skip
keys = st.sampled_from(KNOWN) | st.text(max_size=10)
json_objects = st.dictionaries(keys, json_values, max_size=8)


def auth(body: bytes, secret: str, algorithm: str, **fields: str) -> AuthHeaders:
    headers = sign_headers(body, secret_key=secret, algorithm=algorithm, **fields)  # type: ignore[arg-type]
    return AuthHeaders(headers["requestID"], headers["uuid"], headers["createTs"], headers["sign"])


@FAST
@given(
    body=st.binary(max_size=512),
    secret=secrets,
    algorithm=st.sampled_from(ALGORITHMS),
    request_id=request_ids,
    uuid=uuids,
    create_ts=timestamps,
)
def test_sign_then_verify_round_trips(
    body: bytes, secret: str, algorithm: str, request_id: str, uuid: str, create_ts: str
) -> None:
    signed = auth(body, secret, algorithm, request_id=request_id, uuid=uuid, create_ts=create_ts)
    matched = verify_signature(signed, body, secret_keys=[secret], algorithms=ALGORITHMS)
    assert matched == algorithm


@FAST
@given(
    body=st.binary(min_size=1, max_size=256),
    secret=secrets,
    algorithm=st.sampled_from(ALGORITHMS),
    data=st.data(),
)
def test_any_single_byte_change_to_the_body_fails(
    body: bytes, secret: str, algorithm: str, data: st.DataObject
) -> None:
    signed = auth(body, secret, algorithm, uuid=UUID)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    byte = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(RequestRejected):
        verify_signature(signed, changed, secret_keys=[secret], algorithms=ALGORITHMS)


@FAST
@given(
    body=st.binary(max_size=128),
    algorithm=st.sampled_from(ALGORITHMS),
    field=st.sampled_from(["request_id", "uuid", "create_ts", "sign"]),
    data=st.data(),
)
def test_any_single_character_change_to_a_header_fails(
    body: bytes, algorithm: str, field: str, data: st.DataObject
) -> None:
    signed = auth(body, SECRET, algorithm, uuid=UUID, create_ts=str(NOW))
    value: str = getattr(signed, field)
    index = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
    alphabet = "0123456789ABCDEF" if field == "sign" else "0123456789abcXYZ_-"
    new = data.draw(st.sampled_from(alphabet).filter(lambda c: c.upper() != value[index].upper()))
    changed = {
        "request_id": signed.request_id,
        "uuid": signed.uuid,
        "create_ts": signed.create_ts,
        "sign": signed.sign,
        field: value[:index] + new + value[index + 1 :],
    }
    with pytest.raises(RequestRejected):
        verify_signature(AuthHeaders(**changed), body, secret_keys=[SECRET], algorithms=ALGORITHMS)


@FAST
@given(payload=json_objects, kind=st.sampled_from(list(CallbackKind)))
def test_the_schema_refuses_only_with_a_validation_error(
    payload: dict[str, Any], kind: CallbackKind
) -> None:
    with contextlib.suppress(MissingField, InvalidField):
        build_event(kind, payload, request_id="r", request_ts=NOW)


@FAST
@given(
    base=st.sampled_from(["task", "call"]),
    path=st.sampled_from(
        [
            ("taskStatus",),
            ("taskStat", "finishRate"),
            ("taskStat", "totalCall"),
            ("callInfoDetail", "callStatus"),
            ("callInfoDetail", "intents"),
            ("callInfoDetail", "agent"),
            ("callInfoDetail", "callID"),
            ("userPhone",),
            ("finish",),
        ]
    ),
    value=json_values,
)
def test_any_value_in_a_known_field_is_loaded_or_refused_cleanly(
    base: str, path: tuple[str, ...], value: Any
) -> None:
    payload = task_payload() if base == "task" else order_call_payload()
    target = payload
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    kind = CallbackKind.TASK if base == "task" else CallbackKind.CALL
    with contextlib.suppress(MissingField, InvalidField):
        build_event(kind, payload, request_id="r", request_ts=NOW)


@FAST
@given(body=st.binary(max_size=256))
def test_decoding_any_bytes_gives_an_object_or_a_malformed_body(body: bytes) -> None:
    with contextlib.suppress(MalformedBody):
        assert isinstance(decode_body(body), dict)


def test_any_correctly_signed_json_object_never_gets_a_server_error(app: Flask) -> None:
    client = app.test_client()

    @WITH_APP
    @given(
        payload=json_objects,
        kind=st.sampled_from(["task", "order", "call"]),
        style=st.sampled_from(["python", "compact"]),
    )
    def check(payload: dict[str, Any], kind: str, style: str) -> None:
        body = serialize(payload, style)
        headers = sign_headers(body, secret_key=SECRET, uuid=UUID, create_ts=NOW)
        response = client.post(ROUTES[kind], data=body, headers=headers)
        assert response.status_code < 500, response.get_data(as_text=True)
        assert set(json.loads(response.get_data())) == {"retCode", "retMsg", "responseID"}

    check()


def test_a_realistic_payload_with_hostile_fields_never_gets_a_server_error(app: Flask) -> None:
    """Closer to valid than arbitrary objects, so the store and the signals are reached too."""
    client = app.test_client()

    @WITH_APP
    @given(
        kind=st.sampled_from(["task", "call"]),
        overrides=st.dictionaries(st.sampled_from(KNOWN), json_values, max_size=4),
    )
    def check(kind: str, overrides: dict[str, Any]) -> None:
        payload = task_payload(**overrides) if kind == "task" else order_call_payload(**overrides)
        body = serialize(payload)
        headers = sign_headers(body, secret_key=SECRET, uuid=UUID, create_ts=NOW)
        response = client.post(ROUTES[kind], data=body, headers=headers)
        assert response.status_code < 500, response.get_data(as_text=True)

    check()
