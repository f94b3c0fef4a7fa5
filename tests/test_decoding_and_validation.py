"""Decoding and validation: strict JSON, tolerant fields, precise refusals."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from flask_callbot.errors import InvalidField, MalformedBody, MissingField
from flask_callbot.events import CallbackKind, TaskEvent, TaskStat, TaskStatus
from flask_callbot.schemas import build_event, decode_body
from flask_callbot.testing import task_payload


def build(payload: dict[str, Any]) -> TaskEvent:
    return build_event(CallbackKind.TASK, payload, request_id="r1", request_ts=5)


def test_task_payload_maps_to_event() -> None:
    payload = task_payload()
    event = build(payload)
    assert event == TaskEvent(
        request_id="r1",
        request_ts=5,
        raw=payload,
        task_id="T100",
        user_task_id="crm-campaign-42",
        status=TaskStatus.IN_PROGRESS,
        scene_id="S7",
        create_ts=1_799_990_000,
        stat=TaskStat(
            answer_order_count=3,
            finish_order_count=5,
            total_order_count=10,
            finish_rate=0.5,
            total_answer_call=3,
            total_call=6,
            answer_rate=0.5,
        ),
    )
    assert event.raw is payload


def test_integers_as_strings_and_floats_as_integer_literals() -> None:
    event = build(
        task_payload(
            taskStatus="3", callbackType="1", taskStat={"finishRate": 0, "totalCall": "12"}
        )
    )
    assert event.status is TaskStatus.COMPLETED
    assert event.stat == TaskStat(finish_rate=0.0, total_call=12)
    assert isinstance(event.stat.finish_rate, float)


def test_optional_fields_default_to_none_and_accept_null() -> None:
    event = build({"taskID": "T", "userTaskID": "U", "taskStatus": 1, "sceneID": None})
    assert (event.scene_id, event.create_ts, event.stat) == (None, None, None)
    assert build(task_payload(taskStat={"answerRate": None})).stat == TaskStat()


def test_unknown_fields_are_kept_in_raw_at_every_level() -> None:
    payload = task_payload(newTopLevel={"x": 1})
    payload["taskStat"]["newCounter"] = 7
    event = build(payload)
    assert event.raw["newTopLevel"] == {"x": 1}
    assert event.raw["taskStat"]["newCounter"] == 7
    assert event.stat is not None and event.stat.total_call == 6


def test_snake_case_keys_in_the_payload_do_not_shadow_fields() -> None:
    event = build(task_payload(task_id="evil", status=9, taskStat={"total_call": 99}))
    assert event.task_id == "T100"
    assert event.status is TaskStatus.IN_PROGRESS
    assert event.stat == TaskStat()


def test_unknown_status_is_kept_as_int_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_callbot"):
        event = build(task_payload(taskStatus=9))
    assert event.status == 9 and not isinstance(event.status, TaskStatus)
    assert "taskStatus 9" in caplog.text


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"userTaskID": "U", "taskStatus": 1}, ["taskID"]),
        ({"taskID": "T", "taskStatus": 1}, ["userTaskID"]),
        ({"taskID": "T", "userTaskID": "U"}, ["taskStatus"]),
        ({}, ["taskID", "taskStatus", "userTaskID"]),
        ({"taskID": None, "userTaskID": "U", "taskStatus": 1}, ["taskID"]),
    ],
)
def test_missing_required_fields_are_named(payload: dict[str, Any], fields: list[str]) -> None:
    with pytest.raises(MissingField) as caught:
        build(payload)
    assert caught.value.message == "missing required field(s): " + ", ".join(fields)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"taskID": 17}, "taskID"),
        ({"taskID": ""}, "taskID"),
        ({"taskID": "x" * 256}, "taskID"),
        ({"taskStatus": "paused"}, "taskStatus"),
        ({"taskStatus": 2.5}, "taskStatus"),
        ({"taskStatus": True}, "taskStatus"),
        ({"taskStatus": 2**63}, "taskStatus"),
        ({"createTs": -(2**63) - 1}, "createTs"),
        ({"sceneID": ["S"]}, "sceneID"),
        ({"callbackType": "task"}, "callbackType"),
        ({"taskStat": "none"}, "taskStat"),
        ({"taskStat": {"finishRate": "high"}}, "taskStat.finishRate"),
        ({"taskStat": {"totalCall": 2**64}}, "taskStat.totalCall"),
    ],
)
def test_wrong_values_are_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        build(task_payload(**overrides))
    assert caught.value.message.startswith(f"invalid field(s): {field} (")


def test_missing_wins_over_invalid() -> None:
    with pytest.raises(MissingField, match="taskID"):
        build({"userTaskID": 5, "taskStatus": 1})


def test_64_bit_bounds_are_inclusive() -> None:
    event = build(task_payload(createTs=2**63 - 1, taskStat={"totalCall": -(2**63)}))
    assert event.create_ts == 2**63 - 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        ('{"a": "\u00e9"}'.encode("utf-16"), "not valid UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
        (b"{'a': 1}", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "-Infinity"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"o": {"a": 1, "a": 1}}', "duplicate key"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_decode_refuses_anything_but_a_plain_object(body: bytes, message: str) -> None:
    with pytest.raises(MalformedBody, match=message):
        decode_body(body)


def test_decode_accepts_utf8_and_escapes() -> None:
    text = {"name": "外呼任务", "esc": "<&>"}
    for body in (json.dumps(text).encode(), json.dumps(text, ensure_ascii=False).encode()):
        assert decode_body(body) == text
