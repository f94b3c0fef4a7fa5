"""Payload decoding and marshmallow validation, turning a raw body into a typed event.

Decoding is strict (UTF-8, an object, no NaN, no duplicate keys); validation is tolerant of the
vendor's drift: unknown fields are ignored by the schemas at every level (they stay in
``event.raw``), optional fields default to ``None``, integers may arrive as ``"1"`` and floats as
``0``. Only the ids the pipeline needs are required.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load, validate

from .errors import InvalidField, MalformedBody, MissingField
from .events import (
    Agent,
    CallbackKind,
    CallEvent,
    CallInfo,
    Event,
    EventSource,
    Intent,
    OrderEvent,
    Param,
    Sms,
    TaskEvent,
    TaskStat,
    TaskStatus,
    coerce_status,
)

logger = logging.getLogger("flask_callbot")

_INT64 = validate.Range(min=-(2**63), max=2**63 - 1)
_ID = validate.Length(min=1, max=255)
#: The longest value the store keeps for the short text fields (names, ids, causes).
_SHORT = validate.Length(max=255)
_PHONE = validate.Length(max=64)

#: The only string forms of numbers accepted: ASCII digits, an optional minus sign; no spaces,
#: underscores, plus signs or non-ASCII digits (Python's ``int()`` and ``float()`` take all of
#: those). The OpenAPI document publishes the same forms.
INTEGER_STRING = r"-?[0-9]+"
FLOAT_STRING = r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?"
_INTEGER_STRING = re.compile(INTEGER_STRING)
_FLOAT_STRING = re.compile(FLOAT_STRING)
# A JSON "\uD800"-"\uDFFF" escape: the only way a lone surrogate gets into the decoded text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_MISSING_MESSAGES = frozenset(
    {
        fields.Field.default_error_messages["required"],
        fields.Field.default_error_messages["null"],
    }
)


class Int64(fields.Integer):
    """An integer that fits in 64 bits, given as a number or a digit string; ``2.5`` is refused."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=_INT64, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        if isinstance(value, str) and not _INTEGER_STRING.fullmatch(value):
            raise self.make_error("invalid")
        return super()._validated(value)


class FloatField(fields.Float):
    """A finite float, given as a number or a plain decimal string (``"0.5"``, not ``" 1_0"``)."""

    def _validated(self, value: Any) -> float:
        if isinstance(value, str) and not _FLOAT_STRING.fullmatch(value):
            raise self.make_error("invalid")
        return super()._validated(value)


class Text(fields.String):
    """A string without NUL characters, which PostgreSQL cannot store in a text column."""

    default_error_messages = {"nul": "Must not contain NUL characters."}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise self.make_error("nul")
        return text


def _int(key: str) -> Int64:
    return Int64(data_key=key, allow_none=True, load_default=None)


def _float(key: str) -> FloatField:
    return FloatField(data_key=key, allow_none=True, load_default=None)


def _str(key: str, *, validate: validate.Validator | None = None) -> Text:
    return Text(data_key=key, allow_none=True, load_default=None, validate=validate)


def _bool(key: str) -> fields.Boolean:
    return fields.Boolean(data_key=key, allow_none=True, load_default=None)


def _list(key: str, schema: type[Schema]) -> fields.Nested:
    """A list of nested objects; absent or null reads as an empty tuple.

    ``Nested(many=True)`` loads the whole list in one pass (``List(Nested)`` runs a full load per
    item: three times slower on a call with many intents).
    """
    return fields.Nested(schema, many=True, data_key=key, allow_none=True, load_default=None)


def _required_id(key: str) -> Text:
    return Text(data_key=key, required=True, validate=_ID)


