"""Commands under ``flask callbot``: inspect, replay and prune deliveries, list tasks; and, to
debug an integration without the vendor, send, simulate, verify, doctor and openapi."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from flask.cli import with_appcontext

from .diagnostics import PROBLEM, WARN, CaptureError, check_configuration, parse_capture
from .diagnostics import verify_capture as verify_request
from .dispatch import replay
from .errors import ConfigurationError, DeliveryInProgress, ReceiverFailed
from .events import CallbackKind, TaskStatus
from .openapi import build_openapi
from .routes import callback_url, split_callback_url
from .simulator import Result, Window, build_campaign, post_callback, run_campaign
from .state import current_flask_app, get_state
from .store import DeliveryState, Store, StoredDelivery, TaskState
from .testing import (
    SERIALIZATIONS,
    call_payload,
    order_payload,
    serialize,
    sign_headers,
    task_payload,
)

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


def register_commands(group: click.Group) -> None:
    """Attach the commands to the blueprint's ``callbot`` group."""
    commands = (events, show, replay_command, tasks, prune, init_db, sweep)
    tools = (send, simulate, verify, doctor, openapi_command)
    for command in (*commands, *tools):
        group.add_command(command)


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
    from .celery_dispatch import sweep as sweep_deliveries

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


# -- Debugging an integration without the vendor ------------------------------------------------

_Command = TypeVar("_Command", bound=Callable[..., Any])
_KINDS = click.Choice([k.value for k in CallbackKind])


