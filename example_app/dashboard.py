"""A live campaign dashboard: what the callbacks say, built on flask_callbot's public API only.

It is the reference integration, so it shows the two ways a host app learns what happened:

- **the store** (``get_store(app)``): durable, survives restarts, shared by every worker. The
  task table with each task's recorded order and call callbacks (``count_deliveries``), each
  task's status timeline (its recorded task deliveries' transitions) and the latest orders
  (``list_orders``) come from there;
- **the signals**: what this process saw since it started, kept in a small bounded,
  lock-protected feed in ``app.extensions["example_dashboard"]``: the latest call attempts with
  their intents, how many callbacks it received and refused, and the latest status change
  (announced to screen readers).

``create_dashboard()`` returns a new blueprint each call; registering it sets up the feed and
connects the receivers for that app only (several apps in one process keep separate feeds).
The page is server-rendered; a small script re-fetches the ``live`` fragment and swaps it in.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, render_template
from flask.blueprints import BlueprintSetupState

from flask_callbot import (
    CallbackKind,
    CallEvent,
    Event,
    Intent,
    StoreReader,
    TaskEvent,
    TaskState,
    TaskStatus,
    get_store,
    signals,
)

EXTENSION_KEY = "example_dashboard"

#: Text for each status: a badge never relies on colour alone.
STATUS_LABELS = {
    TaskStatus.PENDING: "Pending",
    TaskStatus.IN_PROGRESS: "In progress",
    TaskStatus.COMPLETED: "Completed",
    TaskStatus.FAILED: "Failed",
    TaskStatus.PAUSED: "Paused",
}

#: No inline script or style, nothing from another origin: the page ships everything it needs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRow:
    """One call attempt as the ``call_received`` signal told it (the phone number masked)."""

    received_at: datetime
    task_id: str
    user_task_id: str | None
    order_id: str
    user_name: str | None
    phone: str
    answered: bool
    hangup_cause: str | None
    duration: int | None
    intents: tuple[Intent, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A status change as ``task_status_changed`` told it."""

    at: datetime
    task_id: str
    user_task_id: str | None
    previous: TaskStatus | int | None
    status: TaskStatus | int


@dataclass(slots=True)
class Feed:
    """What the signals said since the process started: bounded, safe across request threads."""

    calls: deque[CallRow]
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    latest_change: Change | None = None

    def add_call(self, row: CallRow) -> None:
        with self.lock:
            self.calls.appendleft(row)

    def count(self) -> None:
        with self.lock:
            self.received += 1

    def refuse(self, reason: str) -> None:
        with self.lock:
            self.refused[reason] += 1

    def change(self, change: Change) -> None:
        with self.lock:
            self.latest_change = change

    def snapshot(self) -> tuple[list[CallRow], int, int, Change | None]:
        """A consistent copy to render from, taken under the lock."""
        with self.lock:
            return list(self.calls), self.received, self.refused.total(), self.latest_change


