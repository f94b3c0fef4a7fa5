"""The debugging commands under ``flask callbot``: send, simulate, verify, doctor and openapi.

They need the simulator, the diagnostics, the OpenAPI generator and the testing helpers, which a
receiver never does, so :class:`flask_callbot.cli.CallbotGroup` imports this module only when
one of them is run (or listed by ``flask callbot --help``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from flask.cli import with_appcontext

from .cli import _now, parse_moment
from .diagnostics import (
    CaptureError,
    StepStatus,
    check_configuration,
    check_dispatch,
    parse_capture,
)
from .diagnostics import verify_capture as verify_request
from .events import CallbackKind
from .openapi import build_openapi
from .routes import callback_url, split_callback_url
from .simulator import Campaign, Result, Summary, Window, build_campaign, run_campaign
from .state import current_flask_app, get_state
from .testing import call_payload, order_payload, task_payload
from .wire import SERIALIZATIONS, HttpReply, post_callback, serialize, sign_headers

if TYPE_CHECKING:
    from .vendor_api import Faults

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
    base, chosen = _send_target(url, kind)
    body = _send_body(chosen, payload_file, raw=raw, status=status, serialization=serialization)
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
    _echo_sending(target, chosen, body, form, algorithm, headers)
    reply = _post_or_fail(target, body, headers, timeout=timeout)
    _echo_reply(reply)
    if (reply.status, reply.ret_code) != (200, 0):
        raise SystemExit(1)


def _send_target(url: str, kind: str | None) -> tuple[str, CallbackKind]:
    """The base URL and the callback to send: --kind, or the one the URL names (not both)."""
    base, url_kind = _base_url(url)
    if kind and url_kind and kind != url_kind:
        raise click.UsageError(f"the URL is the {url_kind.value} callback but --kind is {kind}")
    chosen = CallbackKind(kind) if kind else url_kind
    if chosen is None:
        raise click.UsageError("give --kind task|order|call (the URL is a base URL)")
    return base, chosen


def _send_body(
    kind: CallbackKind, payload_file: Any, *, raw: bool, status: int | None, serialization: str
) -> bytes:
    """The bytes to send: --file's exactly (--raw), or a payload serialised as asked."""
    if raw and (payload_file is None or status is not None):
        raise click.UsageError("--raw sends a --file unchanged: give --file, and no --status")
    if raw:
        return bytes(payload_file.read())
    return serialize(_send_payload(kind, payload_file, status), serialization)


def _send_payload(kind: CallbackKind, payload_file: Any, status: int | None) -> dict[str, Any]:
    """The built-in example of ``kind`` or --file's JSON object, with --status applied."""
    payload = _example_payload(kind) if payload_file is None else _file_payload(payload_file)
    if status is not None:
        if kind is CallbackKind.TASK:
            payload["taskStatus"] = status
        else:
            detail = payload.get("callInfoDetail")
            payload["callInfoDetail"] = {**(detail if isinstance(detail, dict) else {})}
            payload["callInfoDetail"]["callStatus"] = status
    return payload


def _example_payload(kind: CallbackKind) -> dict[str, Any]:
    factory = {
        CallbackKind.TASK: task_payload,
        CallbackKind.ORDER: order_payload,
        CallbackKind.CALL: call_payload,
    }[kind]
    return factory()


def _file_payload(payload_file: Any) -> dict[str, Any]:
    try:
        payload = json.loads(payload_file.read())
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--file") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("the payload must be a JSON object", param_hint="--file")
    return payload


def _post_or_fail(
    target: str, body: bytes, headers: dict[str, str], *, timeout: float
) -> HttpReply:
    try:
        return post_callback(target, body, headers, timeout=timeout)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"no answer from {target}: {reason}") from None


def _echo_sending(
    target: str,
    kind: CallbackKind,
    body: bytes,
    form: str,
    algorithm: str,
    headers: dict[str, str],
) -> None:
    click.echo(f"POST {target}")
    click.echo(
        f"  {kind.value} callback, {len(body)} bytes ({form}), {algorithm.upper()}, "
        f"requestID {headers['requestID']}, createTs {headers['createTs']}"
    )


