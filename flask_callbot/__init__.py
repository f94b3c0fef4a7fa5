"""Receive NXCloud Callbot v3 callbacks in Flask: verified, recorded, and signalled."""

from __future__ import annotations

from . import signals
from .blueprint import create_blueprint
from .errors import (
    CallbotError,
    ConfigurationError,
    DeliveryInProgress,
    IncompleteBody,
    InvalidAuthHeader,
    InvalidField,
    InvalidSignature,
    MalformedBody,
    MissingAuthHeader,
    MissingField,
    PayloadTooLarge,
    QueueUnavailable,
    ReceiverFailed,
    RequestIdReused,
    RequestRejected,
    StoreUnavailable,
    TimestampOutOfWindow,
    UnknownAccount,
)
from .events import (
    Agent,
    CallbackKind,
    CallEvent,
    CallInfo,
    Event,
    Intent,
    OrderEvent,
    Param,
    Sms,
    TaskEvent,
    TaskStat,
    TaskStatus,
    Transition,
)
from .routes import callback_urls
from .signals import (
    call_received,
    callback_received,
    callback_rejected,
    order_received,
    task_completed,
    task_failed,
    task_paused,
    task_pending,
    task_progress,
    task_resumed,
    task_started,
    task_status_changed,
)
from .state import get_store
from .store import DeliveryState, OrderState, StoredDelivery, StoreReader, TaskState

#: The public surface, by what a host does with it. Everything else is reached through its own
#: module: the testing helpers (``flask_callbot.testing``), the API client
#: (``flask_callbot.client``), Celery dispatch (``flask_callbot.celery_dispatch``), metrics.
__all__ = [  # noqa: RUF022 - grouped by use, not sorted
    # Setting up, and reading what was recorded.
    "create_blueprint",
    "callback_urls",
    "get_store",
    "StoreReader",
    "DeliveryState",
    "StoredDelivery",
    "TaskState",
    "OrderState",
    # What receivers get.
    "signals",
    "callback_received",
    "callback_rejected",
    "task_status_changed",
    "task_pending",
    "task_started",
    "task_paused",
    "task_resumed",
    "task_completed",
    "task_failed",
    "task_progress",
    "order_received",
    "call_received",
    "Event",
    "TaskEvent",
    "OrderEvent",
    "CallEvent",
    "TaskStat",
    "CallInfo",
    "Intent",
    "Sms",
    "Agent",
    "Param",
    "Transition",
    "TaskStatus",
    "CallbackKind",
    # Errors: the whole CallbotError family, each with its HTTP status and retCode.
    "CallbotError",
    "ConfigurationError",
    "RequestRejected",
    "MissingAuthHeader",
    "InvalidAuthHeader",
    "TimestampOutOfWindow",
    "UnknownAccount",
    "InvalidSignature",
    "PayloadTooLarge",
    "MalformedBody",
    "MissingField",
    "InvalidField",
    "RequestIdReused",
    "IncompleteBody",
    "DeliveryInProgress",
    "ReceiverFailed",
    "StoreUnavailable",
    "QueueUnavailable",
]
