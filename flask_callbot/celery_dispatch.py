"""Celery dispatch (``CALLBOT_DISPATCH = "celery"``): reply at once, send signals on workers.

The request records the delivery (verified, validated, transition stored) and publishes its
requestID; a worker claims it, sends the signals inside an app context and marks it processed,
retrying with exponential backoff while receivers raise. Importing this module needs Celery
(``flask-callbot[celery]``); inline dispatch never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from celery import Celery, Task
from flask import Flask

from .config import Settings
from .dispatch import WorkerResult, process_queued
from .errors import ConfigurationError
from .state import bind_dispatcher, get_state

logger = logging.getLogger("flask_callbot")

PROCESS_TASK = "flask_callbot.process_delivery"
SWEEP_TASK = "flask_callbot.sweep"
RECONCILE_TASK = "flask_callbot.reconcile"


def init_celery(app: Flask, celery_app: Celery | None = None) -> None:
    """Register flask_callbot's tasks on ``celery_app`` (default ``app.extensions["celery"]``)
    and give the app's state their dispatcher (:func:`flask_callbot.state.bind_dispatcher`).

    Registration does this by itself with the Celery app in ``app.extensions["celery"]`` (the
    Flask docs' ``celery_init_app``), and refuses Celery dispatch without one; call this after
    registration only to bind another Celery app, in the web processes and in the worker alike.

    :param app: an app with the blueprint registered.
    :param celery_app: the Celery app to bind; default ``app.extensions["celery"]``.

    .. versionadded:: 0.1.0
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

    # Acknowledged late, and given back to the broker at once if the pool process running it
    # dies (before its claim, the delivery is taken up without waiting for the sweep).
    @celery_app.task(  # type: ignore[untyped-decorator]
        name=PROCESS_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        shared=False,
    )
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

    @celery_app.task(name=RECONCILE_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def reconcile_task(orders: bool = True, lookback: int | None = None) -> dict[str, int]:
        with app.app_context():
            return scheduled_reconcile(app, orders=orders, lookback=lookback)

    return Enqueue(celery_app, process_delivery, settings.celery_queue)


class Enqueue:
    """Publishes a recorded delivery's processing (the state's ``enqueue``); the sweep also asks
    it what the live workers hold (:meth:`held`) and what waits in the queue (:meth:`waiting`).
    """

    def __init__(self, celery_app: Celery, task: Task, queue: str | None) -> None:
        self.celery_app, self.task, self.queue = celery_app, task, queue

    @property
    def queue_name(self) -> str:
        """The queue its messages go to (``CALLBOT_CELERY_QUEUE``, or Celery's default)."""
        return self.queue or str(self.celery_app.conf.task_default_queue)

    def __call__(self, request_id: str) -> None:
        self.task.apply_async(
            args=(request_id,),
            queue=self.queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )

    def waiting(self) -> int | None:
        """Messages waiting in the queue (``None``: the broker could not say)."""
        try:
            with self.celery_app.connection_for_read() as conn:
                channel = conn.default_channel
                declared = channel.queue_declare(queue=self.queue_name, passive=True)
        except Exception as exc:  # a queue never declared has nothing in it
            if getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc):
                return 0
            logger.warning("callbot: sweep: cannot count the queue %s: %r", self.queue_name, exc)
            return None
        return int(declared.message_count)

    def held(self, timeout: float = 1.0) -> set[str]:
        """The requestIDs of the deliveries the live workers hold: running, reserved
        (prefetched), or scheduled for a retry; asked by broadcast, ``timeout`` seconds each."""
        inspect = self.celery_app.control.inspect(timeout=timeout)
        held: set[str] = set()
        for ask in (inspect.active, inspect.reserved, inspect.scheduled):
            for requests in (ask() or {}).values():
                for item in requests:
                    request = item.get("request", item)  # a scheduled entry wraps its request
                    args = request.get("args") or ()
                    if request.get("name") == PROCESS_TASK and args:
                        held.add(str(args[0]))
        return held


def retry_countdown(retries: int, backoff: int, backoff_max: int) -> int:
    """Exponential backoff: ``backoff``, twice that, four times..., capped at ``backoff_max``."""
    return int(min(backoff * 2**retries, backoff_max))


def scheduled_reconcile(
    app: Flask, *, orders: bool = True, lookback: int | None = None
) -> dict[str, int]:
    """One scheduled reconciliation (the ``flask_callbot.reconcile`` task, for Celery beat):
    the unfinished tasks updated in the last ``lookback`` seconds (``CALLBOT_RECONCILE_LOOKBACK``
    by default), their orders and calls with ``orders``. Needs flask-callbot[api]. Returns the
    counts it logs; the differences it records are enqueued like callbacks."""
    from .reconcile import api_client, reconcile  # httpx: only when reconciling

    state = get_state(app)
    seconds = state.settings.reconcile_lookback if lookback is None else lookback
    since = datetime.fromtimestamp(state.clock() - seconds, UTC)
    with api_client(app) as api:
        report = reconcile(app, api, since=since, orders=orders)
    counts = {
        "tasks_checked": report.tasks_checked,
        "differences": len(report.findings),
        "errors": len(report.errors),
    }
    for error in report.errors:
        logger.warning("callbot: reconcile: %s", error)
    logger.info("callbot: reconcile %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def sweep(app: Flask, *, unqueued_after: int = 60, stalled_after: int = 3600) -> list[str]:
    """Enqueue again what no worker will otherwise pick up; returns the requestIDs.

    Recorded but never enqueued (a crash or broker outage between the two), held by a worker
    that died (running it: past the lease; reserved or scheduled: see :func:`lost_with_workers`),
    queued long ago and never taken (a lost message). A delivery enqueued twice is still
    processed once: the worker's claim decides.
    """
    state = get_state(app)
    if state.enqueue is None:
        raise ConfigurationError('sweep needs CALLBOT_DISPATCH = "celery" and init_celery(app)')
    lost = lost_with_workers(app, older_than=unqueued_after)
    found = state.store.sweepable(
        now=state.clock(),
        unqueued_after=unqueued_after,
        lease=state.settings.processing_timeout,
        stalled_after=stalled_after,
    )
    found += [request_id for request_id in lost if request_id not in found]
    for request_id in found:
        state.enqueue(request_id)
        state.store.mark_enqueued(request_id, now=state.clock())
    return found


def lost_with_workers(app: Flask, *, older_than: int = 60) -> list[str]:
    """Queued deliveries whose message a worker took, reserved or scheduled, and then died with.

    Their message is no longer in the queue, and a broker like Redis gives an unacknowledged
    message back only after its visibility timeout (an hour by default). So: when the queue is
    empty, a delivery enqueued ``older_than`` seconds ago or more, still queued, that no live
    worker holds, has lost its message. (The queue is counted first, then the workers asked,
    then the store read, so a message in between is always seen somewhere.) While a backlog
    waits in the queue nothing is decided here: ``--stalled-after`` covers it.
    """
    state = get_state(app)
    dispatcher = state.enqueue
    if not isinstance(dispatcher, Enqueue) or dispatcher.waiting() != 0:
        return []
    held = dispatcher.held()
    queued = state.store.queued_request_ids(enqueued_before=state.clock() - older_than)
    return [request_id for request_id in queued if request_id not in held]
