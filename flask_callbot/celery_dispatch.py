"""Celery dispatch (``CALLBOT_DISPATCH = "celery"``): reply at once, send signals on workers.

The request records the delivery (verified, validated, transition stored) and publishes its
requestID; a worker claims it, sends the signals inside an app context and marks it processed,
retrying with exponential backoff while receivers raise. Importing this module needs Celery
(``flask-callbot[celery]``); inline dispatch never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery, Task
from flask import Flask

from .config import Settings
from .dispatch import WorkerResult, process_queued
from .errors import ConfigurationError
from .state import bind_dispatcher, get_state

logger = logging.getLogger("flask_callbot")

PROCESS_TASK = "flask_callbot.process_delivery"
SWEEP_TASK = "flask_callbot.sweep"


def init_celery(app: Flask, celery_app: Celery | None = None) -> None:
    """Register flask_callbot's tasks on ``celery_app`` (default ``app.extensions["celery"]``)
    and give the app's state their dispatcher (:func:`flask_callbot.state.bind_dispatcher`).

    Registration does this by itself with the Celery app in ``app.extensions["celery"]`` (the
    Flask docs' ``celery_init_app``), and refuses Celery dispatch without one; call this after
    registration only to bind another Celery app, in the web processes and in the worker alike.
    """
    settings = get_state(app).settings
    bind_dispatcher(app, register_tasks(app, settings, celery_app))


def register_tasks(
    app: Flask, settings: Settings, celery_app: Celery | None = None
) -> Callable[[str], None]:
    """Register ``app``'s tasks on ``celery_app`` (default ``app.extensions["celery"]``) and
    return the function that enqueues a recorded delivery (registration keeps it in the state).
    """
    celery_app = celery_app if celery_app is not None else app.extensions.get("celery")
    if not isinstance(celery_app, Celery):
        raise ConfigurationError("init_celery needs a Celery app (or app.extensions['celery'])")

    @celery_app.task(name=PROCESS_TASK, bind=True, acks_late=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def process_delivery(task: Task, request_id: str) -> str:
        final = task.request.retries >= settings.celery_max_retries
        with app.app_context():
            result = process_queued(app, request_id, final=final)
        logger.info("callbot: worker %s request_id=%s", result.value, request_id)
        if result is WorkerResult.RETRYING:
            countdown = retry_countdown(
                task.request.retries,
                settings.celery_retry_backoff,
                settings.celery_retry_backoff_max,
            )
            raise task.retry(countdown=countdown, max_retries=settings.celery_max_retries)
        return result.value

    @celery_app.task(name=SWEEP_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def sweep_task(unqueued_after: int = 60, stalled_after: int = 3600) -> int:
        with app.app_context():
            return len(sweep(app, unqueued_after=unqueued_after, stalled_after=stalled_after))

    def enqueue(request_id: str) -> None:
        process_delivery.apply_async(
            args=(request_id,),
            queue=settings.celery_queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )

    return enqueue


def retry_countdown(retries: int, backoff: int, backoff_max: int) -> int:
    """Exponential backoff: ``backoff``, twice that, four times..., capped at ``backoff_max``."""
    return int(min(backoff * 2**retries, backoff_max))


def sweep(app: Flask, *, unqueued_after: int = 60, stalled_after: int = 3600) -> list[str]:
    """Enqueue again what no worker will otherwise pick up; returns the requestIDs.

    Recorded but never enqueued (a crash or broker outage between the two), held by a worker
    that died, queued long ago and never taken (a lost message). A delivery enqueued twice is
    still processed once: the worker's claim decides.
    """
    state = get_state(app)
    if state.enqueue is None:
        raise ConfigurationError('sweep needs CALLBOT_DISPATCH = "celery" and init_celery(app)')
    found = state.store.sweepable(
        now=state.clock(),
        unqueued_after=unqueued_after,
        lease=state.settings.processing_timeout,
        stalled_after=stalled_after,
    )
    for request_id in found:
        state.enqueue(request_id)
        state.store.mark_enqueued(request_id, now=state.clock())
    return found
