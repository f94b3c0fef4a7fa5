"""The app the dispatch benchmark serves: two receivers that each take 200 ms (a CRM call, an SMS).

Configured from the environment: ``BENCH_DATABASE_URL``, ``BENCH_DISPATCH`` (inline|celery),
``BENCH_BROKER_URL``, ``BENCH_QUEUE``. ``celery_app`` is the worker's entry point.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from flask import Flask

from flask_callbot import create_blueprint, signals

SECRET = "bench-secret-key-0123456789abcdef"
UUID = "BenchAccount"
RECEIVER_SECONDS = 0.2


def update_crm(sender: Flask, **extra: Any) -> None:
    time.sleep(RECEIVER_SECONDS)


def send_follow_up_sms(sender: Flask, **extra: Any) -> None:
    time.sleep(RECEIVER_SECONDS)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET,
        CALLBOT_UUID=UUID,
        CALLBOT_DATABASE_URL=os.environ["BENCH_DATABASE_URL"],
        CALLBOT_DISPATCH=os.environ.get("BENCH_DISPATCH", "inline"),
        CALLBOT_CELERY_QUEUE=os.environ.get("BENCH_QUEUE"),
    )
    if app.config["CALLBOT_DISPATCH"] == "celery":
        celery = Celery(__name__, broker=os.environ["BENCH_BROKER_URL"])
        celery.conf.update(
            task_default_queue=os.environ["BENCH_QUEUE"],
            worker_prefetch_multiplier=1,
            broker_connection_retry_on_startup=True,
        )
        app.extensions["celery"] = celery  # bound at registration (the Flask docs' pattern)
    app.register_blueprint(create_blueprint())
    signals.callback_received.connect(update_crm, app)
    signals.task_progress.connect(send_follow_up_sms, app)
    return app


if os.environ.get("BENCH_DISPATCH") == "celery":
    celery_app = create_app().extensions["celery"]
