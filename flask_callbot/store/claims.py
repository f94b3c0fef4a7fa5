"""Holding a delivery: the lease rule as SQL and as a row check, and the columns of a claim.

The rule itself (when a hold has lapsed) is :mod:`flask_callbot.ordering`'s; this module turns it
into the one predicate every claiming statement shares.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..ordering import lease_cutoff, lease_expired
from .records import DeliveryState, aware
from .schema import deliveries


def abandoned(now: datetime, lease: float) -> sa.ColumnElement[bool]:
    """Rows held by a worker (pending) whose lease has run out at ``now``: the worker died."""
    return sa.and_(
        deliveries.c.outcome == DeliveryState.PENDING.value,
        deliveries.c.claimed_at <= lease_cutoff(now, lease),
    )


def is_abandoned(row: Any, now: datetime, lease: float) -> bool:
    """:func:`abandoned` for a row already read, or a :class:`~.records.StoredDelivery` (its
    ``outcome`` and ``claimed_at``): its worker died, or could not write its outcome."""
    return row.outcome == DeliveryState.PENDING and lease_expired(aware(row.claimed_at), now, lease)


def claimed(at: datetime, *, queue: bool = False) -> dict[str, Any]:
    """The columns of a delivery taken up again: held by a worker from ``at`` (one attempt more),
    or, with ``queue``, back in the queue for a Celery worker (which counts the attempt)."""
    return {
        "outcome": (DeliveryState.QUEUED if queue else DeliveryState.PENDING).value,
        "attempts": deliveries.c.attempts + (0 if queue else 1),
        "claimed_at": at,
        "error": None,
        "finished_at": None,
    }
