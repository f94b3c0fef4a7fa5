"""Commands under ``flask callbot``: inspect, replay and prune deliveries, list tasks; and, to
debug an integration without the vendor, send, simulate, verify, doctor and openapi (defined in
:mod:`flask_callbot.cli_tools`, imported only when one of them is used)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from flask.cli import AppGroup, with_appcontext

from .config import CELERY_EXTRA_HINT
from .dispatch import replay
from .errors import ConfigurationError, DeliveryInProgress, ReceiverFailed
from .events import CallbackKind, TaskStatus
from .state import current_flask_app, get_state
from .store import DeliveryState, Store, StoredDelivery, TaskState
from .tables import render_table

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``30d``, ``1w`` as a timedelta."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 2h, 30d or 1w")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_moment(text: str) -> datetime | timedelta:
    """An ISO 8601 date/time (UTC unless it says otherwise), or a duration meaning that long ago."""
    if _DURATION.fullmatch(text.strip()):
        return parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO date/time nor a duration like 2h"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return None if value is None else parse_duration(value)


def _moment_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return None if value is None else parse_moment(value)


#: The debugging commands, found in :data:`flask_callbot.cli_tools.COMMANDS`.
TOOLS = ("send", "simulate", "verify", "doctor", "openapi")


class CallbotGroup(AppGroup):
    """The ``callbot`` group: the operations commands, and the debugging tools, whose module
    (and what it imports: simulator, diagnostics, OpenAPI, testing helpers) is imported only
    when one of them is run or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *TOOLS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in TOOLS:
            from .cli_tools import COMMANDS

            return COMMANDS[cmd_name]
        return super().get_command(ctx, cmd_name)


def create_group() -> CallbotGroup:
    """The blueprint's command group (named ``callbot`` when the blueprint is registered)."""
    group = CallbotGroup()
    for command in (events, show, replay_command, tasks, prune, init_db, sweep):
        group.add_command(command)
    return group


def _store() -> Store:
    return get_state().store


def _now() -> datetime:
    """Now by the app's clock (the one its deliveries were stamped with)."""
    return datetime.fromtimestamp(get_state().clock(), UTC)


def _moment(value: datetime | timedelta | None) -> datetime | None:
    return _now() - value if isinstance(value, timedelta) else value


@click.command("events")
@with_appcontext
@click.option(
    "--outcome", type=click.Choice([o.value for o in DeliveryState]), help="Only this outcome."
)
@click.option("--task", "task_id", help="Only deliveries of this taskID.")
@click.option("--kind", type=click.Choice([k.value for k in CallbackKind]), help="Only this kind.")
@click.option(
    "--since", callback=_moment_option, help="Received at or after: ISO time, or 2h (ago)."
)
@click.option("--until", callback=_moment_option, help="Received before: ISO time, or 30m (ago).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def events(
    outcome: str | None,
    task_id: str | None,
    kind: str | None,
    since: datetime | timedelta | None,
    until: datetime | timedelta | None,
    limit: int,
) -> None:
    """List recorded deliveries, newest first."""
    rows = _store().list_deliveries(
        outcome=DeliveryState(outcome) if outcome else None,
        task_id=task_id,
        kind=CallbackKind(kind) if kind else None,
        since=_moment(since),
        until=_moment(until),
        limit=limit,
    )
    _echo_table(
        ("RECEIVED", "REQUEST ID", "KIND", "TASK", "ORDER", "OUTCOME", "TRIES", "CHANGE", "ERROR"),
        (
            (
                _time(d.received_at),
                d.request_id,
                d.kind.value,
                d.task_id or "",
                d.order_id or "",
                d.outcome.value,
                str(d.attempts),
                _change(d),
                _clip(d.error or "", 60),
            )
            for d in rows
        ),
    )


@click.command("show")
@with_appcontext
@click.argument("request_id")
def show(request_id: str) -> None:
    """Show one delivery: headers, body, outcome and error."""
    delivery = _store().get_delivery(request_id)
    if delivery is None:
        raise click.ClickException(f"no delivery with requestID {request_id}")
    fields = [
        ("requestID", delivery.request_id),
        ("kind", delivery.kind.value),
        ("task", delivery.task_id or "-"),
        ("order", delivery.order_id or "-"),
        ("request time", f"{delivery.request_ts} ({_time(_from_ts(delivery.request_ts))})"),
        ("received", _time(delivery.received_at)),
        ("outcome", delivery.outcome.value),
        ("attempts", str(delivery.attempts)),
        ("enqueued", _time(delivery.enqueued_at) if delivery.enqueued_at else "-"),
        ("finished", _time(delivery.finished_at) if delivery.finished_at else "-"),
        ("change", _change(delivery) or "-"),
        ("error", delivery.error or "-"),
    ]
    for name, value in fields:
        click.echo(f"{name + ':':<14}{value}")
    click.echo("headers:")
    for name, value in delivery.headers.items():
        click.echo(f"  {name}: {value}")
    click.echo("body:")
    try:
        click.echo(json.dumps(json.loads(delivery.body), ensure_ascii=False, indent=2))
    except ValueError:
        click.echo(delivery.body.decode("utf-8", "replace"))


