"""The hot path: record a delivery (claim its requestID and apply it, in one transaction), take
up one seen before, finish it, claim it for a replay.

A delivery is claimed by inserting its requestID under a unique constraint in the same
transaction that locks the task's (or order's) row, decides stale or transition and updates
the row, so concurrent workers never process a requestID twice and a task never moves
backwards. The statements are built once per dialect; recording and finishing a delivery, the
per-request work, run them on the pooled driver connection (``Database.writing_on_driver``).

An order or call delivery is news when it is the first report of its order (an order
callback: decided on the order's locked row) or of its call (a call callback: one upsert on
``callbot_calls``): only news is signalled, so a late copy of a callback that reconciliation
recovered, or a resend under a new requestID, sends ``order_received`` / ``call_received`` no
second time.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..errors import DeliveryInProgress, RequestIdReused
from ..events import CallbackKind, CallEvent, OrderEvent, TaskEvent
from ..ordering import KIND_RANK, lease_expired, order_is_newer, order_version, task_transition
from .claims import abandoned, claimed, is_abandoned
from .engine import Database, DriverTransaction
from .records import (
    STAT_COLUMNS,
    Claim,
    ClaimVerdict,
    DeliveryState,
    NewDelivery,
    StoredDelivery,
    aware,
    intent_row,
    stored_delivery,
    stored_news,
    stored_transition,
    transition_columns,
    utc,
)
from .schema import calls, deliveries, orders, tasks


def record(
    db: Database, delivery: NewDelivery, *, now: float, lease: int, queue: bool = False
) -> Claim:
    """Claim the requestID and apply the delivery, in one transaction.

    Inline (``queue=False``) the new row is PENDING, held by the caller; with ``queue=True``
    (Celery) it is QUEUED, for a worker, and the caller enqueues it. A requestID seen before
    is answered from its stored row: processed → DUPLICATE; failed, or pending for longer
    than ``lease`` seconds (its worker died) → RETRY with the stored transition (taken
    inline, or back to QUEUED to enqueue again); pending → BUSY inline, ACCEPTED_EARLIER with
    Celery (it is accepted). A different body under a known requestID is refused.
    """
    at = utc(now)
    body_sha256 = hashlib.sha256(delivery.body).hexdigest()
    event = delivery.event
    sql = _statements(db.engine.dialect.name)
    with db.writing_on_driver() as conn:
        transition = None
        news = True
        if isinstance(event, TaskEvent):
            status, status_request_ts = _lock_row(
                conn, sql.lock_task, sql.blank_task, task_id=event.task_id
            )
            transition = task_transition(
                status,
                status_request_ts,
                event.status,
                event.request_ts,
                wins_ties=delivery.source == "callback",
            )
            applied = transition.applied
        else:
            key = {"task_id": event.task_id, "order_id": event.order_id}
            last_request_id, call_start_ts, request_ts, kind_rank, order_request_id = _lock_row(
                conn, sql.lock_order, sql.blank_order, **key
            )
            stored = None
            if last_request_id is not None:
                stored = order_version(call_start_ts, request_ts, kind_rank)
            incoming = order_version(
                event.call.call_start_ts, delivery.request_ts, KIND_RANK[delivery.kind]
            )
            applied = order_is_newer(incoming, stored)
            if delivery.kind is CallbackKind.ORDER:
                news = order_request_id is None
            else:
                news = _first_call_report(conn, sql, delivery, event)
        inserted = conn.first(
            sql.insert_delivery,
            {
                "request_id": delivery.request_id,
                "kind": delivery.kind.value,
                "task_id": event.task_id,
                "order_id": None if isinstance(event, TaskEvent) else event.order_id,
                "request_ts": delivery.request_ts,
                "received_at": at,
                "headers": json.dumps(dict(delivery.headers), sort_keys=True),
                "body": delivery.body,
                "body_sha256": body_sha256,
                "outcome": (DeliveryState.QUEUED if queue else DeliveryState.PENDING).value,
                "attempts": 0 if queue else 1,
                "claimed_at": at,
                "applied": applied,
                "source": None if delivery.source == "callback" else delivery.source,
                **transition_columns(transition, news=news),
            },
        )
        if inserted:
            if isinstance(event, TaskEvent):
                if applied:
                    _apply_task(conn, sql, event, at)
            else:
                _apply_order(conn, sql, delivery, event, applied=applied, news=news, at=at)
            return Claim(ClaimVerdict.NEW, transition, news)
    # Seen before: nothing above changed anything it did not find so; answer from its row.
    with db.writing() as core:
        return _reclaim(core, delivery.request_id, body_sha256, at, lease, queue)


def _reclaim(
    conn: Connection, request_id: str, body_sha256: str, at: datetime, lease: int, queue: bool
) -> Claim:
    """Answer a requestID seen before from its stored row (see :func:`record`)."""
    row = conn.execute(
        sa.select(
            deliveries.c.body_sha256,
            deliveries.c.outcome,
            deliveries.c.attempts,
            deliveries.c.claimed_at,
            deliveries.c.enqueued_at,
            deliveries.c.previous_status,
            deliveries.c.status,
            deliveries.c.applied,
            deliveries.c.changed,
        ).where(deliveries.c.request_id == request_id)
    ).one()
    if row.body_sha256 != body_sha256:
        raise RequestIdReused(f"requestID {request_id} was already used for another body")
    if row.outcome == DeliveryState.PROCESSED:
        return Claim(ClaimVerdict.DUPLICATE)
    if queue and _waiting_in_queue(row, at, lease):
        return Claim(ClaimVerdict.ACCEPTED_EARLIER)
    # Take it up: a failed or abandoned delivery; a queued one never enqueued, or enqueued
    # longer ago than the lease (queue mode: its message may have died with a worker), or any
    # queued one when processing inline (nobody else will).
    if row.outcome in (DeliveryState.FAILED, DeliveryState.QUEUED) or is_abandoned(row, at, lease):
        taken = conn.execute(
            deliveries.update()
            .where(
                deliveries.c.request_id == request_id,
                deliveries.c.outcome == row.outcome,
                deliveries.c.claimed_at == row.claimed_at,
            )
            .values(**claimed(at, queue=queue), enqueued_at=None)
        ).rowcount
        if taken:
            attempt = row.attempts + (0 if queue else 1)
            return Claim(
                ClaimVerdict.RETRY, stored_transition(row), stored_news(row), attempt=attempt
            )
    return Claim(ClaimVerdict.ACCEPTED_EARLIER if queue else ClaimVerdict.BUSY)


def _waiting_in_queue(row: Any, at: datetime, lease: int) -> bool:
    """Queue mode: a queued delivery whose message reached the broker within the lease (a
    worker will take it); one enqueued before that may have been held by a worker that died."""
    return (
        row.outcome == DeliveryState.QUEUED
        and row.enqueued_at is not None
        and not lease_expired(aware(row.enqueued_at), at, lease)
    )


def finish(
    db: Database, request_id: str, *, now: float, attempt: int, error: str | None = None
) -> bool:
    """Mark a claimed delivery processed, or failed with ``error``, if ``attempt`` still holds
    it; ``False`` if a later claim took it over (its lease ran out: that claim's outcome counts).
    """
    with db.writing_on_driver() as conn:
        written = conn.execute(
            _statements(db.engine.dialect.name).finish_delivery,
            {
                "k_request_id": request_id,
                "k_attempt": attempt,
                "outcome": (DeliveryState.FAILED if error else DeliveryState.PROCESSED).value,
                "finished_at": utc(now),
                "error": error,
            },
        )
    return bool(written)


def claim_for_replay(db: Database, request_id: str, *, now: float, lease: int) -> StoredDelivery:
    """Take a stored delivery for a replay, as a redelivery would: never one in progress."""
    at = utc(now)
    with db.writing() as conn:
        taken = conn.execute(
            deliveries.update()
            .where(
                deliveries.c.request_id == request_id,
                sa.or_(deliveries.c.outcome != DeliveryState.PENDING.value, abandoned(at, lease)),
            )
            .values(**claimed(at))
            .returning(*deliveries.c)
        ).first()
        if taken is not None:
            return stored_delivery(taken)
        exists = conn.execute(
            sa.select(deliveries.c.id).where(deliveries.c.request_id == request_id)
        ).first()
    if exists is None:
        raise LookupError(f"no delivery with requestID {request_id}")
    raise DeliveryInProgress(f"requestID {request_id} is being processed right now")


@dataclass(frozen=True, slots=True)
class _Statements:
    """The hot path's statements, built once per dialect with bind parameters, so a request pays
    for executing them, not for constructing and cache-keying new ones."""

    lock_task: Any
    blank_task: Any
    lock_order: Any
    blank_order: Any
    insert_delivery: Any
    apply_task: Any
    apply_order: Any
    finish_delivery: Any
    #: Claim the first report of a call (returns a row only if this one is the first).
    report_call: Any


@functools.cache
def _statements(dialect_name: str) -> _Statements:
    dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    task_key = tasks.c.task_id == sa.bindparam("task_id")
    order_key = sa.and_(
        orders.c.task_id == sa.bindparam("task_id"), orders.c.order_id == sa.bindparam("order_id")
    )
    return _Statements(
        lock_task=sa.select(tasks.c.status, tasks.c.status_request_ts)
        .where(task_key)
        .with_for_update(),
        blank_task=dialect_insert(tasks).on_conflict_do_nothing(),
        lock_order=sa.select(
            orders.c.last_request_id,
            orders.c.last_call_start_ts,
            orders.c.version_request_ts,
            orders.c.version_kind_rank,
            orders.c.order_request_id,
        )
        .where(order_key)
        .with_for_update(),
        blank_order=dialect_insert(orders).on_conflict_do_nothing(),
        insert_delivery=dialect_insert(deliveries)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(deliveries.c.id),  # rowcount is not reliable here across drivers
        apply_task=tasks.update().where(tasks.c.task_id == sa.bindparam("k_task_id")),
        apply_order=orders.update()
        .where(
            orders.c.task_id == sa.bindparam("k_task_id"),
            orders.c.order_id == sa.bindparam("k_order_id"),
        )
        .values(callbacks=orders.c.callbacks + 1),
        finish_delivery=deliveries.update().where(
            deliveries.c.request_id == sa.bindparam("k_request_id"),
            deliveries.c.outcome == DeliveryState.PENDING.value,
            deliveries.c.attempts == sa.bindparam("k_attempt"),
        ),
        report_call=dialect_insert(calls).on_conflict_do_nothing().returning(calls.c.call_id),
    )


def _first_call_report(
    conn: DriverTransaction, sql: _Statements, delivery: NewDelivery, event: OrderEvent | CallEvent
) -> bool:
    """Record that this call callback reported its call; whether it is the first to (news)."""
    reported = conn.first(
        sql.report_call,
        {
            "task_id": event.task_id,
            "order_id": event.order_id,
            "call_id": event.call.call_id,
            "request_id": delivery.request_id,
        },
    )
    return reported is not None


def _lock_row(conn: DriverTransaction, lock: Any, blank: Any, **key: str) -> tuple[Any, ...]:
    """The row with this primary key, locked for the transaction; a blank one on first sighting.

    Inserting the blank row under ON CONFLICT DO NOTHING first means two workers seeing a new task
    at once still queue on one row lock instead of both deciding "first sighting".
    """
    row = conn.first(lock, key)
    if row is None:
        conn.execute(blank, key)
        row = conn.first(lock, key)
        if row is None:  # inserted just now, or by another worker: it is there
            raise RuntimeError(f"{key} vanished within its transaction")
    return row


def _apply_task(conn: DriverTransaction, sql: _Statements, event: TaskEvent, at: datetime) -> None:
    stats = {name: getattr(event.stat, name) if event.stat else None for name in STAT_COLUMNS}
    conn.execute(
        sql.apply_task,
        {
            "k_task_id": event.task_id,
            "user_task_id": event.user_task_id,
            "scene_id": event.scene_id,
            "status": int(event.status),
            "status_request_ts": event.request_ts,
            "last_request_id": event.request_id,
            "create_ts": event.create_ts,
            "updated_at": at,
            **stats,
        },
    )


def _apply_order(
    conn: DriverTransaction,
    sql: _Statements,
    delivery: NewDelivery,
    event: OrderEvent | CallEvent,
    *,
    applied: bool,
    news: bool,
    at: datetime,
) -> None:
    values: dict[str, Any] = {
        "k_task_id": event.task_id,
        "k_order_id": event.order_id,
        "updated_at": at,
    }
    if news and delivery.kind is CallbackKind.ORDER:
        values["order_request_id"] = delivery.request_id
    if applied:
        call = event.call
        values.update(
            user_task_id=event.user_task_id,
            scene_id=event.scene_id,
            user_phone=event.user_phone,
            user_name=event.user_name,
            finish=event.finish,
            other=event.other,
            last_call_id=call.call_id,
            last_call_status=call.call_status,
            last_call_start_ts=call.call_start_ts,
            last_call_end_ts=call.call_end_ts,
            last_call_duration=call.call_duration,
            hangup_cause=call.hangup_cause,
            intents=json.dumps([intent_row(intent) for intent in call.intents]),
            version_request_ts=delivery.request_ts,
            version_kind_rank=KIND_RANK[delivery.kind],
            last_kind=delivery.kind.value,
            last_request_id=delivery.request_id,
        )
    conn.execute(sql.apply_order, values)