class StatusField(Int64):
    """``taskStatus``: a :class:`TaskStatus`, or the plain int (logged) for a value it lacks."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        number = super()._deserialize(value, attr, data, **kwargs)
        status = coerce_status(number)
        if not isinstance(status, TaskStatus):
            logger.warning("callbot: taskStatus %r is not a known TaskStatus; kept as int", number)
        return status


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class TaskStatSchema(_Lenient):
    answer_order_count = _int("answerOrderCount")
    finish_order_count = _int("finishOrderCount")
    total_order_count = _int("totalOrderCount")
    finish_rate = _float("finishRate")
    total_answer_call = _int("totalAnswerCall")
    total_call = _int("totalCall")
    answer_rate = _float("answerRate")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> TaskStat:
        return TaskStat(**data)


class TaskCallbackSchema(_Lenient):
    """The taskCallback body."""

    callback_type = _int("callbackType")
    task_id = _required_id("taskID")
    user_task_id = _required_id("userTaskID")
    status = StatusField(data_key="taskStatus", required=True)
    scene_id = _str("sceneID", validate=_SHORT)
    create_ts = _int("createTs")
    stat = fields.Nested(TaskStatSchema, data_key="taskStat", allow_none=True, load_default=None)


class IntentSchema(_Lenient):
    intent_id = _str("intentID")
    intent_tag = _str("intentTag")
    intent_name = _str("intentName")
    intent_level = _int("intentLevel")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Intent:
        return Intent(**data)


class SmsSchema(_Lenient):
    sms_send_ts = _int("smsSendTs")
    sys_message_id = _str("sysMessageID")
    sms_content = _str("smsContent")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Sms:
        return Sms(**data)


class AgentSchema(_Lenient):
    agent_name = _str("agentName")
    agent_group = _str("agentGroup")
    agent_label = _str("agentLabel")
    agent_call_status = _int("agentCallStatus")
    agent_call_elapsed = _int("agentCallElapsed")
    manual_call_start = _int("manualCallStart")
    manual_call_answer = _int("manualCallAnswer")
    manual_call_end = _int("manualCallEnd")
    manual_hangup_by = _int("manualHangupBy")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Agent:
        return Agent(**data)


class ParamSchema(_Lenient):
    name = _str("name")
    value = _str("value")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Param:
        return Param(**data)


class CallInfoSchema(_Lenient):
    """``callInfoDetail``; only ``callID`` is required."""

    call_id = _required_id("callID")
    call_status = _int("callStatus")
    call_start_ts = _int("callStartTs")
    call_answer_ts = _int("callAnswerTs")
    call_end_ts = _int("callEndTs")
    call_duration = _int("callDuration")
    call_audio_url = _str("callAudioUrl")
    hangup_cause = _str("hangupCause", validate=_SHORT)
    term_sip_code = _str("termSipCode")
    calling_number = _str("callingNumber")
    line_address = _str("lineAddress")
    intents = _list("intents", IntentSchema)
    sms = _list("sms", SmsSchema)
    agent = fields.Nested(AgentSchema, data_key="agent", allow_none=True, load_default=None)
    params = _list("params", ParamSchema)
    record_detail = fields.List(
        fields.Raw(), data_key="recordDetail", allow_none=True, load_default=None
    )

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> CallInfo:
        for name in ("intents", "sms", "params", "record_detail"):
            data[name] = tuple(data[name] or ())
        return CallInfo(**data)


class NumberCallbackSchema(_Lenient):
    """The orderCallback and callCallback body (the same shape)."""

    callback_type = _int("callbackType")
    order_id = _required_id("orderID")
    task_id = _required_id("taskID")
    call = fields.Nested(CallInfoSchema, data_key="callInfoDetail", required=True)
    user_phone = _str("userPhone", validate=_PHONE)
    user_name = _str("userName")
    scene_id = _str("sceneID", validate=_SHORT)
    user_task_id = _str("userTaskID", validate=_SHORT)
    finish = _bool("finish")
    other = _str("other")

    @pre_load
    def _name_the_call_id(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # An absent callInfoDetail is reported as its required callInfoDetail.callID.
        if isinstance(data, dict) and data.get("callInfoDetail") is None:
            return {**data, "callInfoDetail": {}}
        return data


_TASK_SCHEMA = TaskCallbackSchema()
_NUMBER_SCHEMA = NumberCallbackSchema()


def decode_body(body: bytes) -> dict[str, Any]:
    """Strict JSON decoding: UTF-8 only, a JSON object, no NaN/Infinity, no duplicate keys, no
    lone surrogate escapes (``"\\ud800"`` is valid JSON but no Unicode text: nothing could store
    or encode it)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("body is not valid UTF-8") from None
    try:
        payload = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        reason = exc.args[0] if isinstance(exc, _DecodeRefusal) else "body is not valid JSON"
        raise MalformedBody(reason) from None
    if not isinstance(payload, dict):
        raise MalformedBody("body is not a JSON object")
    if _SURROGATE_ESCAPE.search(text) and not _is_unicode(payload):
        raise MalformedBody("body has a \\u escape of a lone surrogate, which is not text")
    return payload


def _is_unicode(value: Any) -> bool:
    """Whether every string in a decoded JSON value (keys included) is encodable text.

    Only called when the body has a surrogate escape: escaped pairs (an emoji as Python's
    ``json.dumps`` writes it) decode to one character and are fine.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


class _DecodeRefusal(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DecodeRefusal("body has a duplicate key")
    return result


def _refuse_constant(name: str) -> Any:
    raise _DecodeRefusal(f"body contains {name}, which is not JSON")


_SCHEMAS: Mapping[CallbackKind, tuple[Schema, type[Event]]] = {
    CallbackKind.TASK: (_TASK_SCHEMA, TaskEvent),
    CallbackKind.ORDER: (_NUMBER_SCHEMA, OrderEvent),
    CallbackKind.CALL: (_NUMBER_SCHEMA, CallEvent),
}


def build_event(
    kind: CallbackKind,
    payload: dict[str, Any],
    *,
    request_id: str,
    request_ts: int,
    source: EventSource = "callback",
) -> Event:
    """Validate ``payload`` for ``kind`` and wrap it with its delivery's metadata."""
    schema, event_type = _SCHEMAS[kind]
    fields_ = _load(schema, payload)
    return event_type(
        request_id=request_id, request_ts=request_ts, raw=payload, source=source, **fields_
    )


def _load(schema: Schema, payload: Mapping[str, Any]) -> dict[str, Any]:
    try:
        data: dict[str, Any] = schema.load(payload)
    except ValidationError as exc:
        raise _refusal(exc) from None
    data.pop("callback_type", None)
    return data


def _refusal(exc: ValidationError) -> MissingField | InvalidField:
    """Missing required fields answer retCode 2, any other problem 4; the message names them all."""
    missing, invalid = [], []
    for path, message in _flatten(exc.messages):
        if message in _MISSING_MESSAGES:
            missing.append(path)
        else:
            invalid.append(f"{path} ({message.rstrip('.')})")
    if missing:
        return MissingField("missing required field(s): " + ", ".join(sorted(missing)))
    return InvalidField("invalid field(s): " + ", ".join(sorted(invalid)))


def _flatten(messages: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":  # marshmallow's key for "this nested value itself"
                yield from _flatten(value, prefix)
            else:
                yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(messages, list):
        for message in messages:
            yield from _flatten(message, prefix)
    else:
        yield prefix or "body", str(messages)
