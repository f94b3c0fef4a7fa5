"""What receivers get: frozen dataclasses for each callback, the task status enum, transitions.

Attributes are the vendor's camelCase fields in snake_case. Every field but the required ids may
be ``None``: the vendor's payloads drift. ``raw`` keeps the whole decoded JSON, unknown fields
included, for anything the dataclasses do not name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

#: Where an event came from: a callback the vendor sent, or reconciliation through its API.
EventSource = Literal["callback", "reconcile"]


class TaskStatus(enum.IntEnum):
    """``taskStatus`` values documented by the vendor."""

    PENDING = 1
    IN_PROGRESS = 2
    COMPLETED = 3
    FAILED = 4
    PAUSED = 5


class CallbackKind(enum.StrEnum):
    """Which callback a delivery is; it comes from the route, never from ``callbackType``."""

    TASK = "task"
    ORDER = "order"
    CALL = "call"


def coerce_status(value: int | None) -> TaskStatus | int | None:
    """A known status as :class:`TaskStatus`, an unknown one kept as the plain int."""
    if value is None:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStat:
    """``taskStat``: the task's counters and rates as the vendor reports them."""

    answer_order_count: int | None = None
    finish_order_count: int | None = None
    total_order_count: int | None = None
    finish_rate: float | None = None
    total_answer_call: int | None = None
    total_call: int | None = None
    answer_rate: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent:
    """One task callback: the task's status and statistics at ``request_ts``."""

    request_id: str
    request_ts: int
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)
    #: ``"callback"`` (the vendor sent it) or ``"reconcile"`` (recovered through the API).
    source: EventSource = "callback"
    task_id: str
    user_task_id: str
    status: TaskStatus | int
    scene_id: str | None = None
    create_ts: int | None = None
    stat: TaskStat | None = None


def timestamp_to_datetime(value: int | None) -> datetime | None:
    """An aware UTC datetime for a vendor timestamp; ``None`` for 0, absent or out of range.

    The vendor does not say whether call timestamps are seconds or milliseconds: values above
    10^11 (a date in the year 5138 if read as seconds) are taken as milliseconds.
    """
    if not value:
        return None
    seconds = value / 1000 if abs(value) > 10**11 else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """One intent the call's script recognised."""

    intent_id: str | None = None
    intent_tag: str | None = None
    intent_name: str | None = None
    intent_level: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sms:
    """One SMS sent during or after the call."""

    sms_send_ts: int | None = None
    sys_message_id: str | None = None
    sms_content: str | None = None

    @property
    def sent_at(self) -> datetime | None:
        return timestamp_to_datetime(self.sms_send_ts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    """The human agent of a transferred call; every field is often ``None``."""

    agent_name: str | None = None
    agent_group: str | None = None
    agent_label: str | None = None
    agent_call_status: int | None = None
    agent_call_elapsed: int | None = None
    manual_call_start: int | None = None
    manual_call_answer: int | None = None
    manual_call_end: int | None = None
    manual_hangup_by: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """One script variable."""

    name: str | None = None
    value: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallInfo:
    """``callInfoDetail``: one call attempt (for an order callback, the order's last call)."""

    call_id: str
    call_status: int | None = None
    call_start_ts: int | None = None
    call_answer_ts: int | None = None
    call_end_ts: int | None = None
    call_duration: int | None = None
    call_audio_url: str | None = None
    hangup_cause: str | None = None
    term_sip_code: str | None = None
    calling_number: str | None = None
    line_address: str | None = None
    intents: tuple[Intent, ...] = ()
    sms: tuple[Sms, ...] = ()
    agent: Agent | None = None
    params: tuple[Param, ...] = ()
    #: ``recordDetail`` entries as sent (their shape is not documented).
    record_detail: tuple[Any, ...] = field(default=(), compare=False, hash=False)

    @property
    def started_at(self) -> datetime | None:
        return timestamp_to_datetime(self.call_start_ts)

    @property
    def answered_at(self) -> datetime | None:
        return timestamp_to_datetime(self.call_answer_ts)

    @property
    def ended_at(self) -> datetime | None:
        return timestamp_to_datetime(self.call_end_ts)

    @property
    def param_map(self) -> Mapping[str, str | None]:
        """``params`` as name → value (a later duplicate name wins)."""
        return {param.name: param.value for param in self.params if param.name is not None}

    @property
    def intent_tags(self) -> tuple[str, ...]:
        """The tags of the recognised intents, in order, for quick membership tests."""
        return tuple(intent.intent_tag for intent in self.intents if intent.intent_tag)


@dataclass(frozen=True, slots=True, kw_only=True)
class _NumberEvent:
    request_id: str
    request_ts: int
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)
    #: ``"callback"`` (the vendor sent it) or ``"reconcile"`` (recovered through the API).
    source: EventSource = "callback"
    order_id: str
    task_id: str
    call: CallInfo
    user_phone: str | None = None
    user_name: str | None = None
    scene_id: str | None = None
    user_task_id: str | None = None
    finish: bool | None = None
    other: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderEvent(_NumberEvent):
    """One order callback: an order (a phone number) is finished; ``call`` is its last call."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent(_NumberEvent):
    """One call callback: one call attempt finished."""


#: Any event a receiver may get.
Event = TaskEvent | OrderEvent | CallEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """What a task delivery did to the task's tracked state, computed once and stored with it.

    ``applied`` is false for a stale delivery (older than the last applied one); ``changed`` is true
    when the status differs from ``previous`` (``None`` on the task's first sighting).
    """

    previous: TaskStatus | int | None
    status: TaskStatus | int
    applied: bool
    changed: bool
