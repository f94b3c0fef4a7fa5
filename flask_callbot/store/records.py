"""What the store hands out and takes in: the delivery states, the claim verdicts, the record
dataclasses, and the mappers from rows to records."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ..events import (
    CallbackKind,
    Event,
    EventSource,
    Intent,
    TaskStatus,
    Transition,
    coerce_status,
)


class DeliveryState(StrEnum):
    """A recorded delivery's processing state (the stored value, and the CLI's filter value).

    A PENDING delivery held for longer than ``CALLBOT_PROCESSING_TIMEOUT`` is *abandoned*: its
    worker died, or could not write its outcome (see :func:`.claims.is_abandoned`).
    """

    QUEUED = "queued"  # recorded, waiting for a Celery worker (enqueued once enqueued_at is set)
    PENDING = "pending"  # held by a worker right now (a request, or a Celery worker)
    PROCESSED = "processed"
    FAILED = "failed"


class ClaimVerdict(StrEnum):
    """What recording a delivery decided: process it now, or answer without processing it."""

    NEW = "new"  # first sighting: recorded and, for a task, applied
    RETRY = "retry"  # a failed (or abandoned) delivery taken up again: re-send its signals
    DUPLICATE = "duplicate"  # already processed: acknowledge, no signals
    BUSY = "busy"  # another worker holds it right now: inline answers 409 / retCode 7
    ACCEPTED_EARLIER = "accepted_earlier"  # Celery mode: already durably queued: acknowledge


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: ClaimVerdict
    transition: Transition | None = None
    #: An order or call delivery: the first report of its call as that kind, so signalled.
    news: bool = True
    #: The delivery's attempt this claim holds (NEW, RETRY): its outcome is written for it only.
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class NewDelivery:
    """An authentic, valid delivery about to be recorded."""

    request_id: str
    kind: CallbackKind
    request_ts: int
    headers: Mapping[str, str]
    body: bytes
    event: Event
    source: EventSource = "callback"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredDelivery:
    """One recorded delivery: headers, raw body, outcome, attempts, the task transition."""

    request_id: str
    kind: CallbackKind
    task_id: str | None
    order_id: str | None
    request_ts: int
    received_at: datetime
    headers: dict[str, str]
    body: bytes
    outcome: DeliveryState
    attempts: int
    enqueued_at: datetime | None
    finished_at: datetime | None
    error: str | None
    transition: Transition | None
    #: An order or call delivery: whether it was news when recorded (see :class:`Claim`).
    news: bool
    source: EventSource
    #: When its current hold (or queueing) began: with the lease, whether it is abandoned.
    claimed_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskState:
    """A tracked task as last applied."""

    task_id: str
    user_task_id: str | None
    scene_id: str | None
    status: TaskStatus | int | None
    status_request_ts: int | None
    last_request_id: str | None
    create_ts: int | None
    stats: dict[str, int | float | None]
    updated_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderState:
    """A tracked order (one phone number) as of its newest callback."""

    task_id: str
    order_id: str
    user_task_id: str | None
    scene_id: str | None
    user_phone: str | None
    user_name: str | None
    finish: bool | None
    other: str | None
    last_call_id: str | None
    last_call_status: int | None
    last_call_start_ts: int | None
    last_call_end_ts: int | None
    last_call_duration: int | None
    hangup_cause: str | None
    intents: tuple[Intent, ...]
    last_kind: CallbackKind
    last_request_id: str
    #: How many authentic callbacks (order and call) were recorded for this order.
    callbacks: int
    updated_at: datetime | None


#: A task's statistics columns, named as in :class:`~flask_callbot.events.TaskStat`.
STAT_COLUMNS = (
    "answer_order_count",
    "finish_order_count",
    "total_order_count",
    "finish_rate",
    "total_answer_call",
    "total_call",
    "answer_rate",
)


def intent_row(intent: Intent) -> dict[str, Any]:
    """An intent as stored in an order row's ``intents`` JSON (read back by :func:`order_state`)."""
    # Not dataclasses.asdict: it deep-copies every value, a third of an order callback's cost.
    return {
        "intent_id": intent.intent_id,
        "intent_tag": intent.intent_tag,
        "intent_name": intent.intent_name,
        "intent_level": intent.intent_level,
    }


def transition_columns(transition: Transition | None, *, news: bool = True) -> dict[str, Any]:
    """A delivery row's transition columns (read back by :func:`stored_transition`); an order
    or call delivery keeps its news in ``changed`` (read back by :func:`stored_news`)."""
    if transition is None:  # the same keys every time: one compiled INSERT serves all
        return {"previous_status": None, "status": None, "changed": news}
    return {
        "previous_status": None if transition.previous is None else int(transition.previous),
        "status": int(transition.status),
        "changed": transition.changed,
    }


def stored_delivery(row: Any) -> StoredDelivery:
    return StoredDelivery(
        request_id=row.request_id,
        kind=CallbackKind(row.kind),
        task_id=row.task_id,
        order_id=row.order_id,
        request_ts=row.request_ts,
        received_at=aware(row.received_at),
        headers=json.loads(row.headers),
        body=bytes(row.body),
        outcome=DeliveryState(row.outcome),
        attempts=row.attempts,
        enqueued_at=None if row.enqueued_at is None else aware(row.enqueued_at),
        finished_at=None if row.finished_at is None else aware(row.finished_at),
        error=row.error,
        transition=stored_transition(row),
        news=stored_news(row),
        source=row.source or "callback",
        claimed_at=aware(row.claimed_at),
    )


def stored_transition(row: Any) -> Transition | None:
    """The transition recorded with a task delivery (``None`` for an order or call)."""
    if row.status is None:
        return None
    return Transition(
        previous=coerce_status(row.previous_status),
        status=coerce_status(row.status) or 0,
        applied=bool(row.applied),
        changed=bool(row.changed),
    )


def stored_news(row: Any) -> bool:
    """Whether an order or call delivery was news (rows from before schema 3 were)."""
    return row.status is not None or row.changed is not False


def task_state(row: Any) -> TaskState:
    return TaskState(
        task_id=row.task_id,
        user_task_id=row.user_task_id,
        scene_id=row.scene_id,
        status=coerce_status(row.status),
        status_request_ts=row.status_request_ts,
        last_request_id=row.last_request_id,
        create_ts=row.create_ts,
        stats={name: getattr(row, name) for name in STAT_COLUMNS},
        updated_at=None if row.updated_at is None else aware(row.updated_at),
    )


def order_state(row: Any) -> OrderState:
    return OrderState(
        task_id=row.task_id,
        order_id=row.order_id,
        user_task_id=row.user_task_id,
        scene_id=row.scene_id,
        user_phone=row.user_phone,
        user_name=row.user_name,
        finish=row.finish,
        other=row.other,
        last_call_id=row.last_call_id,
        last_call_status=row.last_call_status,
        last_call_start_ts=row.last_call_start_ts,
        last_call_end_ts=row.last_call_end_ts,
        last_call_duration=row.last_call_duration,
        hangup_cause=row.hangup_cause,
        intents=tuple(Intent(**item) for item in json.loads(row.intents or "[]")),
        last_kind=CallbackKind(row.last_kind),
        last_request_id=row.last_request_id,
        callbacks=row.callbacks,
        updated_at=None if row.updated_at is None else aware(row.updated_at),
    )


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def in_utc(value: datetime) -> datetime:
    """Compare in UTC: SQLite stores datetimes as naive UTC text and drops a bound value's zone."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
