"""The request pipeline: raw bytes and headers in, a vendor-style reply out. No HTTP needed.

Order matters (see the design): headers' form, time window, uuid, signature on the raw bytes,
JSON, schema; then one transaction records and applies the delivery; then the signals; then the
delivery is marked processed or failed; then the reply.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flask import Flask

from . import signals, signing
from .dispatch import process
from .errors import (
    CallbotError,
    DeliveryInProgress,
    IncompleteBody,
    QueueUnavailable,
    ReceiverFailed,
    RequestRejected,
    StoreUnavailable,
)
from .events import CallbackKind
from .schemas import build_event, decode_body
from .signing import AuthHeaders, peek_request_id
from .state import CallbotState, get_state
from .store import ClaimVerdict, NewDelivery

logger = logging.getLogger("flask_callbot")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Reply:
    """The JSON envelope the vendor expects, with the HTTP status to send it with."""

    http_status: int
    ret_code: int
    ret_msg: str
    response_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_dict(self) -> dict[str, Any]:
        return {"retCode": self.ret_code, "retMsg": self.ret_msg, "responseID": self.response_id}


class RequestResult(StrEnum):
    """How a request ended, logged as ``outcome=`` and counted (``callbot_deliveries_total``)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE = "stale"
    ENQUEUED = "enqueued"  # Celery dispatch: recorded and handed to the broker
    ALREADY_ENQUEUED = "already_enqueued"  # Celery dispatch: accepted earlier, still queued
    BUSY = "busy"  # another worker holds the same requestID: 409, retCode 7
    REJECTED = "rejected"
    RECEIVER_FAILED = "receiver_failed"
    STORE_UNAVAILABLE = "store_unavailable"
    QUEUE_UNAVAILABLE = "queue_unavailable"
    INCOMPLETE = "incomplete"  # the client never sent its whole body (disconnected, or stalled)
    ERROR = "error"  # an unexpected exception: a bug; Flask answers 500


_ERROR_OUTCOMES: Mapping[type[CallbotError], RequestResult] = {
    DeliveryInProgress: RequestResult.BUSY,
    IncompleteBody: RequestResult.INCOMPLETE,
    ReceiverFailed: RequestResult.RECEIVER_FAILED,
    StoreUnavailable: RequestResult.STORE_UNAVAILABLE,
    QueueUnavailable: RequestResult.QUEUE_UNAVAILABLE,
}


@dataclass(slots=True)
class _Observation:
    """What :func:`observe` reports about one request, filled in as the request goes."""

    outcome: RequestResult
    reason: str | None = None
    detail: str | None = None
    #: Set once the request proved authentic: its createTs gives the delivery lag.
    auth: AuthHeaders | None = None
    #: The server stopped the request before any reply (a worker timeout while reading).
    unanswered: bool = False


#: Where the body comes from: the bytes, or a function reading them that may raise
#: :class:`~flask_callbot.errors.PayloadTooLarge` (the view's capped read).
Body = bytes | Callable[[], bytes]

_LOG_LEVELS = {
    RequestResult.RECEIVER_FAILED: logging.WARNING,
    RequestResult.STORE_UNAVAILABLE: logging.WARNING,
    RequestResult.QUEUE_UNAVAILABLE: logging.WARNING,
    RequestResult.ERROR: logging.ERROR,
}


def handle(app: Flask, kind: CallbackKind, body: Body, headers: Headers) -> Reply:
    """Run one callback through the whole pipeline and say what to answer.

    Every request ends in one structured log line and, with ``CALLBOT_METRICS``, its metrics,
    whatever the outcome (see :func:`observe`).
    """
    started = time.perf_counter()
    state = get_state(app)
    result = _Observation(RequestResult.ERROR)
    try:
        raw = _read(body, result)
        auth = authenticate(state, raw, headers)
        result.auth = auth
        event = build_event(
            kind, decode_body(raw), request_id=auth.request_id, request_ts=auth.request_ts
        )
        delivery = NewDelivery(
            request_id=auth.request_id,
            kind=kind,
            request_ts=auth.request_ts,
            headers=auth.as_headers(),
            body=raw,
            event=event,
        )
        result.outcome = record_and_dispatch(app, state, delivery)
        reply = Reply(200, 0, _ACKNOWLEDGED[result.outcome])
    except RequestRejected as exc:
        result.outcome = RequestResult.REJECTED
        result.reason, result.detail = exc.reason, exc.message
        reply = reject(app, exc, headers)
    except CallbotError as exc:
        result.outcome = _ERROR_OUTCOMES.get(type(exc), RequestResult.ERROR)
        result.reason = exc.reason
        # A receiver's exception text is the host's (it may quote the event): not logged here;
        # dispatch logged its traceback. Our own messages are fixed strings.
        result.detail = None if isinstance(exc, ReceiverFailed) else exc.message
        reply = Reply(exc.http_status, exc.ret_code, exc.reply_message)
    except BaseException:
        observe(state, kind, headers, result, None, started)
        raise
    observe(state, kind, headers, result, reply, started)
    return reply


def observe(
    state: CallbotState,
    kind: CallbackKind,
    headers: Headers,
    result: _Observation,
    reply: Reply | None,
    started: float,
) -> None:
    """The one place a request is accounted for: a structured log line, and the metrics.

    The line carries the requestID (only if well formed), kind, outcome, reason, HTTP status,
    retCode and latency; never the body, a header value other than the requestID, or a secret.
    """
    latency = time.perf_counter() - started
    level = _LOG_LEVELS.get(result.outcome, logging.INFO)
    if logger.isEnabledFor(level):  # else build no line nobody reads
        _log(level, kind, headers, result, reply, latency)
    if state.metrics is not None:
        lag = None
        if result.auth is not None:
            lag = state.clock() - result.auth.request_ts
        state.metrics.observe(kind.value, result.outcome.value, latency=latency, lag=lag)