def create_dashboard(*, latest: int = 12, tasks: int = 10, refresh_ms: int = 1500) -> Blueprint:
    """A new dashboard blueprint: ``latest`` orders and calls, ``tasks`` most recently updated
    tasks, re-fetched every ``refresh_ms`` milliseconds by the page's script."""
    blueprint = Blueprint(
        "dashboard",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    @blueprint.record_once
    def set_up(state: BlueprintSetupState) -> None:
        _connect(cast(Flask, state.app), Feed(calls=deque(maxlen=latest)))

    blueprint.add_app_template_filter(status_label, "status_label")
    blueprint.add_app_template_filter(status_class, "status_class")
    blueprint.add_app_template_filter(intent_text, "intent_text")
    blueprint.add_app_template_filter(clock, "clock")

    @blueprint.get("/")
    def index() -> Response:
        context = _context(latest=latest, tasks=tasks)
        html = render_template("dashboard/page.html", refresh_ms=refresh_ms, **context)
        return _no_store(Response(html, mimetype="text/html"))

    @blueprint.get("/live")
    def live() -> Response:
        """The refreshed part of the page, as the script swaps it in."""
        html = render_template("dashboard/_live.html", **_context(latest=latest, tasks=tasks))
        return _no_store(Response(html, mimetype="text/html"))

    @blueprint.after_request
    def secure(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return blueprint


def get_feed(app: Flask) -> Feed:
    """The app's feed; a clear error when the dashboard was never registered on it."""
    feed = app.extensions.get(EXTENSION_KEY)
    if not isinstance(feed, Feed):
        raise RuntimeError("the dashboard is not set up on this app: register create_dashboard()")
    return feed


def _connect(app: Flask, feed: Feed) -> None:
    """Connect this app's receivers (strongly: they are closures, blinker would drop them)."""
    app.extensions[EXTENSION_KEY] = feed

    def on_call(sender: Flask, *, event: CallEvent, **extra: Any) -> None:
        call = event.call
        feed.add_call(
            CallRow(
                received_at=datetime.now(UTC),
                task_id=event.task_id,
                user_task_id=event.user_task_id,
                order_id=event.order_id,
                user_name=event.user_name,
                phone=masked(event.user_phone),
                answered=call.answered_at is not None,
                hangup_cause=call.hangup_cause,
                duration=call.call_duration,
                intents=call.intents,
            )
        )

    def on_received(sender: Flask, *, event: Event, **extra: Any) -> None:
        feed.count()

    def on_rejected(sender: Flask, *, reason: str, **extra: Any) -> None:
        feed.refuse(reason)

    def on_changed(
        sender: Flask, *, event: TaskEvent, previous: TaskStatus | int | None, **extra: Any
    ) -> None:
        feed.change(
            Change(
                at=datetime.now(UTC),
                task_id=event.task_id,
                user_task_id=event.user_task_id,
                previous=previous,
                status=event.status,
            )
        )

    signals.call_received.connect(on_call, app, weak=False)
    signals.callback_received.connect(on_received, app, weak=False)
    signals.callback_rejected.connect(on_rejected, app, weak=False)
    signals.task_status_changed.connect(on_changed, app, weak=False)


def _context(*, latest: int, tasks: int) -> dict[str, Any]:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    store = get_store(app)
    calls, received, refused, change = get_feed(app).snapshot()
    task_rows = [_task_row(store, task) for task in store.list_tasks(limit=tasks)]
    return {
        "tasks": task_rows,
        "orders": store.list_orders(kind=CallbackKind.ORDER, limit=latest),
        "calls": calls,
        "received": received,
        "refused": refused,
        "change": change,
        "now": datetime.now(UTC),
    }


def _task_row(store: StoreReader, task: TaskState) -> dict[str, Any]:
    stats = task.stats
    history = store.list_deliveries(task_id=task.task_id, kind=CallbackKind.TASK, limit=200)
    timeline = [
        {"at": d.received_at, "previous": d.transition.previous, "status": d.transition.status}
        for d in reversed(history)  # newest first from the store; a timeline reads oldest first
        if d.transition is not None and d.transition.applied and d.transition.changed
    ]
    recorded = store.count_deliveries(task.task_id)  # by every process, not only this one
    finish = percent(stats.get("finish_rate"))
    return {
        "task": task,
        "finish": finish,
        "answer": percent(stats.get("answer_rate")),
        "stats": stats,
        "orders_recorded": recorded[CallbackKind.ORDER],
        "calls_recorded": recorded[CallbackKind.CALL],
        # The vendor completes a task when its orders are done or when it is ended early (from
        # the console or the API); the finish rate counts the orders actually finished.
        "ended_early": task.status == TaskStatus.COMPLETED and finish is not None and finish < 100,
        "timeline": timeline,
    }


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def percent(rate: Any) -> int | None:
    """A vendor rate (0..1) as a whole percentage for a progress bar, ``None`` when unreported."""
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        return None
    return max(0, min(100, round(rate * 100)))


def status_label(status: TaskStatus | int | None) -> str:
    if status is None:
        return "New"
    if isinstance(status, TaskStatus):
        return STATUS_LABELS[status]
    return f"Status {status}"


def status_class(status: TaskStatus | int | None) -> str:
    """A CSS modifier for the badge colour (the text says the same)."""
    return status.name.lower().replace("_", "-") if isinstance(status, TaskStatus) else "unknown"


def masked(phone: str | None) -> str:
    """Only the last four digits reach the page."""
    return "" if not phone else "•" * min(max(len(phone) - 4, 0), 4) + phone[-4:]


def intent_text(intents: Iterable[Intent]) -> list[str]:
    """``有意向 (interested)``: the script's name and its tag, whichever is known."""
    texts = []
    for intent in intents:
        name, tag = intent.intent_name, intent.intent_tag
        if name and tag and name != tag:
            texts.append(f"{name} ({tag})")
        elif name or tag:
            texts.append(str(name or tag))
    return texts


def clock(at: datetime) -> str:
    """``2026-11-24 14:03:07``: the date and time in UTC (the page says so)."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
