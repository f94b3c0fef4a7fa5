"""Diagnostics for a failing integration: why a captured request verifies or not, and whether the
configuration is sound. ``flask callbot verify`` and ``flask callbot doctor`` print these steps.

Verification walks the pipeline's own checks (:mod:`flask_callbot.signing`, the schemas) one by
one, but carries on after a failure so every problem shows at once. Secrets are only ever shown
masked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from .config import Settings
from .errors import (
    CallbotError,
    InvalidSignature,
    PayloadTooLarge,
    RequestRejected,
    StoreUnavailable,
)
from .events import CallbackKind, TaskEvent
from .routes import ROUTES
from .schemas import build_event, decode_body
from .signing import (
    ALGORITHMS,
    AuthHeaders,
    candidate_algorithms,
    check_timestamp,
    check_uuid,
    parse_auth_headers,
    verify_signature,
)
from .store import SCHEMA_VERSION, Store
from .store.schema import version_problem
from .store.space import ADVISED_BYTES, NEEDED_BYTES, disk_use
from .wire import SERIALIZATIONS, serialize


class StepStatus(StrEnum):
    """How one checked point went, printed at the start of its line."""

    OK = "OK"
    FAIL = "FAIL"  # verify: the receiver refuses the request here
    SKIP = "SKIP"  # verify: not checked (an earlier step failed, or it cannot apply)
    HINT = "HINT"  # verify: a likely cause of the failure above
    WARN = "WARN"  # doctor: works, but look into it
    PROBLEM = "PROBLEM"  # doctor: broken


_SHORT_SECRET = 16
#: Seconds the vendor's clock may differ from ours before the doctor warns.
_CLOCK_TOLERANCE = 5
#: Seconds doctor waits for the Celery broker.
_BROKER_TIMEOUT = 3
#: A system clock before this is surely wrong (unix seconds: 2024-01-01).
_EARLIEST_PLAUSIBLE = 1_704_067_200
_STYLE_NAMES = {
    "python": "spaced (json.dumps defaults: ', ' and ': ', non-ASCII escaped)",
    "compact": "compact (no spaces, raw UTF-8)",
}


def mask_secret(secret: str) -> str:
    """``u7Mf…GSr``: enough to tell keys apart, never enough to use one."""
    if len(secret) < 12:
        return f"…({len(secret)} characters)"
    return f"{secret[:4]}…{secret[-3:]}"


@dataclass(frozen=True, slots=True)
class Step:
    """One checked point: how it went, and why."""

    status: StepStatus
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<7} {self.name}: {self.detail}"


class CaptureError(ValueError):
    """The capture file cannot be read as a request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapturedRequest:
    """A request as captured: its headers in order, its exact body, its path if known."""

    form: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    path: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def kind(self) -> CallbackKind | None:
        """The callback kind named by the path's route, as the receiver would route it."""
        path = (self.path or "").rstrip("/")
        return next((kind for kind, route in ROUTES.items() if path.endswith(route)), None)


def parse_capture(data: bytes) -> CapturedRequest:
    """Read raw HTTP (request line, headers, blank line, body; CRLF or LF) or JSON
    ``{"headers": {...}, "body": "..."}`` (or ``"body_base64"``; ``"path"`` or ``"url"``)."""
    if data.lstrip()[:1] == b"{":
        return _parse_json_capture(data)
    return _parse_http_capture(data)


_REQUEST_LINE = re.compile(r"([A-Z]+) (\S+)(?: HTTP/\d(?:\.\d)?)?")


