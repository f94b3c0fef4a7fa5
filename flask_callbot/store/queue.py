"""The Celery queue's bookkeeping: a delivery reaches the broker, a worker claims it, receivers
raise and it goes back, a sweep finds what no worker will pick up."""

from __future__ import annotations

import sqlalchemy as sa

from .claims import abandoned, claimed
from .engine import Database
from .records import DeliveryState, StoredDelivery, stored_delivery, utc
from .schema import deliveries


def mark_enqueued(db: Database, request_id: str, *, now: float) -> None:
    """Record that a delivery's message reached the broker (its worker may be done already)."""
    with db.writing() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.request_id == request_id, deliveries.c.enqueued_at.is_(None))
            .values(enqueued_at=utc(now))
        )


def claim_queued(db: Database, request_id: str, *, now: float, lease: int) -> StoredDelivery | None:
    """A Celery worker takes a queued delivery (or one whose worker died); ``None`` if another
    worker holds it or it is already done, so a message delivered twice is processed once."""
    at = utc(now)
    with db.writing() as conn:
        taken = conn.execute(
            deliveries.update()
            .where(
                deliveries.c.request_id == request_id,
                sa.or_(deliveries.c.outcome == DeliveryState.QUEUED.value, abandoned(at, lease)),
            )
            .values(**claimed(at))
            .returning(*deliveries.c)
        ).first()
    return None if taken is None else stored_delivery(taken)


def requeue(db: Database, request_id: str, *, now: float, error: str) -> None:
    """Put a delivery whose receivers raised back in the queue for a later retry."""
    at = utc(now)
    with db.writing() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.request_id == request_id)
            .values(outcome=DeliveryState.QUEUED.value, error=error, claimed_at=at, enqueued_at=at)
        )


def sweepable(
    db: Database, *, now: float, unqueued_after: int, lease: int, stalled_after: int
) -> list[str]:
    """RequestIDs a sweep must enqueue (again), oldest first.

    Recorded but never enqueued for ``unqueued_after`` seconds (the process died, or the
    broker was down, between the two); held by a worker past the ``lease`` (it died); queued
    for ``stalled_after`` seconds without being taken (the message was lost).
    """
    queued = deliveries.c.outcome == DeliveryState.QUEUED.value
    query = (
        sa.select(deliveries.c.request_id)
        .where(
            sa.or_(
                sa.and_(
                    queued,
                    deliveries.c.enqueued_at.is_(None),
                    deliveries.c.claimed_at <= utc(now - unqueued_after),
                ),
                abandoned(utc(now), lease),
                sa.and_(queued, deliveries.c.enqueued_at <= utc(now - stalled_after)),
            )
        )
        .order_by(deliveries.c.id)
    )
    with db.reading() as conn:
        return list(conn.execute(query).scalars())


def queued_request_ids(db: Database, *, enqueued_before: float) -> list[str]:
    """Queued deliveries whose message reached the broker at or before ``enqueued_before``,
    oldest first (the sweep asks the live workers which of them they hold)."""
    query = (
        sa.select(deliveries.c.request_id)
        .where(
            deliveries.c.outcome == DeliveryState.QUEUED.value,
            deliveries.c.enqueued_at <= utc(enqueued_before),
        )
        .order_by(deliveries.c.id)
    )
    with db.reading() as conn:
        return list(conn.execute(query).scalars())
