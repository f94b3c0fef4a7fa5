"""The public surface is deliberate: what ``flask_callbot`` exports is pinned here, so adding or
dropping a name is a decision made in review, not a side effect."""

from __future__ import annotations

import inspect

import flask_callbot
from flask_callbot import errors

EXPECTED = {
    "create_blueprint", "callback_urls", "get_store", "StoreReader", "DeliveryState",
    "StoredDelivery", "TaskState", "OrderState", "signals", "callback_received",
    "callback_rejected",
    "task_status_changed", "task_pending", "task_started", "task_paused", "task_resumed",
    "task_completed", "task_failed", "task_progress", "order_received", "call_received",
    "Event", "TaskEvent", "OrderEvent", "CallEvent", "TaskStat", "CallInfo", "Intent", "Sms",
    "Agent", "Param", "Transition", "TaskStatus", "CallbackKind",
}  # fmt: skip


def test_the_exports_are_the_deliberate_ones() -> None:
    error_names = {name for name in flask_callbot.__all__ if name not in EXPECTED}
    assert set(flask_callbot.__all__) == EXPECTED | error_names
    assert len(flask_callbot.__all__) == len(set(flask_callbot.__all__))
    assert all(hasattr(flask_callbot, name) for name in flask_callbot.__all__)


def test_every_error_class_is_exported_the_same_way() -> None:
    family = {
        name
        for name, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, errors.CallbotError) and value.__module__ == errors.__name__
    }
    exported = {name for name in flask_callbot.__all__ if name not in EXPECTED}
    assert exported == family
    assert "QueueUnavailable" in exported


def test_a_signal_is_exported_under_its_own_name() -> None:
    for name in EXPECTED:
        value = getattr(flask_callbot, name)
        if hasattr(value, "receivers"):  # a blinker signal
            assert value is getattr(flask_callbot.signals, name)
            assert value.name == name.replace("_", "-")
