"""Order and call callbacks: typed events from drifting payloads, signals, the order record."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from flask_callbot import (
    Agent,
    CallEvent,
    CallInfo,
    Intent,
    OrderEvent,
    Param,
    Sms,
    get_store,
    signals,
)
from flask_callbot.errors import InvalidField, MissingField
from flask_callbot.events import CallbackKind, timestamp_to_datetime
from flask_callbot.schemas import build_event
from flask_callbot.testing import SentSignal

from support import NOW, Sender, assert_reply, names, order_call_payload

EVENT_TYPES = {"order": OrderEvent, "call": CallEvent}


def build(kind: str, payload: dict[str, Any]) -> Any:
    return build_event(CallbackKind(kind), payload, request_id="r1", request_ts=NOW)


@pytest.mark.parametrize("kind", ["order", "call"])
def test_realistic_payload_maps_to_event(kind: str) -> None:
    payload = order_call_payload()
    event = build(kind, payload)
    assert type(event) is EVENT_TYPES[kind]
    assert event.raw is payload
    assert (event.order_id, event.task_id, event.user_task_id) == (
        "order-0001",
        "T100",
        "crm-campaign-42",
    )
    assert (event.user_phone, event.user_name, event.finish) == ("8613800138000", "王小明", True)
    assert event.other == "crm-contact=991"
    call = event.call
    assert call == CallInfo(
        call_id="call-0001",
        call_status=1,
        call_start_ts=1_799_999_000,
        call_answer_ts=1_799_999_005,
        call_end_ts=1_799_999_065,
        call_duration=60,
        call_audio_url="https://records.example/call-0001.wav",
        hangup_cause="NORMAL_CLEARING",
        term_sip_code="200",
        calling_number="02150000000",
        line_address="sip-line-3",
        intents=(
            Intent(intent_id="i1", intent_tag="interested", intent_name="有意向", intent_level=1),
            Intent(intent_id="i2", intent_tag="callback", intent_name="要求回电", intent_level=2),
            Intent(intent_id="i3", intent_tag="price", intent_name="询问价格", intent_level=3),
        ),
        sms=(
            Sms(
                sms_send_ts=1_799_999_070, sys_message_id="m-1", sms_content="您好，感谢您的接听！"
            ),
        ),
        agent=Agent(
            agent_name="李雷",
            agent_group="sales",
            agent_label="senior",
            agent_call_status=1,
            agent_call_elapsed=42,
            manual_call_start=1_799_999_020,
            manual_call_answer=1_799_999_021,
            manual_call_end=1_799_999_063,
            manual_hangup_by=2,
        ),
        params=(Param(name="product", value="宽带套餐"), Param(name="discount", value="20%")),
    )
    assert call.record_detail == ({"role": "bot", "text": "您好"},)
    assert call.param_map == {"product": "宽带套餐", "discount": "20%"}
    assert call.intent_tags == ("interested", "callback", "price")
    assert call.started_at == datetime(2027, 1, 15, 7, 43, 20, tzinfo=UTC)
    assert call.answered_at == datetime(2027, 1, 15, 7, 43, 25, tzinfo=UTC)
    assert call.ended_at == datetime(2027, 1, 15, 7, 44, 25, tzinfo=UTC)
    assert call.sms[0].sent_at == datetime(2027, 1, 15, 7, 44, 30, tzinfo=UTC)
    # Unknown fields at every level stay reachable through raw.
    assert event.raw["newTopLevelField"] == {"since": "2026"}
    detail = event.raw["callInfoDetail"]
    assert detail["newCallField"] == 1
    assert detail["intents"][0]["newIntentField"] == "x"
    assert detail["sms"][0]["newSmsField"] is True
    assert "newAgentField" in detail["agent"]
    assert detail["params"][1]["newParamField"] == 0


def test_callback_type_as_integer_or_string_or_absent() -> None:
    for value in (2, "2", "3", 3):
        assert build("order", order_call_payload(callbackType=value)).order_id == "order-0001"
    payload = order_call_payload()
    del payload["callbackType"]
    assert build("call", payload).order_id == "order-0001"


def test_null_or_partial_agent_and_minimal_call() -> None:
    payload = order_call_payload()
    payload["callInfoDetail"]["agent"] = None
    assert build("call", payload).call.agent is None
    payload["callInfoDetail"]["agent"] = {"agentName": None, "manualHangupBy": None}
    assert build("call", payload).call.agent == Agent()
    minimal = {"orderID": "o", "taskID": "t", "callInfoDetail": {"callID": "c"}}
    call = build("order", minimal).call
    assert call == CallInfo(call_id="c")
    assert (call.intents, call.sms, call.params, call.agent) == ((), (), (), None)
    assert (call.started_at, call.answered_at, call.ended_at) == (None, None, None)
    assert call.param_map == {}


def test_null_lists_read_as_empty() -> None:
    payload = order_call_payload()
    payload["callInfoDetail"].update(intents=None, sms=None, params=None, recordDetail=None)
    call = build("call", payload).call
    assert (call.intents, call.sms, call.params, call.record_detail) == ((), (), (), ())


def test_zero_timestamps_are_none() -> None:
    payload = order_call_payload()
    payload["callInfoDetail"].update(callAnswerTs=0, callEndTs=0)
    call = build("call", payload).call
    assert (call.call_answer_ts, call.answered_at, call.ended_at) == (0, None, None)


def test_millisecond_timestamps_are_recognised() -> None:
    assert timestamp_to_datetime(1_799_999_000_123) == datetime(
        2027, 1, 15, 7, 43, 20, 123000, tzinfo=UTC
    )
    assert timestamp_to_datetime(2**63 - 1) is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("orderID"), "missing required field(s): orderID"),
        (lambda p: p.pop("taskID"), "missing required field(s): taskID"),
        (
            lambda p: p["callInfoDetail"].pop("callID"),
            "missing required field(s): callInfoDetail.callID",
        ),
        (lambda p: p.pop("callInfoDetail"), "missing required field(s): callInfoDetail.callID"),
        (
            lambda p: p.update(callInfoDetail=None),
            "missing required field(s): callInfoDetail.callID",
        ),
    ],
)
def test_required_fields(mutate: Any, message: str) -> None:
    payload = order_call_payload()
    mutate(payload)
    with pytest.raises(MissingField) as caught:
        build("order", payload)
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.update(callInfoDetail="call-1"), "callInfoDetail"),
        (lambda p: p["callInfoDetail"].update(intents={"intentID": "i"}), "callInfoDetail.intents"),
        (lambda p: p["callInfoDetail"].update(agent=[]), "callInfoDetail.agent"),
        (
            lambda p: p["callInfoDetail"]["sms"][0].update(smsSendTs="soon"),
            "callInfoDetail.sms.0.smsSendTs",
        ),
        (lambda p: p["callInfoDetail"]["params"].append("x=1"), "callInfoDetail.params.2"),
        (lambda p: p.update(userPhone=8613800138000), "userPhone"),
    ],
)
def test_wrong_values_are_named(mutate: Any, field: str) -> None:
    payload = order_call_payload()
    mutate(payload)
    with pytest.raises(InvalidField) as caught:
        build("call", payload)
    assert caught.value.message.startswith(f"invalid field(s): {field} (")


@pytest.mark.parametrize("kind", ["order", "call"])
def test_signals_carry_the_event(
    app: Flask, sender: Sender, sent: list[SentSignal], kind: str
) -> None:
    assert_reply(sender.post(kind, order_call_payload(), request_id="n-1"), 200, 0)
    assert names(sent) == ["callback-received", f"{kind}-received"]
    event = sent[1].kwargs["event"]
    assert isinstance(event, EVENT_TYPES[kind])
    assert (sent[1].sender, event.request_id, event.request_ts) == (app, "n-1", NOW)
    assert sent[0].kwargs["event"] is event


@pytest.mark.parametrize("kind", ["order", "call"])
def test_receiver_failure_then_redelivery(
    app: Flask, sender: Sender, sent: list[SentSignal], kind: str
) -> None:
    failures = []

    def flaky(sender: Any, **kwargs: Any) -> None:
        if not failures:
            failures.append(kwargs["event"].request_id)
            raise TimeoutError("follow-up SMS gateway")

    signal = signals.order_received if kind == "order" else signals.call_received
    signal.connect(flaky, app, weak=False)
    try:
        assert_reply(sender.post(kind, order_call_payload(), request_id="again"), 500, 5001)
        sent.clear()
        assert_reply(sender.post(kind, order_call_payload(), request_id="again"), 200, 0)
        assert names(sent) == ["callback-received", f"{kind}-received"]
        sent.clear()
        assert_reply(sender.post(kind, order_call_payload(), request_id="again"), 200, 0)
        assert sent == []
    finally:
        signal.disconnect(flaky, app)
    state = get_store(app).get_order("T100", "order-0001")
    assert state is not None
    assert state.callbacks == 1  # one delivery, however often it was sent


def call_for(call_id: str, start: int, **overrides: Any) -> dict[str, Any]:
    payload = copy.deepcopy(order_call_payload(**overrides))
    payload["callInfoDetail"].update(callID=call_id, callStartTs=start, callEndTs=start + 30)
    return payload


def test_order_record_tracks_the_newest_callback(app: Flask, sender: Sender) -> None:
    store = get_store(app)
    first = call_for("c1", 1000, finish=False)
    first["callInfoDetail"]["intents"] = []
    assert_reply(sender.post("call", first, create_ts=NOW), 200, 0)
    state = store.get_order("T100", "order-0001")
    assert (state.last_call_id, state.finish, state.intents, state.last_kind) == (
        "c1",
        False,
        (),
        CallbackKind.CALL,
    )
    second = call_for("c2", 2000)
    assert_reply(sender.post("order", second, create_ts=NOW + 5), 200, 0)
    state = store.get_order("T100", "order-0001")
    assert (state.last_call_id, state.finish, state.last_kind) == ("c2", True, CallbackKind.ORDER)
    assert [i.intent_tag for i in state.intents] == ["interested", "callback", "price"]
    assert (state.user_phone, state.user_name, state.hangup_cause) == (
        "8613800138000",
        "王小明",
        "NORMAL_CLEARING",
    )
    assert state.callbacks == 2


def test_late_call_callback_does_not_overwrite_its_order(app: Flask, sender: Sender) -> None:
    store = get_store(app)
    order = call_for("c2", 2000, finish=True)
    assert_reply(sender.post("order", order, create_ts=NOW), 200, 0)
    newest = store.get_order("T100", "order-0001")
    # The call callback of the same last call, sent before the order callback, arrives after it.
    same_call = call_for("c2", 2000, finish=False)
    same_call["callInfoDetail"]["intents"] = []
    assert_reply(sender.post("call", same_call, create_ts=NOW), 200, 0)
    # An earlier attempt's call callback arrives even later.
    assert_reply(sender.post("call", call_for("c1", 1000, finish=False), create_ts=NOW + 9), 200, 0)
    state = store.get_order("T100", "order-0001")
    assert (state.last_call_id, state.finish, state.last_kind) == ("c2", True, CallbackKind.ORDER)
    assert state.intents == newest.intents
    assert state.last_request_id == newest.last_request_id
    assert state.callbacks == 3
    late = store.get_delivery(state.last_request_id)
    assert late.kind is CallbackKind.ORDER


def test_out_of_order_deliveries_still_signal(sender: Sender, sent: list[SentSignal]) -> None:
    sender.post("order", call_for("c2", 2000), create_ts=NOW)
    sender.post("call", call_for("c1", 1000), create_ts=NOW + 1)
    assert names(sent).count("call-received") == 1  # every call attempt is an event of its own


def test_orders_are_keyed_by_task_and_order(app: Flask, sender: Sender) -> None:
    sender.post("order", order_call_payload(taskID="A"))
    sender.post("order", order_call_payload(taskID="B", finish=False))
    store = get_store(app)
    assert store.get_order("A", "order-0001").finish is True
    assert store.get_order("B", "order-0001").finish is False
    assert store.get_order("C", "order-0001") is None


def test_get_store_defaults_to_the_current_app(app: Flask) -> None:
    with app.app_context():
        assert get_store() is get_store(app)