@click.command("replay")
@with_appcontext
@click.argument("request_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Replay every failed delivery, oldest first.")
def replay_command(request_ids: Sequence[str], failed: bool) -> None:
    """Run stored deliveries through the receivers again, reporting each.

    Receivers get the same event and transition as the first time; the delivery ends processed
    or failed. Exits 1 if any replay failed.
    """
    app = current_flask_app()
    if failed == bool(request_ids):
        raise click.UsageError("give REQUEST_ID(s) or --failed (not both)")
    targets = list(request_ids) or _store().failed_request_ids()
    if not targets:
        click.echo("nothing to replay")
        return
    problems = 0
    with click.progressbar(targets, label="replaying", file=sys.stderr, show_pos=True) as bar:
        reports = []
        for request_id in bar:
            try:
                replay(app, request_id)
                reports.append(f"{request_id}: processed")
            except (LookupError, DeliveryInProgress, ReceiverFailed) as exc:
                problems += 1
                label = "failed" if isinstance(exc, ReceiverFailed) else "skipped"
                reports.append(f"{request_id}: {label}: {exc}")
    for line in reports:
        click.echo(line)
    click.echo(f"{len(targets) - problems} processed, {problems} not")
    if problems:
        raise SystemExit(1)


@click.command("tasks")
@with_appcontext
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
def tasks(limit: int | None) -> None:
    """List the tracked tasks with their status, progress and last update."""
    _echo_table(
        ("TASK", "USER TASK", "STATUS", "FINISHED", "ANSWERED", "UPDATED"),
        (
            (
                t.task_id,
                t.user_task_id or "",
                _status(t.status),
                _ratio(t, "finish_order_count", "total_order_count", "finish_rate"),
                _ratio(t, "total_answer_call", "total_call", "answer_rate"),
                _time(t.updated_at) if t.updated_at else "",
            )
            for t in _store().list_tasks(limit=limit)
        ),
    )


@click.command("prune")
@with_appcontext
@click.option(
    "--older-than", "older_than", callback=_duration_option, required=True, help="e.g. 30d"
)
@click.option("--include-failed", is_flag=True, help="Delete failed deliveries too.")
def prune(older_than: timedelta, include_failed: bool) -> None:
    """Delete deliveries received longer ago than --older-than.

    Failed deliveries are kept unless --include-failed (they are what replay --failed works on);
    deliveries in progress are always kept. Task and order records are not touched.
    """
    store = _store()
    before = _now() - older_than
    total = store.count_prunable(before=before, include_failed=include_failed)
    deleted = 0
    with click.progressbar(length=total, label="pruning", file=sys.stderr, show_pos=True) as bar:
        for count in store.prune(before=before, include_failed=include_failed):
            deleted += count
            bar.update(count)
    click.echo(f"deleted {deleted} deliveries received before {_time(before)}")


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create the tables, or upgrade them to this version's schema; print the version."""
    store = _store()
    store.create_schema()
    click.echo(f"callbot schema version {store.get_schema_version()}")


@click.command("sweep")
@with_appcontext
@click.option(
    "--older-than",
    "older_than",
    callback=_duration_option,
    default="60s",
    show_default=True,
    help="Enqueue deliveries recorded this long ago but never enqueued.",
)
@click.option(
    "--stalled-after",
    "stalled_after",
    callback=_duration_option,
    default="1h",
    show_default=True,
    help="Enqueue again deliveries queued this long ago that no worker took.",
)
def sweep(older_than: timedelta, stalled_after: timedelta) -> None:
    """Celery dispatch: enqueue what no worker will otherwise pick up.

    Deliveries recorded but never enqueued (a crash or broker outage between the two), held by
    a worker that died (past CALLBOT_PROCESSING_TIMEOUT), or queued and never taken. Safe to run
    at any time and periodically: a delivery enqueued twice is still processed once.
    """
    try:
        from .celery_dispatch import sweep as sweep_deliveries
    except ImportError:
        raise click.ClickException(f"sweep is for Celery dispatch: {CELERY_EXTRA_HINT}") from None
    app = current_flask_app()
    try:
        found = sweep_deliveries(
            app,
            unqueued_after=int(older_than.total_seconds()),
            stalled_after=int(stalled_after.total_seconds()),
        )
    except ConfigurationError as exc:
        raise click.ClickException(exc.message) from None
    for request_id in found:
        click.echo(f"{request_id}: enqueued")
    click.echo(f"{len(found)} enqueued")


def _echo_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    lines = render_table(headers, rows)
    for line in lines if len(lines) > 1 else ["(none)"]:
        click.echo(line)


def _change(delivery: StoredDelivery) -> str:
    transition = delivery.transition
    if transition is None:
        return ""
    if not transition.applied:
        return "stale"
    if not transition.changed:
        return _status(transition.status)
    return f"{_status(transition.previous)}->{_status(transition.status)}"


def _status(status: TaskStatus | int | None) -> str:
    if status is None:
        return "new"
    return status.name if isinstance(status, TaskStatus) else str(status)


def _ratio(task: TaskState, done: str, total: str, rate: str) -> str:
    stats = task.stats
    if stats[total] is None:
        return ""
    percent = "" if stats[rate] is None else f" {float(stats[rate] or 0):.0%}"
    return f"{stats[done]}/{stats[total]}{percent}"


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _from_ts(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
