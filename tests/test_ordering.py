"""The ordering rules as tables of cases: stale or applied task updates, newer orders, leases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flask_callbot.events import CallbackKind, TaskStatus, Transition
from flask_callbot.ordering import (
    KIND_RANK,
    lease_cutoff,
    lease_expired,
    order_is_newer,
    order_version,
    task_transition,
)

T = 1_700_000_000  # a request time (createTs, seconds)
IN_PROGRESS, PAUSED, COMPLETED = TaskStatus.IN_PROGRESS, TaskStatus.PAUSED, TaskStatus.COMPLETED


def applied(previous: TaskStatus | int | None, status: TaskStatus | int) -> Transition:
    changed = previous is None or int(previous) != int(status)
    return Transition(previous=previous, status=status, applied=True, changed=changed)


def stale(previous: TaskStatus | int | None, status: TaskStatus | int) -> Transition:
    return Transition(previous=previous, status=status, applied=False, changed=False)


# (last applied status, its request time) -> (incoming status, its request time) -> transition
@pytest.mark.parametrize(
    ("last_status", "last_ts", "status", "ts", "expected"),
    [
        pytest.param(None, None, IN_PROGRESS, T, applied(None, IN_PROGRESS), id="first-sighting"),
        pytest.param(2, T, PAUSED, T + 1, applied(IN_PROGRESS, PAUSED), id="newer-changes"),
        pytest.param(2, T, IN_PROGRESS, T + 1, applied(IN_PROGRESS, IN_PROGRESS), id="newer-same"),
        pytest.param(2, T, COMPLETED, T, applied(IN_PROGRESS, COMPLETED), id="same-second-applies"),
        pytest.param(3, T, COMPLETED, T, applied(COMPLETED, COMPLETED), id="same-second-same"),
        pytest.param(3, T, IN_PROGRESS, T - 1, stale(COMPLETED, IN_PROGRESS), id="older-is-stale"),
        pytest.param(5, T, PAUSED, T - 1, stale(PAUSED, PAUSED), id="older-same-is-stale"),
        pytest.param(None, None, 9, T, applied(None, 9), id="unknown-status-first"),
        pytest.param(9, T, 9, T + 1, applied(9, 9), id="unknown-status-unchanged"),
        pytest.param(9, T, COMPLETED, T + 1, applied(9, COMPLETED), id="unknown-to-known"),
        pytest.param(2, T, 7, T + 1, applied(IN_PROGRESS, 7), id="known-to-unknown"),
        pytest.param(7, T, 8, T - 5, stale(7, 8), id="unknown-older-is-stale"),
    ],
)
def test_task_transition(
    last_status: int | None,
    last_ts: int | None,
    status: TaskStatus | int,
    ts: int,
    expected: Transition,
) -> None:
    transition = task_transition(last_status, last_ts, status, ts)
    assert transition == expected
    assert type(transition.previous) is type(expected.previous)  # TaskStatus, plain int, None


def test_a_first_sighting_is_never_stale_whatever_its_time() -> None:
    assert task_transition(None, None, PAUSED, 0).applied


ORDER, CALL = KIND_RANK[CallbackKind.ORDER], KIND_RANK[CallbackKind.CALL]


# The order holds data from (call start, request time, kind); does the incoming one replace it?
@pytest.mark.parametrize(
    ("stored", "incoming", "newer"),
    [
        pytest.param(None, (1000, T, CALL), True, id="first-callback"),
        pytest.param((1000, T, ORDER), (2000, T - 60, CALL), True, id="later-call-wins"),
        pytest.param((2000, T, CALL), (1000, T + 60, ORDER), False, id="earlier-call-loses"),
        pytest.param((1000, T, CALL), (1000, T + 1, CALL), True, id="same-call-later-request"),
        pytest.param((1000, T + 1, CALL), (1000, T, CALL), False, id="same-call-older-request"),
        pytest.param((1000, T, CALL), (1000, T, ORDER), True, id="order-over-call-same-call"),
        pytest.param((1000, T, ORDER), (1000, T, CALL), False, id="late-call-callback"),
        pytest.param((1000, T, ORDER), (1000, T, ORDER), True, id="equal-version-replaces"),
        pytest.param((None, T, CALL), (1000, T - 9, CALL), True, id="no-start-ranks-first"),
        pytest.param((1000, T, CALL), (None, T + 9, ORDER), False, id="no-start-never-newer"),
    ],
)
def test_order_is_newer(
    stored: tuple[int | None, int, int] | None, incoming: tuple[int | None, int, int], newer: bool
) -> None:
    assert (
        order_is_newer(order_version(*incoming), None if stored is None else order_version(*stored))
        is newer
    )


def test_an_order_callback_ranks_above_a_call_callback() -> None:
    assert KIND_RANK[CallbackKind.ORDER] > KIND_RANK[CallbackKind.CALL]


NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


# A worker claimed a delivery at some moment; with a 60 s lease, has it given it up by NOW?
@pytest.mark.parametrize(
    ("claimed_ago", "expired"),
    [
        pytest.param(timedelta(0), False, id="just-claimed"),
        pytest.param(timedelta(seconds=59, microseconds=999_999), False, id="a-microsecond-short"),
        pytest.param(timedelta(seconds=60), True, id="exactly-the-lease"),
        pytest.param(timedelta(seconds=61), True, id="past-the-lease"),
        pytest.param(-timedelta(seconds=5), False, id="claimed-in-the-future"),
    ],
)
def test_lease_expired(claimed_ago: timedelta, expired: bool) -> None:
    assert lease_expired(NOW - claimed_ago, NOW, 60) is expired


def test_the_sql_cutoff_is_the_same_boundary() -> None:
    cutoff = lease_cutoff(NOW, 60)
    assert cutoff == NOW - timedelta(seconds=60)
    assert lease_expired(cutoff, NOW, 60)
    assert not lease_expired(cutoff + timedelta(microseconds=1), NOW, 60)


def test_a_zero_lease_expires_at_once() -> None:
    assert lease_expired(NOW, NOW, 0)