def _parse_http_capture(data: bytes) -> CapturedRequest:
    ends = [(data.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if sep in data]
    if not ends:
        raise CaptureError("no blank line after the headers: is this a raw HTTP request?")
    end, width = min(ends)
    head, body = data[:end].decode("latin-1"), data[end + width :]
    lines = [line.rstrip("\r") for line in head.split("\n")]
    path = None
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match:
        path = urlsplit(match[2]).path
        lines = lines[1:]
    headers = []
    for number, line in enumerate(lines, start=2 if match else 1):
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise CaptureError(f"line {number} is not a header: {line[:60]!r}")
        headers.append((name.strip(), value.strip()))
    notes: list[str] = []
    values = {name.lower(): value for name, value in headers}
    if values.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
        notes.append("the chunked body was decoded")
    elif values.get("content-length", "").isdigit():
        length = int(values["content-length"])
        if len(body) > length:
            notes.append(
                f"{len(body) - length} byte(s) after Content-Length ({length}) were ignored"
            )
            body = body[:length]
        elif len(body) < length:
            notes.append(f"the body has {len(body)} of its {length} bytes: the capture is cut")
    return CapturedRequest(
        form="raw HTTP", headers=tuple(headers), body=body, path=path, notes=tuple(notes)
    )


def _dechunk(data: bytes) -> bytes:
    body, rest = b"", data
    while True:
        size_line, sep, rest = rest.partition(b"\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise CaptureError("the chunked body is malformed") from None
        if not sep or size == 0:
            return body
        body, rest = body + rest[:size], rest[size:].removeprefix(b"\r\n").removeprefix(b"\n")


def _parse_json_capture(data: bytes) -> CapturedRequest:
    try:
        capture = json.loads(data)
    except ValueError as exc:
        raise CaptureError(f"not valid JSON: {exc}") from None
    if not isinstance(capture, dict) or "headers" not in capture:
        raise CaptureError('a JSON capture is an object with "headers" and "body"')
    raw_headers = capture["headers"]
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    try:
        headers = tuple((str(name), str(value)) for name, value in pairs)
    except (TypeError, ValueError):
        raise CaptureError('"headers" must be an object or a list of [name, value]') from None
    if ("body" in capture) == ("body_base64" in capture):
        raise CaptureError('give exactly one of "body" (a string) and "body_base64"')
    if "body_base64" in capture:
        try:
            body = base64.b64decode(capture["body_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise CaptureError('"body_base64" is not valid base64') from None
    elif isinstance(capture["body"], str):
        body = capture["body"].encode()
    else:
        raise CaptureError('"body" must be a string: the body exactly as sent, not parsed JSON')
    where = capture.get("path") or capture.get("url")
    path = urlsplit(where).path if isinstance(where, str) else None
    return CapturedRequest(form="JSON", headers=headers, body=body, path=path)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """The steps, and what the receiver would answer (the first failing step decides)."""

    steps: tuple[Step, ...]
    verified: bool
    verdict: str


@dataclass
class _Walk:
    steps: list[Step] = field(default_factory=list)
    refusal: str | None = None

    def add(
        self, status: StepStatus, name: str, detail: str, error: CallbotError | None = None
    ) -> None:
        self.steps.append(Step(status, name, detail))
        if status is StepStatus.FAIL and self.refusal is None:
            code = f"{error.http_status} retCode {error.ret_code} ({error.reason})" if error else ""
            self.refusal = f"refused at {name}" + (f": the receiver answers {code}" if code else "")


def verify_capture(
    capture: CapturedRequest,
    settings: Settings,
    *,
    now: float,
    kind: CallbackKind | None = None,
) -> Verification:
    """Check ``capture`` as the receiver would, explaining every step."""
    walk = _Walk()
    kind = kind or capture.kind
    body = capture.body
    if len(body) > settings.max_content_length:
        error = PayloadTooLarge("body is larger than CALLBOT_MAX_CONTENT_LENGTH")
        walk.add(
            StepStatus.FAIL, "size", f"{len(body)} bytes is over CALLBOT_MAX_CONTENT_LENGTH", error
        )
    else:
        walk.add(StepStatus.OK, "size", f"{len(body)} bytes (limit {settings.max_content_length})")
    try:
        auth = parse_auth_headers(capture.headers)
    except RequestRejected as exc:
        walk.add(StepStatus.FAIL, "headers", exc.message, exc)
        auth = None
    if auth is None:
        for name in ("time window", "uuid", "signature"):
            walk.add(StepStatus.SKIP, name, "needs well-formed auth headers")
    else:
        names = "requestID, uuid, createTs, sign" + (", algorithm" if auth.algorithm else "")
        walk.add(StepStatus.OK, "headers", f"{names} present once each and well formed")
        _check_window(walk, auth, settings, now)
        try:
            check_uuid(auth.uuid, settings.uuid)
            walk.add(StepStatus.OK, "uuid", f"{auth.uuid} is CALLBOT_UUID")
        except RequestRejected as exc:
            walk.add(
                StepStatus.FAIL, "uuid", f"{auth.uuid} is not CALLBOT_UUID ({settings.uuid})", exc
            )
        _check_signature(walk, auth, body, settings)
    _check_body(walk, kind, body, auth)
    if walk.refusal is not None:
        verdict = walk.refusal
    elif kind is None:  # authentic, but the receiver also validates the body: no verdict yet
        verdict = "undecided: the body was not checked; give --kind task|order|call"
    else:
        verdict = "verifies: the receiver accepts it (200 retCode 0)"
    verified = walk.refusal is None and kind is not None
    return Verification(steps=tuple(walk.steps), verified=verified, verdict=verdict)


def _utc(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _check_window(walk: _Walk, auth: AuthHeaders, settings: Settings, now: float) -> None:
    age = int(now) - auth.request_ts
    when = f"{age} s old" if age >= 0 else f"{-age} s in the future"
    window = (
        f"allowed: {settings.max_age} s old to {settings.max_future_skew} s ahead of "
        f"{int(now)} ({_utc(now)})"
    )
    try:
        check_timestamp(
            auth.request_ts,
            now=now,
            max_age=settings.max_age,
            max_future_skew=settings.max_future_skew,
        )
    except RequestRejected as exc:
        walk.add(
            StepStatus.FAIL, "time window", f"createTs {auth.create_ts} is {when}; {window}", exc
        )
        if age > 0:
            hint = "checking an old capture? pass --now with the time it was received"
        else:
            hint = "the sender's clock runs ahead of this one (or --now is before the receipt)"
        walk.add(StepStatus.HINT, "time window", hint)
        return
    walk.add(StepStatus.OK, "time window", f"createTs {auth.create_ts} is {when}; {window}")


def _verifies(
    auth: AuthHeaders, body: bytes, keys: Sequence[str], algorithms: Sequence[str]
) -> bool:
    """Whether the receiver's own check accepts ``sign`` for ``body`` under these settings."""
    try:
        verify_signature(auth, body, secret_keys=keys, algorithms=algorithms)
    except InvalidSignature:
        return False
    return True


def _check_signature(walk: _Walk, auth: AuthHeaders, body: bytes, settings: Settings) -> None:
    keys, allowed = settings.secret_keys, settings.sign_algorithms
    try:
        candidates = candidate_algorithms(auth, allowed)
    except InvalidSignature as exc:
        detail = f"the algorithm header says {auth.algorithm}, not in CALLBOT_SIGN_ALGORITHMS"
        walk.add(StepStatus.FAIL, "signature", detail, exc)
        return
    digits = len(auth.sign)
    for index, key in enumerate(keys):
        label = f"key {index + 1} of {len(keys)} ({mask_secret(key)})"
        for algorithm in candidates:
            if not auth.fits(algorithm):
                detail = f"{label}, {algorithm}: not tried, sign has {digits} hex digits"
                walk.steps.append(Step(StepStatus.SKIP, "signature", detail))
            elif auth.signed_with(key, body, algorithm):
                walk.steps.append(
                    Step(StepStatus.OK, "signature", f"{label}, {algorithm}: matches")
                )
            else:
                walk.steps.append(
                    Step(StepStatus.FAIL, "signature", f"{label}, {algorithm}: no match")
                )
    try:
        verify_signature(auth, body, secret_keys=keys, algorithms=allowed)
    except RequestRejected as exc:
        walk.add(StepStatus.FAIL, "signature", "the signature matches no configured key", exc)
        for hint in _signature_hints(auth, body, keys, candidates):
            walk.add(StepStatus.HINT, "signature", hint)


def _signature_hints(
    auth: AuthHeaders, body: bytes, keys: Sequence[str], algorithms: Sequence[str]
) -> list[str]:
    """Why a signature that matches nothing might have failed: the usual slips, tried out."""
    hints = []
    stripped = body.rstrip(b"\r\n")
    if stripped != body and _verifies(auth, stripped, keys, algorithms):
        hints.append(
            f"the signature matches the body without its last {len(body) - len(stripped)} "
            "newline byte(s): added by an editor or the capture tool? (in a raw HTTP capture, "
            "a Content-Length header lets verify trim them)"
        )
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and not hints:
        for style in SERIALIZATIONS:
            candidate = serialize(payload, style)
            if candidate != body and _verifies(auth, candidate, keys, algorithms):
                hints.append(
                    f"the body was re-serialised: the signature matches the {_STYLE_NAMES[style]} "
                    "form of the same JSON; sign and send the same bytes"
                )
    trimmed = [key.strip() for key in keys]
    if trimmed != list(keys) and _verifies(auth, body, trimmed, algorithms):
        hints.append("CALLBOT_SECRET_KEY has spaces around it: the signature matches without")
    if not hints:
        hints.append(
            "no usual slip explains it: check CALLBOT_SECRET_KEY against the console, and that "
            "the sender signs <secret>&body=<body>&createTs=..&requestID=..&uuid=.. in that order"
        )
    return hints


def _check_body(
    walk: _Walk, kind: CallbackKind | None, body: bytes, auth: AuthHeaders | None
) -> None:
    if kind is None:
        walk.add(
            StepStatus.SKIP,
            "body",
            "the route is unknown: give --kind task|order|call to validate it",
        )
        return
    try:
        event = build_event(
            kind,
            decode_body(body),
            request_id=auth.request_id if auth else "-",
            request_ts=auth.request_ts if auth else 0,
        )
    except RequestRejected as exc:
        walk.add(StepStatus.FAIL, "body", f"not a valid {kind.value} callback: {exc.message}", exc)
        return
    if isinstance(event, TaskEvent):
        what = f"taskID {event.task_id}, taskStatus {int(event.status)}"
    else:
        what = f"orderID {event.order_id}, callID {event.call.call_id}"
    walk.add(StepStatus.OK, "body", f"a valid {kind.value} callback ({what})")


# -- doctor -----------------------------------------------------------------------------------


def check_configuration(
    settings: Settings,
    store: Store,
    *,
    now: float,
    system_now: float,
    reference: float | None = None,
    ping: bool | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Step]:
    """The doctor's checklist: secret, uuid, algorithms, store (its deliveries left failed or
    abandoned, and an SQLite file's free space), clock, and the vendor's API. PROBLEM means
    broken.

    What registration already refuses (no key, an empty key, a malformed uuid, an unknown
    algorithm: see :func:`flask_callbot.config.load_settings`) is not checked again here. The
    vendor is pinged when ``ping`` says so, by default when the app sets a ``CALLBOT_API_*``
    location or credential (``settings.api.configured``), with the app's ``clock``.
    """
    steps = _check_secrets(settings.secret_keys)
    steps.append(Step(StepStatus.OK, "uuid", f"{settings.uuid} is well formed"))
    steps += _check_algorithms(settings.sign_algorithms)
    steps.append(_check_store(store))
    steps += _check_deliveries(store, settings, now)
    steps += _check_disk(store)
    steps += _check_clock(settings, now=now, system_now=system_now, reference=reference)
    if settings.api.configured if ping is None else ping:
        steps += check_vendor_api(settings, clock=clock)
    return steps


def check_vendor_api(settings: Settings, *, clock: Callable[[], float] = time.time) -> list[Step]:
    """Ping the vendor's API: reachable, our credentials accepted, and its clock against ours
    (a vendor clock off by more than the window makes every callback refused)."""
    api = settings.api
    try:
        from .client import ApiError, ApiRefused, CallbotAPI
    except ImportError:
        detail = "not checked: the API client needs pip install 'flask-callbot[api]'"
        return [Step(StepStatus.WARN, "vendor API", detail)]
    try:
        with CallbotAPI.from_settings(api, clock=clock, max_retries=0) as client:
            ping = client.ping()
    except ApiRefused as exc:
        status = StepStatus.PROBLEM
        if exc.ret_code in (6, 6001, 6002, 6003):
            return [Step(status, "vendor API", f"{api.base_url} refused our credentials: {exc}")]
        return [Step(status, "vendor API", f"{api.base_url}: {exc}")]
    except ApiError as exc:
        return [Step(StepStatus.PROBLEM, "vendor API", f"{api.base_url} unreachable: {exc}")]
    reached = (
        f"{api.base_url} reachable as {api.uuid}, credentials accepted "
        f"({ping.round_trip * 1000:.0f} ms)"
    )
    offset = ping.offset
    gap = f"the vendor's clock is {abs(offset):.1f} s {'ahead of' if offset > 0 else 'behind'} ours"
    if offset > settings.max_future_skew or -offset > settings.max_age:
        clock_step = Step(StepStatus.PROBLEM, "vendor clock", f"{gap}: outside the window")
    elif abs(offset) > _CLOCK_TOLERANCE:
        clock_step = Step(StepStatus.WARN, "vendor clock", f"{gap}: is NTP running?")
    else:
        clock_step = Step(StepStatus.OK, "vendor clock", gap)
    return [Step(StepStatus.OK, "vendor API", reached), clock_step]


def check_dispatch(settings: Settings, *, bound: bool, celery_app: Any = None) -> Step:
    """How signals are sent; for Celery dispatch, whether the broker answers now (else every
    callback is answered 503 and nothing is acknowledged)."""
    if not settings.queued:
        return Step(StepStatus.OK, "dispatch", "inline: receivers run in the request")
    if not bound or celery_app is None:
        detail = "celery, but no Celery app is bound: every callback would be answered 503"
        return Step(StepStatus.PROBLEM, "dispatch", detail)
    with celery_app.connection_for_write() as connection:
        broker = connection.as_uri()  # the password masked
        try:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=_BROKER_TIMEOUT
            )
        except Exception as exc:  # kombu's errors, whatever the transport
            detail = f"celery: broker {broker} unreachable ({exc}): callbacks would be answered 503"
            return Step(StepStatus.PROBLEM, "dispatch", detail)
    return Step(StepStatus.OK, "dispatch", f"celery: broker {broker} reachable")


def _check_secrets(keys: Sequence[str]) -> list[Step]:
    steps = []
    for index, key in enumerate(keys):
        name = "secret key" if len(keys) == 1 else f"secret key {index + 1} of {len(keys)}"
        if key != key.strip():
            steps.append(Step(StepStatus.WARN, name, f"{mask_secret(key)} has spaces around it"))
        elif len(key) < _SHORT_SECRET:
            detail = (
                f"only {len(key)} characters ({mask_secret(key)}); the console's keys are "
                "32: is it complete? A short key is easy to guess"
            )
            steps.append(Step(StepStatus.WARN, name, detail))
        else:
            steps.append(Step(StepStatus.OK, name, f"{len(key)} characters ({mask_secret(key)})"))
    return steps


def _check_algorithms(algorithms: Sequence[str]) -> list[Step]:
    steps = []
    for name in algorithms:
        try:
            ALGORITHMS[name](b"")
        except ValueError as exc:  # a FIPS build refusing MD5
            steps.append(Step(StepStatus.PROBLEM, "algorithm", f"{name} is not usable here: {exc}"))
        else:
            steps.append(Step(StepStatus.OK, "algorithm", f"{name} accepted and available"))
    if "MD5" not in algorithms:
        detail = "MD5 is not accepted: it is the vendor's default; set the console to SHA-256"
        steps.append(Step(StepStatus.WARN, "algorithm", detail))
    return steps


def _check_store(store: Store) -> Step:
    url = store.engine.url.render_as_string(hide_password=True)
    try:
        version = store.peek_schema_version()
    except StoreUnavailable as exc:
        return Step(StepStatus.PROBLEM, "store", f"{url} unreachable: {exc.message}")
    managed = store.db.manage_schema
    if version is None and managed:
        detail = f"{url} reachable; tables not created yet (first use, or db upgrade)"
        return Step(StepStatus.OK, "store", detail)
    if version is not None and version > SCHEMA_VERSION:
        detail = (
            f"{url} at schema version {version}, newer than this flask_callbot "
            f"({SCHEMA_VERSION}): upgrade the package"
        )
        return Step(StepStatus.PROBLEM, "store", detail)
    problem = version_problem(version)
    if problem is not None:  # missing or behind: first use upgrades only if managed here
        status = StepStatus.WARN if managed else StepStatus.PROBLEM
        return Step(status, "store", f"{url}: {problem}")
    return Step(StepStatus.OK, "store", f"{url} reachable, schema version {version}")


def _check_deliveries(store: Store, settings: Settings, now: float) -> list[Step]:
    """Deliveries left failed or abandoned; counted only on tables at this version (the doctor
    creates and upgrades nothing; the store step said why it could not look)."""
    try:
        if store.peek_schema_version() != SCHEMA_VERSION:
            return []
        failed = store.count_failed()
        abandoned = store.count_abandoned(now=now, lease=settings.processing_timeout)
    except StoreUnavailable:
        return []
    if not failed and not abandoned:
        return [Step(StepStatus.OK, "deliveries", "none failed or abandoned")]
    detail = (
        f"{failed} failed, {abandoned} abandoned (pending past CALLBOT_PROCESSING_TIMEOUT "
        f"= {settings.processing_timeout} s: the worker died, or could not write the outcome); "
        "run flask callbot replay --failed"
    )
    return [Step(StepStatus.WARN, "deliveries", detail)]


def _check_disk(store: Store) -> list[Step]:
    """An SQLite file store's free space against what it needs (see :mod:`.store.space`)."""
    path = store.db.sqlite_file
    if path is None:
        return []
    try:
        use = disk_use(path)
    except OSError as exc:
        return [Step(StepStatus.WARN, "disk", f"cannot read the free space for {path}: {exc}")]
    detail = (
        f"{_size(use.free)} free in {use.directory}; the store takes "
        f"{_size(use.database + use.wal)} (WAL {_size(use.wal)})"
    )
    if use.free < NEEDED_BYTES:
        detail += (
            f": under the {_size(NEEDED_BYTES)} it needs to checkpoint its WAL, writes fail "
            "(503) until space is freed or deliveries pruned"
        )
        return [Step(StepStatus.PROBLEM, "disk", detail)]
    if use.free < ADVISED_BYTES:
        detail += (
            f": keep at least {_size(ADVISED_BYTES)} free, plus the deliveries' growth until "
            "the next prune"
        )
        return [Step(StepStatus.WARN, "disk", detail)]
    return [Step(StepStatus.OK, "disk", detail)]


def _size(count: int) -> str:
    """``512 bytes``, ``3.5 KiB``, ``1.2 GiB``."""
    if count < 1024:
        return f"{count} bytes"
    value, unit = count / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def _check_clock(
    settings: Settings, *, now: float, system_now: float, reference: float | None
) -> list[Step]:
    window = f"window {settings.max_age} s back, {settings.max_future_skew} s ahead"
    if system_now < _EARLIEST_PLAUSIBLE:
        detail = f"the system clock says {_utc(system_now)}: it is wrong (is NTP running?)"
        return [Step(StepStatus.PROBLEM, "clock", detail)]
    steps = [
        Step(StepStatus.OK, "clock", f"system {int(system_now)} ({_utc(system_now)}); {window}")
    ]
    if abs(now - system_now) > 1:
        detail = f"the app's clock differs from the system's by {int(now - system_now)} s"
        steps.append(Step(StepStatus.WARN, "clock", detail + " (an injected clock?)"))
    if reference is not None:
        ahead = int(reference - system_now)  # how far the sender's clock is ahead of ours
        side = "ahead of" if ahead >= 0 else "behind"
        gap = f"the reference {int(reference)} is {abs(ahead)} s {side} the system clock"
        if ahead > settings.max_future_skew or -ahead > settings.max_age:
            steps.append(
                Step(StepStatus.PROBLEM, "clock", f"{gap}: its requests fall outside the window")
            )
        elif abs(ahead) > 5:
            steps.append(
                Step(StepStatus.WARN, "clock", f"{gap}: inside the window, but keep NTP running")
            )
        else:
            steps.append(Step(StepStatus.OK, "clock", gap))
    return steps