def _echo_reply(reply: HttpReply) -> None:
    code = "" if reply.ret_code is None else f" retCode {reply.ret_code}"
    click.echo(f"{reply.status}{code}: {reply.ret_msg}")
    if reply.status == 404:
        click.echo("  is the URL right? Give the base URL with the blueprint's prefix.", err=True)


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
@click.option(
    "--drop",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of genuine deliveries lost on the way (never sent, as a callback the "
    "vendor sent while the receiver was down).",
)
@click.option(
    "--reconcile",
    "repair",
    is_flag=True,
    help="Afterwards, serve a fake of the vendor's API on loopback from the campaign and "
    "reconcile this app's store against it (--orders); exits 1 unless the store then matches "
    "the vendor. The receiver at URL must use this app's store.",
)
@click.option(
    "--api-faults",
    callback=lambda ctx, param, value: _faults(value),
    help="Faults of the fake vendor API during --reconcile, e.g. busy=2,http=1,slow=1,forged=1 "
    "(how many calls answer retCode 7, HTTP 503, 2 s late, wrongly signed).",
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
    drop: float,
    repair: bool,
    api_faults: Faults,
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
    With --drop and --reconcile, watch reconciliation repair what the lost callbacks left out.
    """
    base, _ = _base_url(url)
    state = get_state()
    key, account = _credentials(secret_key, uuid)
    campaign = build_campaign(
        orders=orders,
        duplicates=duplicates,
        reorder=reorder,
        skew=skew,
        skewed=skewed,
        bad_signatures=bad_signatures,
        serialization=serialization,
        drop=drop,
        seed=seed,
        span=min(60, max(1, state.settings.max_age // 3)),
    )
    summary = _run_with_progress_bar(
        campaign,
        base,
        secret_key=key,
        uuid=account,
        concurrency=concurrency,
        delay=delay,
        timeout=timeout,
    )
    for line in summary.report():
        click.echo(line)
    repaired = _reconcile_campaign(campaign, api_faults) if repair else True
    if not summary.ok or not repaired:
        raise SystemExit(1)


def _faults(spec: str | None) -> Faults:
    """``busy=2,http=1,slow=1,forged=1`` as the fake vendor's :class:`Faults`."""
    from .vendor_api import Faults

    names = {"busy": "busy", "http": "http_errors", "slow": "slow", "forged": "forged"}
    faults = Faults(delay=2.0)
    for part in filter(None, (spec or "").split(",")):
        name, _, count = part.partition("=")
        if name.strip() not in names or not count.strip().isdigit():
            raise click.BadParameter(f"{part!r}: use busy=N, http=N, slow=N or forged=N")
        setattr(faults, names[name.strip()], int(count))
    return faults


def _reconcile_campaign(campaign: Campaign, faults: Faults) -> bool:
    """Serve the vendor's API for ``campaign`` on loopback and reconcile this app against it;
    whether the store then matches the vendor."""
    from .cli import echo_report
    from .simulator import repair

    click.echo(f"reconciling {campaign.user_task_id} against a fake of the vendor's API")
    report, found = repair(current_flask_app(), campaign, faults)
    echo_report(report, dry_run=False)
    for line in found:
        click.echo(f"still differs: {line}")
    click.echo("the store matches the vendor" if not found else f"{len(found)} difference(s) left")
    return not found and not report.errors


def _run_with_progress_bar(
    campaign: Campaign,
    base: str,
    *,
    secret_key: str,
    uuid: str,
    concurrency: int,
    delay: float,
    timeout: float,
) -> Summary:
    """Run ``campaign`` against the app's timestamp window and clock, a bar on stderr."""
    state = get_state()
    settings = state.settings
    with click.progressbar(
        length=len(campaign.deliveries), label="simulating", file=sys.stderr, show_pos=True
    ) as bar:

        def advance(result: Result) -> None:
            bar.update(1)

        return run_campaign(
            campaign,
            base,
            secret_key=secret_key,
            uuid=uuid,
            window=Window(settings.max_age, settings.max_future_skew),
            concurrency=concurrency,
            delay=delay,
            timeout=timeout,
            clock=state.clock,
            progress=advance,
        )


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
@click.option(
    "--ping/--no-ping",
    default=None,
    help="Ping the vendor's API (reachability, credentials, its clock) [default: when a "
    "CALLBOT_API_* location or credential is set].",
)
def doctor(reference: float | datetime | timedelta | None, ping: bool | None) -> None:
    """Check the configuration: secret, uuid, algorithms, store, clock, dispatch, vendor API.
    Exits 1 on a problem."""
    state = get_state()
    steps = check_configuration(
        state.settings,
        state.store,
        now=state.clock(),
        system_now=time.time(),
        reference=None if reference is None else _timestamp(reference),
        ping=ping,
        clock=state.clock,
    )
    celery_app = current_flask_app().extensions.get("celery")
    steps.append(
        check_dispatch(state.settings, bound=state.enqueue is not None, celery_app=celery_app)
    )
    for step in steps:
        click.echo(step.line())
    problems = sum(step.status is StepStatus.PROBLEM for step in steps)
    warnings = sum(step.status is StepStatus.WARN for step in steps)
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


#: The commands by name, for :class:`flask_callbot.cli.CallbotGroup`.
COMMANDS: dict[str, click.Command] = {
    "send": send,
    "simulate": simulate,
    "verify": verify,
    "doctor": doctor,
    "openapi": openapi_command,
}
