"""The ordering rules, pure: which task update is stale, which order data is newer, when a
worker's hold on a delivery has lapsed.

No database here: the store reads the stored values, asks these functions and writes what they
decide (the lease rule also becomes its one SQL predicate, through :func:`lease_cutoff`), so each
rule is written once and tested as a table of cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from .events import CallbackKind, TaskStatus, Transition, coerce_status


def task_transition(
    last_status: int | None,
    last_request_ts: int | None,
    status: TaskStatus | int,
    request_ts: int,
    *,
    wins_ties: bool = True,
) -> Transition:
    """What a task update does to a task last applied at ``last_request_ts`` with ``last_status``.

    Stale (recorded, not applied) if sent before the last applied update; otherwise applied, and
    changed when the status differs, or on the task's first sighting. A callback of the same
    second applies: createTs has one-second resolution, so "older" must mean strictly older.
    A reconciled update (``wins_ties=False``) must be strictly newer: a callback stamped in the
    listing's second is at least as fresh as the listing.
    """
    previous = coerce_status(last_status)
    if last_request_ts is not None and (
        request_ts < last_request_ts or (request_ts == last_request_ts and not wins_ties)
    ):
        return Transition(previous=previous, status=status, applied=False, changed=False)
    return Transition(
        previous=previous,
        status=status,
        applied=True,
        changed=previous is None or int(previous) != int(status),
    )


#: An order callback carries the order's final word on a call; a call callback ranks below it.
KIND_RANK: Mapping[CallbackKind, int] = {CallbackKind.CALL: 0, CallbackKind.ORDER: 1}

#: ``(call start, request time, kind rank)``: of two versions of an order, the larger is newer.
OrderVersion = tuple[int, int, int]


def order_version(call_start_ts: int | None, request_ts: int, kind_rank: int) -> OrderVersion:
    """The version of an order's data as one order or call callback tells it."""
    return (call_start_ts or 0, request_ts, kind_rank)


def order_is_newer(incoming: OrderVersion, stored: OrderVersion | None) -> bool:
    """Whether a callback's data replaces the order's stored data (``stored`` None: none yet).

    Newer means a later call (by its start time), then a later request, then an order callback
    over a call callback for the same call, so a late call callback never overwrites the order.
    An equal version replaces (the last one received wins a tie).
    """
    return stored is None or incoming >= stored


def lease_cutoff(now: datetime, lease: float) -> datetime:
    """Claims made at or before this instant have outlived a ``lease`` of that many seconds."""
    return now - timedelta(seconds=lease)


def lease_expired(claimed_at: datetime, now: datetime, lease: float) -> bool:
    """Whether a delivery held by a worker since ``claimed_at`` is abandoned at ``now``.

    A live worker finishes within the lease (``CALLBOT_PROCESSING_TIMEOUT``), so one still
    holding a delivery that long has died, and a redelivery, a replay or a sweep takes it up.
    The store's SQL predicate compares against :func:`lease_cutoff`, the same rule.
    """
    return claimed_at <= lease_cutoff(now, lease)
