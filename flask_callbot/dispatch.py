"""Processing a recorded delivery: which signals, in which order, then its outcome.

Used for a fresh delivery, a redelivery of a failed one, and a replay, so all three send exactly
the same signals from the same stored transition.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from blinker import NamedSignal
from flask import Flask

from . import signals
from .errors import ReceiverFailed
from .events import CallEvent, Event, OrderEvent, TaskEvent, TaskStatus, Transition
from .schemas import build_event, decode_body
from .state import CallbotState, get_state
from .store import StoredDelivery

logger = logging.getLogger("flask_callbot")

_STATUS_SIGNALS: dict[int, NamedSignal] = {
    TaskStatus.PENDING: signals.task_pending,
    TaskStatus.COMPLETED: signals.task_completed,
    TaskStatus.FAILED: signals.task_failed,
    TaskStatus.PAUSED: signals.task_paused,
}
_MAX_ERROR_LENGTH = 2000


def planned_signals(
    event: Event, transition: Transition | None, news: bool = True
) -> list[tuple[NamedSignal, dict[str, Any]]]:
    """The signals a delivery sends, in order, with their keyword arguments.

    An order or call delivery that is not ``news`` (its call was reported as that kind before)
    sends ``callback_received`` only.
    """
    planned: list[tuple[NamedSignal, dict[str, Any]]] = [
        (signals.callback_received, {"event": event})
    ]
    if isinstance(event, TaskEvent) and transition is not None:
        if transition.changed:
            change = {"event": event, "previous": transition.previous}
            planned.append((signals.task_status_changed, change))
            status_signal = _status_signal(transition)
            if status_signal is not None:
                planned.append((status_signal, change))
        if transition.applied:
            planned.append((signals.task_progress, {"event": event}))
    elif isinstance(event, OrderEvent) and news:
        planned.append((signals.order_received, {"event": event}))
    elif isinstance(event, CallEvent) and news:
        planned.append((signals.call_received, {"event": event}))
    return planned


def process(
    app: Flask,
    event: Event,
    transition: Transition | None,
    news: bool = True,
    *,
    attempt: int = 1,
) -> None:
    """Send the delivery's signals, then mark it processed, or failed (and re-raise), for the
    ``attempt`` that holds it."""
    state = get_state(app)
    try:
        send_signals(app, event, transition, news)
    except ReceiverFailed as exc:
        _finish(state, event.request_id, attempt, error=exc.message)
        raise
    _finish(state, event.request_id, attempt)


class WorkerResult(StrEnum):
    """What a Celery worker's attempt at a delivery came to (logged as ``worker <value>``)."""

    PROCESSED = "processed"
    RETRYING = "retrying"  # receivers raised; queued again for a later attempt
    FAILED = "failed"  # receivers raised on the last allowed attempt
    SKIPPED = "skipped"  # another worker holds it, or it is already done


def process_queued(app: Flask, request_id: str, *, final: bool) -> WorkerResult:
    """A Celery worker's attempt: claim the delivery, send its signals, record the outcome.

    The claim makes a message delivered twice (a broker redelivery, a sweep) run once. When
    receivers raise, the delivery goes back to the queue unless this was the ``final`` attempt,
    after which it is failed, for ``flask callbot replay``.
    """
    state = get_state(app)
    delivery = state.store.claim_queued(
        request_id, now=state.clock(), lease=state.settings.processing_timeout
    )
    if delivery is None:
        return WorkerResult.SKIPPED
    event = load_event(delivery)
    try:
        send_signals(app, event, delivery.transition, delivery.news)
    except ReceiverFailed as exc:
        if final:
            _finish(state, request_id, delivery.attempts, error=exc.message)
            return WorkerResult.FAILED
        state.store.requeue(request_id, now=state.clock(), error=exc.message)
        return WorkerResult.RETRYING
    _finish(state, request_id, delivery.attempts)
    return WorkerResult.PROCESSED


def replay(app: Flask, request_id: str) -> StoredDelivery:
    """Run a stored delivery through the receivers again (any outcome but in progress).

    Raises :class:`LookupError` for an unknown requestID, ``DeliveryInProgress`` while a worker
    holds it, ``ReceiverFailed`` if receivers raised again.
    """
    state = get_state(app)
    delivery = state.store.claim_for_replay(
        request_id, now=state.clock(), lease=state.settings.processing_timeout
    )
    process(
        app, load_event(delivery), delivery.transition, delivery.news, attempt=delivery.attempts
    )
    return delivery


def load_event(delivery: StoredDelivery) -> Event:
    """The event of a stored delivery, rebuilt from its recorded body."""
    return build_event(
        delivery.kind,
        decode_body(delivery.body),
        request_id=delivery.request_id,
        request_ts=delivery.request_ts,
        source=delivery.source,
    )


def send_signals(
    app: Flask, event: Event, transition: Transition | None, news: bool = True
) -> None:
    """Send every planned signal; if receivers raised, raise :class:`ReceiverFailed` at the end.

    A raising receiver stops the rest of that one signal's receivers (blinker's rule) but not the
    later signals, so one broken integration does not hold up the others.
    """
    failures: list[str] = []
    first: Exception | None = None
    for signal, kwargs in planned_signals(event, transition, news):
        try:
            signal.send(app, _async_wrapper=app.ensure_sync, **kwargs)
        except Exception as exc:
            logger.exception(
                "callbot: a %s receiver raised for request %s", signal.name, event.request_id
            )
            # NUL cannot be stored in a PostgreSQL text column: keep the error storable.
            failures.append(f"{signal.name}: {type(exc).__name__}: {exc}".replace("\x00", "\\0"))
            first = first or exc
    if failures:
        raise ReceiverFailed("; ".join(failures)[:_MAX_ERROR_LENGTH]) from first


def _status_signal(transition: Transition) -> NamedSignal | None:
    if transition.status == TaskStatus.IN_PROGRESS:
        if transition.previous == TaskStatus.PAUSED:
            return signals.task_resumed
        return signals.task_started
    return _STATUS_SIGNALS.get(transition.status)


def _finish(
    state: CallbotState, request_id: str, attempt: int, *, error: str | None = None
) -> None:
    """Mark the outcome. If the store fails now, the receivers' work stands: the store retries
    the outcome, then owes it and writes it once it can (see :mod:`.store.outcomes`)."""
    state.store.finish(request_id, now=state.clock(), attempt=attempt, error=error)
