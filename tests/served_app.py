"""The example app as served by gunicorn in the multi-process tests, with test receivers.

Configured from the environment by the test that starts it:
the credentials in ``CALLBOT_SECRET_KEY`` / ``CALLBOT_UUID`` (read by the example app),
``SERVED_DATABASE_URL``, ``SERVED_SIGNAL_LOG`` (a file every process appends one JSON line per
signal to), ``SERVED_MARKERS`` (a folder for the one-shot fault receivers),
``SERVED_PROCESSING_TIMEOUT``, ``SERVED_BODY_TIMEOUT``; for Celery dispatch ``SERVED_BROKER_URL``
and ``SERVED_QUEUE`` (the example app's ``CELERY`` config; see ``served_celery.py`` for the
worker's side).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flask import Flask

from example_app import create_app as create_example_app
from flask_callbot import signals
from flask_callbot.testing import ALL_SIGNALS


def create_app() -> Flask:
    app = create_example_app(
        {
            "CALLBOT_DATABASE_URL": os.environ["SERVED_DATABASE_URL"],
            "CALLBOT_MAX_AGE": 24 * 3600,
            "CALLBOT_MAX_FUTURE_SKEW": 24 * 3600,
            "CALLBOT_PROCESSING_TIMEOUT": int(os.environ.get("SERVED_PROCESSING_TIMEOUT", "60")),
            "CALLBOT_DISPATCH": "celery" if os.environ.get("SERVED_BROKER_URL") else "inline",
            "CALLBOT_CELERY_QUEUE": os.environ.get("SERVED_QUEUE"),
            "CALLBOT_CELERY_RETRY_BACKOFF": 1,
            "CALLBOT_CELERY_MAX_RETRIES": int(os.environ.get("SERVED_MAX_RETRIES", "3")),
            "CALLBOT_BODY_TIMEOUT": float(os.environ.get("SERVED_BODY_TIMEOUT", "10")),
            "CELERY": celery_config(os.environ.get("SERVED_BROKER_URL")),
        }
    )
    markers = Path(os.environ["SERVED_MARKERS"])
    log_path = os.environ["SERVED_SIGNAL_LOG"]

    def inject_faults(event: Any) -> None:
        """On request, hang (until the test SIGKILLs the worker) or raise, once per delivery."""
        if event.raw.get("testHang") and _first_time(markers / f"hang-{event.request_id}"):
            time.sleep(300)
        if event.raw.get("testFailOnce") and _first_time(markers / f"fail-{event.request_id}"):
            raise RuntimeError("injected receiver failure")
        if event.raw.get("testFailAlways"):
            raise RuntimeError("injected permanent receiver failure")

    # blinker does not order a signal's receivers, so the faults are injected inside the
    # callback-received recorder, before it writes: a killed or failed attempt records nothing
    # for callback-received (and, killed, nothing at all: later signals are never sent).
    for signal in ALL_SIGNALS:
        before = inject_faults if signal is signals.callback_received else None
        signal.connect(_recorder(signal.name, log_path, before), app, weak=False)
    return app


def celery_config(broker_url: str | None) -> dict[str, Any] | None:
    """The example app's ``CELERY`` config on the test broker (``None``: inline dispatch); one
    queue per test run keeps runs apart."""
    if not broker_url:
        return None
    return {
        "broker_url": broker_url,
        "task_default_queue": os.environ.get("SERVED_QUEUE", "callbot-tests"),
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


def _first_time(marker: Path) -> bool:
    """True once per marker across all processes (O_EXCL creation is atomic)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _recorder(name: str, log_path: str, before: Any = None) -> Any:
    def record(sender: Flask, **kwargs: Any) -> None:
        event = kwargs.get("event")
        if before is not None:
            before(event)
        line = {
            "signal": name,
            "pid": os.getpid(),
            "request_id": getattr(event, "request_id", kwargs.get("request_id")),
            "request_ts": getattr(event, "request_ts", None),
            "task_id": getattr(event, "task_id", None),
            "order_id": getattr(event, "order_id", None),
            "status": int(event.status) if hasattr(event, "status") else None,
            "previous": None if kwargs.get("previous") is None else int(kwargs["previous"]),
            "reason": kwargs.get("reason"),
        }
        # One write on an O_APPEND file: lines from concurrent processes never interleave.
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)

    return record
