"""The request pipeline: raw bytes and headers in, a vendor-style reply out. No HTTP needed.

Order matters (see the design): headers' form, time window, uuid, signature on the raw bytes,
JSON, schema; then one transaction records and applies the delivery; then the signals; then the
delivery is marked processed or failed; then the reply.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from . import signals
from .dispatch import process
from .errors import CallbotError, DeliveryInProgress, QueueUnavailable, RequestRejected
from .events import CallbackKind, Event
from .schemas import build_event, decode_body
from .signing import (
    AuthHeaders,
    check_timestamp,
    check_uuid,
    parse_auth_headers,
    peek_request_id,
    verify_signature,
)
from .state import CallbotState, get_state
from .store import ClaimResult, NewDelivery

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


def handle(app: Flask, kind: CallbackKind, body: bytes, headers: Headers) -> Reply:
    """Run one callback through the whole pipeline and say what to answer."""
    state = get_state(app)
    try:
        auth = authenticate(state, body, headers)
        event = build_event(
            kind, decode_body(body), request_id=auth.request_id, request_ts=auth.request_ts
        )
        return _record_and_dispatch(app, state, kind, auth, body, event)
    except RequestRejected as exc:
        return reject(app, exc, headers)
    except CallbotError as exc:
        logger.warning(
            "callbot: not processed request_id=%s kind=%s reason=%s: %s",
            peek_request_id(headers),
            kind.value,
            exc.reason,
            exc.message,
        )
        return Reply(exc.http_status, exc.ret_code, exc.message)


def authenticate(state: CallbotState, body: bytes, headers: Headers) -> AuthHeaders:
    """Steps 2-4: header form, time window, uuid, then the signature over the raw body."""
    settings = state.settings
    auth = parse_auth_headers(headers)
    check_timestamp(
        auth.request_ts,
        now=state.clock(),
        max_age=settings.max_age,
        max_future_skew=settings.max_future_skew,
    )
    check_uuid(auth.uuid, settings.uuid)
    verify_signature(
        auth, body, secret_keys=settings.secret_keys, algorithms=settings.sign_algorithms
    )
    return auth


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
    """Refuse a request: nothing stored, ``callback_rejected`` sent, the reason logged (no body)."""
    request_id = peek_request_id(headers)
    logger.info(
        "callbot: rejected request_id=%s reason=%s: %s", request_id, error.reason, error.message
    )
    try:
        signals.callback_rejected.send(
            app, _async_wrapper=app.ensure_sync, reason=error.reason, request_id=request_id
        )
    except Exception:
        logger.exception("callbot: a callback-rejected receiver raised")
    return Reply(error.http_status, error.ret_code, error.message)


def _record_and_dispatch(
    app: Flask,
    state: CallbotState,
    kind: CallbackKind,
    auth: AuthHeaders,
    body: bytes,
    event: Event,
) -> Reply:
    queued = state.settings.queued
    claim = state.store.record(
        NewDelivery(
            request_id=auth.request_id,
            kind=kind,
            request_ts=auth.request_ts,
            headers=auth.as_headers(),
            body=body,
            event=event,
        ),
        now=state.clock(),
        lease=state.settings.processing_timeout,
        queue=queued,
    )
    if claim.result is ClaimResult.DUPLICATE:
        logger.info("callbot: duplicate request_id=%s kind=%s", auth.request_id, kind.value)
        return Reply(200, 0, "duplicate delivery: already processed")
    if claim.result is ClaimResult.IN_PROGRESS:
        raise DeliveryInProgress(f"requestID {auth.request_id} is being processed; retry later")
    if claim.result is ClaimResult.QUEUED:
        logger.info("callbot: already queued request_id=%s kind=%s", auth.request_id, kind.value)
        return Reply(200, 0, "already queued")
    if queued:
        enqueue(state, auth.request_id)
        logger.info("callbot: queued request_id=%s kind=%s", auth.request_id, kind.value)
        return Reply(200, 0, "queued")
    process(app, event, claim.transition)
    stale = claim.transition is not None and not claim.transition.applied
    logger.info(
        "callbot: processed request_id=%s kind=%s claim=%s%s",
        auth.request_id,
        kind.value,
        claim.result.value,
        " stale" if stale else "",
    )
    return Reply(200, 0, "stale update: recorded, not applied" if stale else "success")
