"""Commands under ``flask callbot``: inspect, replay and prune deliveries, list tasks; and, to
debug an integration without the vendor, send, simulate, verify, doctor and openapi (defined in
:mod:`flask_callbot.cli_tools`, imported only when one of them is used)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from .config import CELERY_EXTRA_HINT
from .dispatch import replay
from .errors import ConfigurationError, DeliveryInProgress, ReceiverFailed
from .events import CallbackKind, TaskStatus
from .state import current_flask_app, get_state
from .store import (
    HEAD_REVISION,
    SCHEMA_VERSION,
    DeliveryState,
    Store,
    StoredDelivery,
    TaskState,
    is_abandoned,
)
from .tables import render_table

if TYPE_CHECKING:
    from .client import CallbotAPI
    from .reconcile import Report

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
    for command in (events, show, replay_command, tasks, prune, init_db, sweep, reconcile_command):
        group.add_command(command)
    group.add_command(db_group)
    return group


def _store() -> Store:
    return get_state().store


def _now() -> datetime:
    """Now by the app's clock (the one its deliveries were stamped with)."""
    return datetime.fromtimestamp(get_state().clock(), UTC)


def _moment(value: datetime | timedelta | None) -> datetime | None:
    return _now() - value if isinstance(value, timedelta) else value


#: Not a stored state: a pending delivery held past CALLBOT_PROCESSING_TIMEOUT (its worker
#: died, or could not write its outcome). ``events`` shows and filters it; ``replay --failed``
#: takes it up.
ABANDONED = "abandoned"