def _log(
    level: int,
    kind: CallbackKind,
    headers: Headers,
    result: _Observation,
    reply: Reply | None,
    latency: float,
) -> None:
    request_id = result.auth.request_id if result.auth else peek_request_id(headers)
    fields = {
        "request_id": request_id,
        "kind": kind.value,
        "outcome": result.outcome.value,
        "reason": result.reason,
        "http_status": reply.http_status if reply else (None if result.unanswered else 500),
        "ret_code": reply.ret_code if reply else None,
        "latency_ms": round(latency * 1000, 3),
    }
    message = (
        "callbot request_id=%(request_id)s kind=%(kind)s outcome=%(outcome)s"
        " http_status=%(http_status)s ret_code=%(ret_code)s latency_ms=%(latency_ms)s"
    )
    if result.reason is not None:
        message += " reason=%(reason)s"
    if result.detail is not None:
        fields["detail"] = result.detail
        message += ": %(detail)s"
    logger.log(level, message, fields, extra={"callbot": fields})


def _read(body: Body, result: _Observation) -> bytes:
    """Step 1: the body. A server that stops the request while it waits for a stalled client's
    body (a sync worker's timeout raises SystemExit there) logs it as the incomplete body it is,
    unanswered, rather than as an error of ours."""
    if isinstance(body, bytes):
        return body
    try:
        return body()
    except CallbotError:
        raise
    except BaseException:
        result.outcome, result.reason = RequestResult.INCOMPLETE, IncompleteBody.reason
        result.unanswered = True
        raise


def authenticate(state: CallbotState, body: bytes, headers: Headers) -> AuthHeaders:
    """Steps 2-4 with the app's settings and clock (see :func:`signing.authenticate`)."""
    settings = state.settings
    return signing.authenticate(
        headers,
        body,
        now=state.clock(),
        uuid=settings.uuid,
        secret_keys=settings.secret_keys,
        algorithms=settings.sign_algorithms,
        max_age=settings.max_age,
        max_future_skew=settings.max_future_skew,
    )


def enqueue(state: CallbotState, request_id: str) -> None:
    """Publish a recorded delivery to Celery; 503 (nothing acknowledged) if the broker fails.

    The row stays queued without ``enqueued_at`` until this succeeds, so a redelivery or
    ``flask callbot sweep`` enqueues it again: a crash or broker outage here loses nothing.
    """
    if state.enqueue is None:
        raise QueueUnavailable(
            'CALLBOT_DISPATCH is "celery" but no Celery app is bound: call init_celery(app)'
        )
    try:
        state.enqueue(request_id)
    except Exception as exc:
        logger.warning("callbot: could not enqueue request_id=%s: %r", request_id, exc)
        raise QueueUnavailable("the task queue is unavailable; retry later") from exc
    try:
        state.store.mark_enqueued(request_id, now=state.clock())
    except CallbotError:  # the message is out; a later sweep re-sends it, claims dedupe
        logger.exception("callbot: could not mark request_id=%s enqueued", request_id)


def reject(app: Flask, error: RequestRejected, headers: Headers) -> Reply:
    """Refuse a request: nothing stored, ``callback_rejected`` sent (the caller logs it)."""
    request_id = peek_request_id(headers)
    try:
        signals.callback_rejected.send(
            app, _async_wrapper=app.ensure_sync, reason=error.reason, request_id=request_id
        )
    except Exception:
        logger.exception("callbot: a callback-rejected receiver raised")
    return Reply(error.http_status, error.ret_code, error.message)


def record_and_dispatch(app: Flask, state: CallbotState, delivery: NewDelivery) -> RequestResult:
    """Steps 6 and 7 for an authentic, valid delivery (a callback's, or one reconciliation
    made): record and apply it in one transaction, then send its signals here or enqueue them.

    Raises ``DeliveryInProgress`` while another worker holds the requestID, ``ReceiverFailed``
    when receivers raised (the delivery is kept as failed), ``StoreUnavailable`` and
    ``QueueUnavailable`` when nothing could be acknowledged.
    """
    queued = state.settings.queued
    claim = state.store.record(
        delivery, now=state.clock(), lease=state.settings.processing_timeout, queue=queued
    )
    if claim.verdict is ClaimVerdict.DUPLICATE:
        return RequestResult.DUPLICATE
    if claim.verdict is ClaimVerdict.BUSY:
        raise DeliveryInProgress(f"requestID {delivery.request_id} is being processed; retry later")
    if claim.verdict is ClaimVerdict.ACCEPTED_EARLIER:
        return RequestResult.ALREADY_ENQUEUED
    if queued:
        enqueue(state, delivery.request_id)
        return RequestResult.ENQUEUED
    process(app, delivery.event, claim.transition, claim.news, attempt=claim.attempt)
    if claim.transition is not None and not claim.transition.applied:
        return RequestResult.STALE
    return RequestResult.ACCEPTED


#: The retMsg of each acknowledged result.
_ACKNOWLEDGED: Mapping[RequestResult, str] = {
    RequestResult.ACCEPTED: "success",
    RequestResult.STALE: "stale update: recorded, not applied",
    RequestResult.DUPLICATE: "duplicate delivery: already processed",
    RequestResult.ENQUEUED: "queued",
    RequestResult.ALREADY_ENQUEUED: "already queued",
}
