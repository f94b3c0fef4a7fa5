"""Reading the record: lookups, lists and counts (read-only transactions), and pruning old
deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa

from ..events import CallbackKind, TaskStatus
from .claims import abandoned
from .engine import Database
from .records import (
    DeliveryState,
    OrderState,
    StoredDelivery,
    TaskState,
    in_utc,
    order_state,
    stored_delivery,
    task_state,
    utc,
)
from .schema import calls, deliveries, orders, read_version, tasks

#: A task in one of these statuses changes no more: reconciliation leaves it alone.
FINAL_STATUSES = (int(TaskStatus.COMPLETED), int(TaskStatus.FAILED))


def get_delivery(db: Database, request_id: str) -> StoredDelivery | None:
    with db.reading() as conn:
        row = conn.execute(deliveries.select().where(deliveries.c.request_id == request_id)).first()
    return None if row is None else stored_delivery(row)


def get_task(db: Database, task_id: str) -> TaskState | None:
    with db.reading() as conn:
        row = conn.execute(tasks.select().where(tasks.c.task_id == task_id)).first()
    return None if row is None or row.status is None else task_state(row)


def get_order(db: Database, task_id: str, order_id: str) -> OrderState | None:
    with db.reading() as conn:
        row = conn.execute(
            orders.select().where(orders.c.task_id == task_id, orders.c.order_id == order_id)
        ).first()
    return None if row is None or row.last_request_id is None else order_state(row)


def get_task_by_user_task_id(db: Database, user_task_id: str) -> TaskState | None:
    query = (
        tasks.select()
        .where(tasks.c.user_task_id == user_task_id, tasks.c.status.is_not(None))
        .order_by(tasks.c.updated_at.desc())
        .limit(1)
    )
    with db.reading() as conn:
        row = conn.execute(query).first()
    return None if row is None else task_state(row)


def unfinished_tasks(db: Database, *, since: datetime | None = None) -> list[TaskState]:
    query = (
        tasks.select()
        .where(tasks.c.status.is_not(None), tasks.c.status.not_in(FINAL_STATUSES))
        .order_by(tasks.c.updated_at, tasks.c.task_id)
    )
    if since is not None:
        query = query.where(tasks.c.updated_at >= in_utc(since))
    with db.reading() as conn:
        return [task_state(row) for row in conn.execute(query)]


def reported(db: Database, task_id: str) -> tuple[set[str], set[tuple[str, str]]]:
    orders_query = sa.select(orders.c.order_id).where(
        orders.c.task_id == task_id, orders.c.order_request_id.is_not(None)
    )
    calls_query = sa.select(calls.c.order_id, calls.c.call_id).where(calls.c.task_id == task_id)
    with db.reading() as conn:
        reported_orders = set(conn.execute(orders_query).scalars())
        reported_calls = {(row[0], row[1]) for row in conn.execute(calls_query)}
    return reported_orders, reported_calls


def list_deliveries(
    db: Database,
    *,
    outcome: DeliveryState | None = None,
    task_id: str | None = None,
    kind: CallbackKind | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 50,
    claimed_before: datetime | None = None,
) -> list[StoredDelivery]:
    query = deliveries.select().order_by(deliveries.c.id.desc()).limit(limit)
    if outcome is not None:
        query = query.where(deliveries.c.outcome == outcome.value)
    if task_id is not None:
        query = query.where(deliveries.c.task_id == task_id)
    if kind is not None:
        query = query.where(deliveries.c.kind == kind.value)
    if since is not None:
        query = query.where(deliveries.c.received_at >= in_utc(since))
    if until is not None:
        query = query.where(deliveries.c.received_at < in_utc(until))
    if claimed_before is not None:
        query = query.where(deliveries.c.claimed_at <= in_utc(claimed_before))
    with db.reading() as conn:
        return [stored_delivery(row) for row in conn.execute(query)]


def list_orders(
    db: Database,
    *,
    task_id: str | None = None,
    kind: CallbackKind | None = None,
    limit: int | None = 50,
) -> list[OrderState]:
    query = (
        orders.select()
        .where(orders.c.last_request_id.is_not(None))
        .order_by(orders.c.updated_at.desc(), orders.c.task_id, orders.c.order_id)
        .limit(limit)
    )
    if task_id is not None:
        query = query.where(orders.c.task_id == task_id)
    if kind is not None:
        query = query.where(orders.c.last_kind == kind.value)
    with db.reading() as conn:
        return [order_state(row) for row in conn.execute(query)]


def list_tasks(db: Database, *, limit: int | None = None) -> list[TaskState]:
    query = (
        tasks.select()
        .where(tasks.c.status.is_not(None))
        .order_by(tasks.c.updated_at.desc(), tasks.c.task_id)
        .limit(limit)
    )
    with db.reading() as conn:
        return [task_state(row) for row in conn.execute(query)]


def failed_request_ids(
    db: Database, *, now: float | None = None, lease: int | None = None
) -> list[str]:
    """Failed deliveries, oldest first; with ``now`` and ``lease``, abandoned ones too."""
    failed = deliveries.c.outcome == DeliveryState.FAILED.value
    if now is not None and lease is not None:
        failed = sa.or_(failed, abandoned(utc(now), lease))
    query = sa.select(deliveries.c.request_id).where(failed).order_by(deliveries.c.id)
    with db.reading() as conn:
        return list(conn.execute(query).scalars())


def count_abandoned(db: Database, *, now: float, lease: int) -> int:
    """Deliveries held past the lease: the worker died, or could not write the outcome."""
    query = sa.select(sa.func.count()).select_from(deliveries).where(abandoned(utc(now), lease))
    with db.reading() as conn:
        return int(conn.execute(query).scalar_one())


def count_failed(db: Database) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(deliveries)
        .where(deliveries.c.outcome == DeliveryState.FAILED.value)
    )
    with db.reading() as conn:
        return int(conn.execute(query).scalar_one())


def count_deliveries(db: Database, task_id: str) -> dict[CallbackKind, int]:
    query = (
        sa.select(deliveries.c.kind, sa.func.count())
        .where(deliveries.c.task_id == task_id)
        .group_by(deliveries.c.kind)
    )
    with db.reading() as conn:
        counted = {kind: int(count) for kind, count in conn.execute(query)}
    return {kind: counted.get(kind.value, 0) for kind in CallbackKind}


def count_prunable(db: Database, *, before: datetime, include_failed: bool = False) -> int:
    query = sa.select(sa.func.count()).where(_prunable(before, include_failed))
    with db.reading() as conn:
        return int(conn.execute(query).scalar_one())


def get_schema_version(db: Database) -> int | None:
    with db.reading() as conn:
        return read_version(conn)


def prune(
    db: Database, *, before: datetime, include_failed: bool = False, batch_size: int = 1000
) -> Iterator[int]:
    """Delete deliveries received before ``before``, a batch per transaction; yields each
    batch's count. What :func:`count_prunable` counts with the same arguments."""
    batch = sa.select(deliveries.c.id).where(_prunable(before, include_failed)).limit(batch_size)
    while True:
        with db.writing() as conn:
            ids = list(conn.execute(batch).scalars())
            if ids:
                conn.execute(deliveries.delete().where(deliveries.c.id.in_(ids)))
        if not ids:
            return
        yield len(ids)


def _prunable(before: datetime, include_failed: bool) -> sa.ColumnElement[bool]:
    """Received before ``before``; never one in progress, failed ones only if asked (they are
    what ``replay --failed`` works on)."""
    kept = [DeliveryState.PENDING.value] + ([] if include_failed else [DeliveryState.FAILED.value])
    return sa.and_(deliveries.c.received_at < in_utc(before), deliveries.c.outcome.not_in(kept))
