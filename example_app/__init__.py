"""A minimal Flask app receiving Callbot callbacks: logs every task transition in one line, and
shows a live campaign dashboard at ``/dashboard/`` (:mod:`example_app.dashboard`).

Run it with ``flask --app example_app run``, or ``python -m example_app.live_demo`` to watch the
dashboard fill up from a simulated campaign. It needs ``CALLBOT_SECRET_KEY`` and ``CALLBOT_UUID``
in the environment, or ``CALLBOT_EXAMPLE_DEV_MODE=1`` for a local demo with the public dev
credentials below (never use those in production). ``CALLBOT_DATABASE_URL`` is read too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response

from flask_callbot import CallEvent, OrderEvent, TaskEvent, create_blueprint, signals

from .dashboard import create_dashboard

#: Public, insecure credentials used only with CALLBOT_EXAMPLE_DEV_MODE=1.
DEV_SECRET_KEY = "example-dev-secret-do-not-use-in-production"  # noqa: S105 - public on purpose
DEV_UUID = "ExampleDevAccount"

logger = logging.getLogger("example_app")

TASK_SIGNALS = (
    signals.task_pending,
    signals.task_started,
    signals.task_paused,
    signals.task_resumed,
    signals.task_completed,
    signals.task_failed,
)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the example app; ``config`` overrides anything read from the environment."""
    app = Flask(__name__)
    #: Calls that hit this intent tag get a follow-up (the tag is defined in your call script).
    app.config["EXAMPLE_FOLLOW_UP_INTENT"] = "interested"
    #: How often the dashboard page re-fetches its live part.
    app.config["EXAMPLE_DASHBOARD_REFRESH_MS"] = 1500
    app.config.update(_credentials(os.environ))
    if os.environ.get("CALLBOT_DATABASE_URL"):
        app.config["CALLBOT_DATABASE_URL"] = os.environ["CALLBOT_DATABASE_URL"]
    app.config.update(config or {})
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)
    if app.config.get("CELERY"):
        celery_init_app(app)  # before the blueprint: registration binds the Celery app it finds
    app.register_blueprint(create_blueprint())
    refresh_ms = int(app.config["EXAMPLE_DASHBOARD_REFRESH_MS"])
    app.register_blueprint(create_dashboard(refresh_ms=refresh_ms), url_prefix="/dashboard")
    app.add_url_rule("/", "index", _to_dashboard)
    for signal in TASK_SIGNALS:
        # Receivers made in a loop are closures: connect them strongly or blinker drops them.
        signal.connect(_transition_logger(signal.name), app, weak=False)
    signals.task_progress.connect(log_progress, app, weak=False)
    signals.call_received.connect(follow_up_on_intent, app, weak=False)
    signals.order_received.connect(log_finished_order, app, weak=False)
    return app


def celery_init_app(app: Flask) -> Any:
    """The Flask docs' Celery pattern, for ``CALLBOT_DISPATCH = "celery"``: a Celery app made
    from ``app.config["CELERY"]`` and kept in ``app.extensions["celery"]`` (needs
    ``flask-callbot[celery]``). Workers build the same app, then run its Celery app."""
    from celery import Celery

    celery_app = Celery(app.name)
    celery_app.config_from_object(app.config["CELERY"])
    app.extensions["celery"] = celery_app
    return celery_app


def _to_dashboard() -> Response:
    return redirect(url_for("dashboard.index"))


def _credentials(environ: Mapping[str, str]) -> dict[str, str]:
    secret, uuid = environ.get("CALLBOT_SECRET_KEY"), environ.get("CALLBOT_UUID")
    if secret and uuid:
        return {"CALLBOT_SECRET_KEY": secret, "CALLBOT_UUID": uuid}
    if environ.get("CALLBOT_EXAMPLE_DEV_MODE") == "1":
        logger.warning("example_app: DEV MODE with public credentials uuid=%s", DEV_UUID)
        return {"CALLBOT_SECRET_KEY": DEV_SECRET_KEY, "CALLBOT_UUID": DEV_UUID}
    raise RuntimeError(
        "example_app needs CALLBOT_SECRET_KEY and CALLBOT_UUID in the environment "
        "(or CALLBOT_EXAMPLE_DEV_MODE=1 for a local demo with public dev credentials)"
    )


def describe(event: TaskEvent) -> str:
    """``task T1 (crm-42) finish 50% of 10, answer 50%``: the task and its numbers."""
    stat = event.stat
    numbers = ""
    if stat is not None:
        numbers = (
            f" finish {_percent(stat.finish_rate)} of {stat.total_order_count},"
            f" answer {_percent(stat.answer_rate)}"
        )
    return f"task {event.task_id} ({event.user_task_id}){numbers}"


def _transition_logger(name: str) -> Callable[..., None]:
    def log_transition(sender: Flask, *, event: TaskEvent, previous: Any, **extra: Any) -> None:
        before = "(new)" if previous is None else _status_name(previous)
        logger.info("%s: %s -> %s [%s]", describe(event), before, _status_name(event.status), name)

    return log_transition


def log_progress(sender: Flask, *, event: TaskEvent, **extra: Any) -> None:
    logger.info("%s: progress, status %s", describe(event), _status_name(event.status))


def follow_up_on_intent(sender: Flask, *, event: CallEvent, **extra: Any) -> None:
    """React to an intent: here, log the follow-up SMS a real app would queue.

    A real sender must be idempotent: a redelivered callback arrives again, so remember which
    ``(event.task_id, event.order_id)`` already got its follow-up before sending another.
    """
    tag = sender.config["EXAMPLE_FOLLOW_UP_INTENT"]
    if tag in event.call.intent_tags:
        logger.info(
            "follow-up: order %s of task %s hit intent %r; an SMS would go to %s",
            event.order_id,
            event.task_id,
            tag,
            mask_phone(event.user_phone),
        )


def log_finished_order(sender: Flask, *, event: OrderEvent, **extra: Any) -> None:
    call = event.call
    logger.info(
        "order %s of task %s: %s, last call %s status %s, %ss, intents %s",
        event.order_id,
        event.task_id,
        "finished" if event.finish else "not finished",
        call.call_id,
        call.call_status,
        call.call_duration,
        ",".join(call.intent_tags) or "-",
    )


def mask_phone(phone: str | None) -> str:
    """Keep phone numbers out of logs: only the last four digits."""
    return "?" if not phone else "*" * max(len(phone) - 4, 0) + phone[-4:]


def _status_name(status: Any) -> str:
    return getattr(status, "name", str(status))


def _percent(rate: float | None) -> str:
    return "?" if rate is None else f"{rate:.0%}"
