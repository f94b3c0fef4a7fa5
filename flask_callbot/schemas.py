"""Payload decoding and marshmallow validation, turning a raw body into a typed event.

Decoding is strict (UTF-8, an object, no NaN, no duplicate keys); validation is tolerant of the
vendor's drift: unknown fields are ignored by the schemas at every level (they stay in
``event.raw``), optional fields default to ``None``, integers may arrive as ``"1"`` and floats as
``0``. Only the ids the pipeline needs are required.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from .errors import InvalidField, MalformedBody, MissingField
from .events import CallbackKind, TaskEvent, TaskStat, TaskStatus, coerce_status

logger = logging.getLogger("flask_callbot")

_INT64 = validate.Range(min=-(2**63), max=2**63 - 1)
_ID = validate.Length(min=1, max=255)
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
        return super()._validated(value)


def _int(key: str) -> Int64:
    return Int64(data_key=key, allow_none=True, load_default=None)


def _float(key: str) -> fields.Float:
    return fields.Float(data_key=key, allow_none=True, load_default=None)


def _str(key: str) -> fields.String:
    return fields.String(data_key=key, allow_none=True, load_default=None)


def _required_id(key: str) -> fields.String:
    return fields.String(data_key=key, required=True, validate=_ID)


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
    scene_id = _str("sceneID")
    create_ts = _int("createTs")
    stat = fields.Nested(TaskStatSchema, data_key="taskStat", allow_none=True, load_default=None)


_TASK_SCHEMA = TaskCallbackSchema()


def decode_body(body: bytes) -> dict[str, Any]:
    """Strict JSON decoding: UTF-8 only, a JSON object, no NaN/Infinity, no duplicate keys."""
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
    return payload


class _DecodeRefusal(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DecodeRefusal("body has a duplicate key")
    return result


def _refuse_constant(name: str) -> Any:
    raise _DecodeRefusal(f"body contains {name}, which is not JSON")


def load_task(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a task payload; the fields of :class:`TaskEvent` other than delivery metadata."""
    return _load(_TASK_SCHEMA, payload)


_LOADERS = {CallbackKind.TASK: load_task}
_EVENT_TYPES = {CallbackKind.TASK: TaskEvent}


def build_event(
    kind: CallbackKind, payload: dict[str, Any], *, request_id: str, request_ts: int
) -> TaskEvent:
    """Validate ``payload`` for ``kind`` and wrap it with its delivery's metadata."""
    fields_ = _LOADERS[kind](payload)
    return _EVENT_TYPES[kind](request_id=request_id, request_ts=request_ts, raw=payload, **fields_)


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