def _sender_options(command: _Command) -> _Command:
    """The options ``send`` and ``simulate`` share: whose credentials, which wire format."""
    options = [
        click.option(
            "--secret-key",
            envvar="CALLBOT_TARGET_SECRET_KEY",
            help="Sign with this key [env CALLBOT_TARGET_SECRET_KEY; default: the app's first "
            "CALLBOT_SECRET_KEY]. Prefer the variable: a command line shows in process lists.",
        ),
        click.option(
            "--uuid",
            envvar="CALLBOT_TARGET_UUID",
            help="The account uuid to send [env CALLBOT_TARGET_UUID; default: CALLBOT_UUID].",
        ),
        click.option(
            "--serialization",
            type=click.Choice(SERIALIZATIONS),
            default="python",
            show_default=True,
            help="How bodies are written: python = json.dumps defaults (the vendor's Python "
            "sample); compact = no spaces, raw UTF-8 (the vendor's Go server).",
        ),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _credentials(secret_key: str | None, uuid: str | None) -> tuple[str, str]:
    settings = get_state().settings
    return secret_key or settings.secret_keys[0], uuid or settings.uuid


def _base_url(url: str) -> tuple[str, CallbackKind | None]:
    try:
        return split_callback_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None


def _moment_or_seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Unix seconds, or what :func:`parse_moment` reads (made a timestamp by :func:`_timestamp`,
    inside the app context, where the app's clock is)."""
    if value is None:
        return None
    return float(value) if value.strip().isdigit() else parse_moment(value)


def _timestamp(value: float | datetime | timedelta) -> float:
    if isinstance(value, float):
        return value
    return (_now() - value if isinstance(value, timedelta) else value).timestamp()


@click.command("send")
@with_appcontext
@click.argument("url")
@click.option("--kind", type=_KINDS, help="Which callback; implied by a full callback URL.")
@click.option(
    "--status",
    type=int,
    help="taskStatus of a task callback; callInfoDetail.callStatus of an order or call.",
)
@click.option(
    "--file",
    "payload_file",
    type=click.File("rb"),
    help="The payload (a JSON object) to send instead of the built-in example.",
)
@click.option("--raw", is_flag=True, help="Send --file's bytes exactly, not re-serialised.")
@click.option(
    "--algorithm",
    type=click.Choice(["MD5", "SHA256"], case_sensitive=False),
    default="MD5",
    show_default=True,
)
@click.option("--algorithm-header", is_flag=True, help="Also send the algorithm header.")
@click.option("--request-id", help="The requestID [default: a fresh random id].")
@click.option("--create-ts", type=int, help="The createTs [default: now, by the app's clock].")
@_sender_options
def send(
    url: str,
    kind: str | None,
    status: int | None,
    payload_file: Any,
    raw: bool,
    algorithm: str,
    algorithm_header: bool,
    request_id: str | None,
    create_ts: int | None,
    secret_key: str | None,
    uuid: str | None,
    serialization: str,
    timeout: float,
) -> None:
    """Sign and post one callback to URL exactly as the vendor does; print the reply.

    URL is the receiver's base URL with its blueprint prefix (http://host:5000/hooks), or the
    full URL of one callback (.../api/v3/taskCallback), which implies --kind. Exits 1 unless
    the reply is 200 with retCode 0.
    """
    base, url_kind = _base_url(url)
    if kind and url_kind and kind != url_kind:
        raise click.UsageError(f"the URL is the {url_kind.value} callback but --kind is {kind}")
    chosen = CallbackKind(kind) if kind else url_kind
    if chosen is None:
        raise click.UsageError("give --kind task|order|call (the URL is a base URL)")
    if raw and (payload_file is None or status is not None):
        raise click.UsageError("--raw sends a --file unchanged: give --file, and no --status")
    if raw:
        body = payload_file.read()
    else:
        payload = _send_payload(chosen, payload_file, status)
        body = serialize(payload, serialization)
    key, account = _credentials(secret_key, uuid)
    headers = sign_headers(
        body,
        secret_key=key,
        uuid=account,
        algorithm=algorithm,
        request_id=request_id,
        create_ts=int(get_state().clock()) if create_ts is None else create_ts,
        algorithm_header=algorithm_header,
    )
    target = callback_url(base, chosen)
    form = "as in the file" if raw else serialization
    click.echo(f"POST {target}")
    click.echo(
        f"  {chosen.value} callback, {len(body)} bytes ({form}), {algorithm.upper()}, "
        f"requestID {headers['requestID']}, createTs {headers['createTs']}"
    )
    try:
        reply = post_callback(target, body, headers, timeout=timeout)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"no answer from {target}: {reason}") from None
    code = "" if reply.ret_code is None else f" retCode {reply.ret_code}"
    click.echo(f"{reply.status}{code}: {reply.ret_msg}")
    if reply.status == 404:
        click.echo("  is the URL right? Give the base URL with the blueprint's prefix.", err=True)
    if (reply.status, reply.ret_code) != (200, 0):
        raise SystemExit(1)


def _send_payload(kind: CallbackKind, payload_file: Any, status: int | None) -> dict[str, Any]:
    if payload_file is None:
        factory = {
            CallbackKind.TASK: task_payload,
            CallbackKind.ORDER: order_payload,
            CallbackKind.CALL: call_payload,
        }[kind]
        payload = factory()
    else:
        try:
            payload = json.loads(payload_file.read())
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--file") from None
        if not isinstance(payload, dict):
            raise click.BadParameter("the payload must be a JSON object", param_hint="--file")
    if status is not None:
        if kind is CallbackKind.TASK:
            payload["taskStatus"] = status
        else:
            detail = payload.get("callInfoDetail")
            payload["callInfoDetail"] = {**(detail if isinstance(detail, dict) else {})}
            payload["callInfoDetail"]["callStatus"] = status
    return payload


@click.command("simulate")
@with_appcontext
@click.argument("url")
@click.option("--orders", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--duplicates",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of deliveries sent twice (same requestID, bytes and headers).",
)
@click.option(
    "--reorder", is_flag=True, help="Deliver some late, the PAUSED task update after RESUMED."
)
@click.option(
    "--skew",
    type=int,
    default=0,
    show_default=True,
    help="Seconds the sender's clock is off (positive: ahead).",
)
@click.option(
    "--skewed",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Fraction of deliveries sent by the skewed clock.",
)
@click.option(
    "--bad-signatures",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of deliveries shadowed by a forgery (wrong key, or body changed).",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--seed", type=int, help="Repeat a campaign's shape (its ids stay fresh).")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds between deliveries, to watch a dashboard fill.",
)
@_sender_options
def simulate(
    url: str,
    orders: int,
    duplicates: float,
    reorder: bool,
    skew: int,
    skewed: float,
    bad_signatures: float,
    concurrency: int,
    seed: int | None,
    delay: float,
    secret_key: str | None,
    uuid: str | None,
    serialization: str,
    timeout: float,
) -> None:
    """Drive a realistic campaign against the receiver at URL and sum up its answers.

    A task goes pending, in progress, paused, resumed and completed while its orders are
    called; the task statistics add up. URL is the base URL with the blueprint's prefix (a full
    callback URL works too). Expected: 200/0 for genuine and duplicate deliveries, 401/6 for
    forgeries and for a skew outside the app's window. Exits 1 on any unexpected answer.
    """
    base, _ = _base_url(url)
    state = get_state()
    settings = state.settings
    key, account = _credentials(secret_key, uuid)
    campaign = build_campaign(
        orders=orders,
        duplicates=duplicates,
        reorder=reorder,
        skew=skew,
        skewed=skewed,
        bad_signatures=bad_signatures,
        serialization=serialization,
        seed=seed,
        span=min(60, max(1, settings.max_age // 3)),
    )
    with click.progressbar(
        length=len(campaign.deliveries), label="simulating", file=sys.stderr, show_pos=True
    ) as bar:

        def advance(result: Result) -> None:
            bar.update(1)

        summary = run_campaign(
            campaign,
            base,
            secret_key=key,
            uuid=account,
            window=Window(settings.max_age, settings.max_future_skew),
            concurrency=concurrency,
            delay=delay,
            timeout=timeout,
            clock=state.clock,
            progress=advance,
        )
    for line in summary.report():
        click.echo(line)
    if not summary.ok:
        raise SystemExit(1)


@click.command("verify")
@with_appcontext
@click.argument("capture", type=click.File("rb"))
@click.option("--kind", type=_KINDS, help="Which callback, when the capture has no path.")
@click.option(
    "--now",
    callback=_moment_or_seconds,
    help="Judge the time window at this moment (the time it was received): unix seconds, an "
    "ISO time, or a duration ago (2h) [default: now, by the app's clock].",
)
def verify(capture: Any, kind: str | None, now: float | datetime | timedelta | None) -> None:
    """Explain step by step whether a captured request verifies, and why not.

    CAPTURE is a file (or - for stdin) holding a raw HTTP request (request line, headers, blank
    line, body) or JSON {"headers": {...}, "body": "..."} ("body_base64" for exact bytes).
    Secrets are shown masked. Exits 0 if the receiver would accept it, 1 otherwise.
    """
    state = get_state()
    try:
        request = parse_capture(capture.read())
    except CaptureError as exc:
        raise click.ClickException(f"cannot read the capture: {exc}") from None
    chosen = CallbackKind(kind) if kind else request.kind
    route = f", {request.path}" if request.path else ""
    what = f"{chosen.value} callback" if chosen else "callback of unknown kind"
    click.echo(f"request: {request.form}{route} ({what}), body {len(request.body)} bytes")
    for note in request.notes:
        click.echo(f"  note: {note}")
    moment = state.clock() if now is None else _timestamp(now)
    result = verify_request(request, state.settings, now=moment, kind=chosen)
    for step in result.steps:
        click.echo(step.line())
    click.echo(f"verdict: {result.verdict}")
    if not result.verified:
        raise SystemExit(1)


@click.command("doctor")
@with_appcontext
@click.option(
    "--reference",
    callback=_moment_or_seconds,
    help="A trusted current time to compare the system clock with (unix seconds or ISO), "
    "e.g. `date +%s` on a machine you trust.",
)
def doctor(reference: float | datetime | timedelta | None) -> None:
    """Check the configuration: secret, uuid, algorithms, store, clock. Exits 1 on a problem."""
    state = get_state()
    steps = check_configuration(
        state.settings,
        state.store,
        now=state.clock(),
        system_now=time.time(),
        reference=None if reference is None else _timestamp(reference),
    )
    for step in steps:
        click.echo(step.line())
    problems = sum(step.status == PROBLEM for step in steps)
    warnings = sum(step.status == WARN for step in steps)
    click.echo(f"{problems} problem(s), {warnings} warning(s)")
    if problems:
        raise SystemExit(1)


@click.command("openapi")
@with_appcontext
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the document to this file instead of printing it.",
)
@click.option("--prefix", help="The routes' path prefix [default: where this app mounts them].")
def openapi_command(output: Path | None, prefix: str | None) -> None:
    """Print the OpenAPI 3.1 document of the three callback endpoints (JSON)."""
    try:
        document = build_openapi(current_flask_app(), prefix=prefix)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


def _echo_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    table = [list(headers), *map(list, rows)]
    if len(table) == 1:
        click.echo("(none)")
        return
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


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