@click.command("events")
@with_appcontext
@click.option(
    "--outcome",
    type=click.Choice([*(o.value for o in DeliveryState), ABANDONED]),
    help="Only this outcome (abandoned: pending past CALLBOT_PROCESSING_TIMEOUT).",
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
    abandoned = outcome == ABANDONED
    rows = _store().list_deliveries(
        outcome=DeliveryState.PENDING if abandoned else DeliveryState(outcome) if outcome else None,
        task_id=task_id,
        kind=CallbackKind(kind) if kind else None,
        since=_moment(since),
        until=_moment(until),
        limit=limit,
        claimed_before=_now() - timedelta(seconds=_lease()) if abandoned else None,
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
                _outcome(d),
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
        ("outcome", _outcome(delivery)),
        ("attempts", str(delivery.attempts)),
        ("claimed", _time(delivery.claimed_at) if delivery.claimed_at else "-"),
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
@click.option(
    "--failed", is_flag=True, help="Replay every failed or abandoned delivery, oldest first."
)
def replay_command(request_ids: Sequence[str], failed: bool) -> None:
    """Run stored deliveries through the receivers again, reporting each.

    Receivers get the same event and transition as the first time; the delivery ends processed
    or failed. --failed takes the failed deliveries and the abandoned ones (pending past
    CALLBOT_PROCESSING_TIMEOUT: the worker died, or could not write the outcome). Exits 1 if
    any replay failed.
    """
    app = current_flask_app()
    if failed == bool(request_ids):
        raise click.UsageError("give REQUEST_ID(s) or --failed (not both)")
    targets = list(request_ids) or _store().failed_request_ids(
        now=get_state().clock(), lease=_lease()
    )
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
    kept = _unfinished(store)
    if kept:
        click.echo(f"kept {kept}: replay them (flask callbot replay --failed)")


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create the tables, or upgrade them to this version's schema; print the version."""
    store = _store()
    store.create_schema()
    click.echo(f"callbot schema version {store.get_schema_version()}")


@click.group("db")
def db_group() -> None:
    """The callbot tables' Alembic branch: upgrade, current revision, history."""


@db_group.command("upgrade")
@with_appcontext
@click.option("--sql", is_flag=True, help="Print the SQL (offline, for a DBA); change nothing.")
@click.argument("revision", default="callbot@head")
def db_upgrade(sql: bool, revision: str) -> None:
    """Create or upgrade the tables (even with CALLBOT_MANAGE_SCHEMA off).

    With --sql, REVISION may be a range FROM:TO (callbot_0003:callbot@head) for tables already
    at FROM; without one, the SQL creates them on an empty database.
    """
    store = _store()
    if sql:
        from .store.migrate import upgrade_sql

        upgrade_sql(store.engine.dialect.name, sys.stdout, revision)
        return
    if revision != "callbot@head":
        raise click.UsageError("online, the tables are upgraded to callbot@head only")
    store.create_schema()
    click.echo(f"callbot schema version {store.get_schema_version()} ({HEAD_REVISION})")


@db_group.command("current")
@with_appcontext
def db_current() -> None:
    """The schema version and revision the tables are at (reads only)."""
    store = _store()
    version = store.peek_schema_version()
    problem = store.schema_problem()
    if version is None:
        click.echo("no callbot tables yet")
    elif version == SCHEMA_VERSION and problem is None:
        revision = store.peek_schema_revision()
        made = f"({revision}, head)" if revision else "(made before Alembic: db upgrade records it)"
        click.echo(f"callbot schema version {version} {made}")
    else:
        click.echo(f"callbot schema version {version}")
    if problem:
        click.echo(problem)


@db_group.command("history")
def db_history() -> None:
    """The callbot revisions, newest first."""
    from .store.migrate import history

    for info in history():
        head = " (head)" if info.is_head else ""
        click.echo(f"{info.down_revision or '<base>'} -> {info.revision}{head}, {info.message}")


@click.command("sweep")
@with_appcontext
@click.option(
    "--older-than",
    "older_than",
    callback=_duration_option,
    default="60s",
    show_default=True,
    help="Enqueue deliveries recorded this long ago but never enqueued, or enqueued this long "
    "ago and held by no live worker while the queue is empty (their worker died).",
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
    a worker that died (running: past CALLBOT_PROCESSING_TIMEOUT; reserved: asked of the live
    workers), or queued and never taken. Safe to run at any time and periodically (every
    minute): a delivery enqueued twice is still processed once.
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


@click.command("reconcile")
@with_appcontext
@click.argument("user_task_ids", nargs=-1)
@click.option(
    "--since",
    callback=_moment_option,
    help="Only tasks the store heard of at or after: ISO time, or 7d (ago). Default: all.",
)
@click.option("--orders", is_flag=True, help="Also the tasks' orders and calls.")
@click.option("--dry-run", is_flag=True, help="Find the differences, record nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reconcile_command(
    user_task_ids: Sequence[str],
    since: datetime | timedelta | None,
    orders: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Recover what lost callbacks left out, through the vendor's API.

    Asks the vendor about the tasks named by USER_TASK_IDS, or every task the store knows whose
    last applied status is not final, and records each difference as a delivery of its own:
    the same signals a callback would have sent, once. Safe to run at any time and on a
    schedule. Needs flask-callbot[api]; talks to CALLBOT_API_BASE_URL.
    """
    try:
        from .reconcile import api_client, reconcile
    except ImportError as exc:
        raise click.ClickException(f"reconcile needs {exc.name}: {API_EXTRA_HINT}") from None
    app = current_flask_app()
    targets = list(user_task_ids) or None
    with api_client(app) as api:
        if as_json or (targets is not None and len(targets) < 2):
            report = reconcile(
                app,
                api,
                user_task_ids=targets,
                since=_moment(since),
                orders=orders,
                dry_run=dry_run,
            )
        else:
            report = _reconcile_with_progress(app, api, targets, _moment(since), orders, dry_run)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        echo_report(report, dry_run=dry_run)
    if report.errors:
        sys.exit(1)


#: What to install for the commands that talk to the vendor's API.
API_EXTRA_HINT = "pip install 'flask-callbot[api]'"


def _reconcile_with_progress(
    app: Flask,
    api: CallbotAPI,
    targets: list[str] | None,
    since: datetime | None,
    orders: bool,
    dry_run: bool,
) -> Report:
    """Reconcile with a progress bar on stderr (shown only on a terminal)."""
    from .reconcile import reconcile

    count = len(targets) if targets is not None else len(_store().unfinished_tasks(since=since))
    with click.progressbar(length=count, label="reconciling", file=sys.stderr) as bar:
        return reconcile(
            app,
            api,
            user_task_ids=targets,
            since=since,
            orders=orders,
            dry_run=dry_run,
            progress=lambda _: bar.update(1),
        )


def echo_report(report: Report, *, dry_run: bool) -> None:
    """The reconcile report (``reconcile``, ``simulate --reconcile``): a table of
    differences, the errors, a closing count."""
    _echo_table(
        ("KIND", "USER TASK", "ORDER", "CALL", "CHANGE", "RESULT"),
        (
            (
                f.planned.kind.value,
                f.planned.user_task_id,
                f.planned.order_id or "",
                f.planned.call_id or "",
                f.planned.change,
                f.result,
            )
            for f in report.findings
        ),
    )
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    verb = "found" if dry_run else "recorded"
    click.echo(
        f"checked {report.tasks_checked} task(s), {report.orders_checked} order(s), "
        f"{report.calls_checked} call(s): {len(report.findings)} difference(s) {verb}, "
        f"{len(report.errors)} error(s)"
    )


def _lease() -> int:
    return get_state().settings.processing_timeout


def _outcome(delivery: StoredDelivery) -> str:
    """The stored outcome, or ``abandoned`` for one held past the processing timeout."""
    if is_abandoned(delivery, _now(), _lease()):
        return ABANDONED
    return delivery.outcome.value


def _unfinished(store: Store) -> str:
    """``N failed and M abandoned deliveries`` (the parts that are not zero), or nothing."""
    failed = store.count_failed()
    abandoned = store.count_abandoned(now=get_state().clock(), lease=_lease())
    parts = [f"{failed} failed"] * bool(failed) + [f"{abandoned} abandoned"] * bool(abandoned)
    return f"{' and '.join(parts)} deliveries" if parts else ""


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
