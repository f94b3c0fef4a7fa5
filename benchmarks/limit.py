"""The contract limit: exactly the work the contract requires, hand-written on the raw driver.

What flask_callbot's cost is judged against. Per callback it does what the design requires and
nothing more, at its cheapest: cap the body; check the auth headers' form, the time window and
the uuid; compare the MD5 or SHA-256 signature of the raw bytes in constant time; decode the JSON
and load it with flask_callbot's own marshmallow schemas into its event dataclasses; in one
transaction (SQLite: BEGIN IMMEDIATE in WAL mode, writers taking turns through a file lock as
flask_callbot's do; PostgreSQL: the row locked FOR UPDATE) record the delivery with its body,
headers and transition under its unique requestID and apply it (a task's transition, stale or
not; an order's newer data, and for a call callback the first report of its call, "news"); send
the signals; mark the outcome in a second transaction; reply with a fresh responseID.

It writes the same rows and columns as flask_callbot (the tables are flask_callbot's own,
created by its store), on one raw ``sqlite3`` or ``psycopg`` connection per
thread: no pool, no statement objects, no logging, no metrics. A redelivery is answered from the
stored row (processed: acknowledged; failed: its stored signals again; in progress: 409).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, request

from flask_callbot import signals
from flask_callbot.events import CallEvent, OrderEvent, TaskEvent, TaskStatus, coerce_status
from flask_callbot.schemas import NumberCallbackSchema, TaskCallbackSchema
from flask_callbot.store import Database

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UUID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CREATE_TS = re.compile(r"[0-9]{1,12}")
_SIGN = re.compile(r"[0-9A-Fa-f]{32}|[0-9A-Fa-f]{64}")
_DIGESTS = {32: hashlib.md5, 64: hashlib.sha256}
_ALGORITHMS = {"MD5": 32, "SHA256": 64}
_MAX_BODY = 1 << 20
_STATUS_SIGNAL = {
    TaskStatus.PENDING: signals.task_pending,
    TaskStatus.COMPLETED: signals.task_completed,
    TaskStatus.FAILED: signals.task_failed,
    TaskStatus.PAUSED: signals.task_paused,
}
_KIND_RANK = {"call": 0, "order": 1}

_DELIVERY_COLUMNS = (
    "request_id",
    "kind",
    "task_id",
    "order_id",
    "request_ts",
    "received_at",
    "headers",
    "body",
    "body_sha256",
    "outcome",
    "attempts",
    "claimed_at",
    "applied",
    "source",
    "previous_status",
    "status",
    "changed",
)
_TASK_COLUMNS = (
    "user_task_id",
    "scene_id",
    "status",
    "status_request_ts",
    "last_request_id",
    "create_ts",
    "answer_order_count",
    "finish_order_count",
    "total_order_count",
    "finish_rate",
    "total_answer_call",
    "total_call",
    "answer_rate",
    "updated_at",
)
_ORDER_COLUMNS = (
    "user_task_id",
    "scene_id",
    "user_phone",
    "user_name",
    "finish",
    "other",
    "last_call_id",
    "last_call_status",
    "last_call_start_ts",
    "last_call_end_ts",
    "last_call_duration",
    "hangup_cause",
    "intents",
    "version_request_ts",
    "version_kind_rank",
    "last_kind",
    "last_request_id",
)
_STATS = _TASK_COLUMNS[6:13]


def _sql(postgres: bool) -> dict[str, str]:
    """The statements, ``?`` placeholders (sqlite3) or ``%s`` (psycopg). (Every name put into
    them is one of the fixed column names above: no S608 injection.)"""
    lock = " FOR UPDATE" if postgres else ""
    task_sets = ", ".join(f"{name} = ?" for name in _TASK_COLUMNS)
    order_sets = ", ".join(f"{name} = ?" for name in _ORDER_COLUMNS)
    delivery_columns = ", ".join(_DELIVERY_COLUMNS)
    delivery_values = ", ".join("?" for _ in _DELIVERY_COLUMNS)

    statements = {  # the names put in are the fixed column names above
        "lock_task": f"SELECT status, status_request_ts FROM callbot_tasks WHERE task_id = ?{lock}",  # noqa: S608
        "blank_task": "INSERT INTO callbot_tasks (task_id) VALUES (?) ON CONFLICT DO NOTHING",
        "apply_task": f"UPDATE callbot_tasks SET {task_sets} WHERE task_id = ?",  # noqa: S608
        "lock_order": f"SELECT last_request_id, last_call_start_ts, version_request_ts, version_kind_rank, order_request_id FROM callbot_orders WHERE task_id = ? AND order_id = ?{lock}",  # noqa: S608, E501
        "blank_order": "INSERT INTO callbot_orders (task_id, order_id, callbacks) "
        "VALUES (?, ?, 0) ON CONFLICT DO NOTHING",
        "report_call": "INSERT INTO callbot_calls (task_id, order_id, call_id, request_id) "
        "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING call_id",
        "count_order": "UPDATE callbot_orders SET callbacks = callbacks + 1, updated_at = ?, "
        "order_request_id = COALESCE(?, order_request_id) WHERE task_id = ? AND order_id = ?",
        "apply_order": f"UPDATE callbot_orders SET callbacks = callbacks + 1, updated_at = ?, order_request_id = COALESCE(?, order_request_id), {order_sets} WHERE task_id = ? AND order_id = ?",  # noqa: S608, E501
        "insert_delivery": f"INSERT INTO callbot_deliveries ({delivery_columns}) VALUES ({delivery_values}) ON CONFLICT (request_id) DO NOTHING RETURNING id",  # noqa: S608, E501
        "stored": "SELECT outcome, previous_status, status, applied, changed "
        "FROM callbot_deliveries WHERE request_id = ?",
        "retake": "UPDATE callbot_deliveries SET outcome = 'pending', claimed_at = ?, "
        "attempts = attempts + 1 WHERE request_id = ? AND outcome = 'failed'",
        "finish": "UPDATE callbot_deliveries SET outcome = ?, finished_at = ?, error = ? "
        "WHERE request_id = ?",
    }
    if postgres:
        statements = {name: sql.replace("?", "%s") for name, sql in statements.items()}
    return statements


class _Store:
    """One raw connection per thread (and per process: gunicorn forks after import)."""

    def __init__(self, database_url: str) -> None:
        url = sa.make_url(database_url)
        # flask_callbot's own tables, created its way (one process at a time: gunicorn's workers
        # start together), so the columns and indexes are identical.
        tables = Database(database_url, {}, sqlite_synchronous="NORMAL")
        tables.create_schema()
        tables.dispose()
        engine = sa.create_engine(url)
        self.postgres = url.get_backend_name() == "postgresql"
        if self.postgres:
            self._args = engine.dialect.create_connect_args(url)[1]
            self._args.pop("context", None)
        self.path = url.database or ""
        engine.dispose()
        self.sql = _sql(self.postgres)
        self._local = threading.local()

    def connection(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if self.postgres:
                import psycopg

                local.conn = psycopg.connect(**self._args)
            else:
                local.conn = conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                import fcntl

                local.lock = os.open(f"{self.path}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
                local.flock = fcntl.flock
            local.pid = os.getpid()
        return local.conn

    @contextmanager
    def writing(self) -> Iterator[Any]:
        conn = self.connection()
        if self.postgres:
            with conn.cursor() as cursor:
                try:
                    yield cursor
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            return
        local = self._local
        local.flock(local.lock, 2)  # LOCK_EX
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            local.flock(local.lock, 8)  # LOCK_UN

    def timestamp(self, now: float) -> Any:
        at = datetime.fromtimestamp(now, UTC)
        return at if self.postgres else at.strftime("%Y-%m-%d %H:%M:%S.%f")


class _Refused(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        self.reply = _reply(code, message, status)


def _reply(code: int, message: str, status: int = 200) -> Response:
    body = {"retCode": code, "retMsg": message, "responseID": uuid.uuid4().hex}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _authentic(secret: bytes, account: str) -> tuple[bytes, str, int, dict[str, str]]:
    """The body, requestID, createTs and headers of an authentic request (else _Refused)."""
    request.max_content_length = _MAX_BODY + 1
    body = request.get_data(cache=False)
    if len(body) > _MAX_BODY:
        raise _Refused(413, 4, "body too large")
    headers = request.headers
    request_id, account_header, create_ts, sign = (
        headers.get("requestID"),
        headers.get("uuid"),
        headers.get("createTs"),
        headers.get("sign"),
    )
    if not (request_id and account_header and create_ts and sign):
        raise _Refused(401, 6001, "missing header")
    if not (
        _REQUEST_ID.fullmatch(request_id)
        and _UUID.fullmatch(account_header)
        and _CREATE_TS.fullmatch(create_ts)
        and _SIGN.fullmatch(sign)
    ):
        raise _Refused(401, 6, "malformed header")
    algorithm = headers.get("algorithm")
    if algorithm is not None and _ALGORITHMS.get(algorithm.upper()) != len(sign):
        raise _Refused(401, 6, "bad algorithm")
    request_ts = int(create_ts)
    now = time.time()
    if request_ts < now - 300 or request_ts > now + 60:
        raise _Refused(401, 6, "timestamp out of window")
    if not hmac.compare_digest(account_header.encode(), account.encode()):
        raise _Refused(401, 6002, "unknown account")
    signed = b"".join(
        (secret, b"&body=", body, b"&createTs=", create_ts.encode(), b"&requestID=",
         request_id.encode(), b"&uuid=", account_header.encode())
    )  # fmt: skip
    expected = _DIGESTS[len(sign)](signed).hexdigest().upper().encode()
    if not hmac.compare_digest(expected, sign.upper().encode()):
        raise _Refused(401, 6, "bad signature")
    recorded = {"requestID": request_id, "uuid": account_header, "createTs": create_ts}
    recorded["sign"] = sign
    if algorithm is not None:
        recorded["algorithm"] = algorithm.upper()
    return body, request_id, request_ts, recorded


def _payload(body: bytes, schema: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        raw = json.loads(body.decode("utf-8"))
    except ValueError:
        raise _Refused(400, 3, "body is not JSON") from None
    if not isinstance(raw, dict):
        raise _Refused(400, 3, "body is not an object")
    try:
        fields = schema.load(raw)
    except Exception:  # marshmallow's ValidationError: which fields is not measured here
        raise _Refused(400, 4, "invalid fields") from None
    fields.pop("callback_type", None)
    return raw, fields


def _delivery_row(
    request_id: str, kind: str, task_id: str, order_id: str | None, request_ts: int, at: Any,
    headers: dict[str, str], body: bytes, applied: bool, previous: Any, status: Any,
    changed: bool,
) -> tuple[Any, ...]:  # fmt: skip
    return (
        request_id, kind, task_id, order_id, request_ts, at, json.dumps(headers, sort_keys=True),
        body, hashlib.sha256(body).hexdigest(), "pending", 1, at, applied, None, previous, status,
        changed,
    )  # fmt: skip


def limit_app(database_url: str, secret: str, account: str) -> Flask:
    app = Flask("limit")
    store = _Store(database_url)
    sql = store.sql
    secret_bytes = secret.encode()
    task_schema, number_schema = TaskCallbackSchema(), NumberCallbackSchema()

    def redelivery(conn: Any, request_id: str, at: Any) -> tuple[str, Any] | None:
        """A requestID seen before: None when already processed (acknowledge), else its stored
        transition to send again (a failed delivery); raises 409 while it is in progress."""
        row = conn.execute(sql["stored"], (request_id,)).fetchone()
        if row[0] == "processed":
            return None
        if row[0] != "failed" or not conn.execute(sql["retake"], (at, request_id)).rowcount:
            raise _Refused(409, 7, "in progress, retry later")
        return ("retry", row)

    def finish(request_id: str, error: str | None = None) -> None:
        outcome = "failed" if error else "processed"
        with store.writing() as conn:
            conn.execute(sql["finish"], (outcome, store.timestamp(time.time()), error, request_id))

    def send(app_: Flask, planned: list[tuple[Any, dict[str, Any]]], request_id: str) -> Response:
        errors = []
        for signal, kwargs in planned:
            try:
                signal.send(app_, _async_wrapper=app_.ensure_sync, **kwargs)
            except Exception as exc:
                errors.append(f"{signal.name}: {type(exc).__name__}: {exc}")
        if errors:
            finish(request_id, "; ".join(errors)[:2000])
            return _reply(5001, "a receiver failed", 500)
        finish(request_id)
        return _reply(0, "success")

    @app.post("/api/v3/taskCallback")
    def task_callback() -> Response:
        try:
            body, request_id, request_ts, headers = _authentic(secret_bytes, account)
            raw, fields = _payload(body, task_schema)
            event = TaskEvent(request_id=request_id, request_ts=request_ts, raw=raw, **fields)
            now = time.time()
            at = store.timestamp(now)
            with store.writing() as conn:
                row = conn.execute(sql["lock_task"], (event.task_id,)).fetchone()
                if row is None:
                    conn.execute(sql["blank_task"], (event.task_id,))
                    if store.postgres:
                        row = conn.execute(sql["lock_task"], (event.task_id,)).fetchone()
                previous, last_ts = row if row is not None else (None, None)
                status = event.status
                applied = last_ts is None or request_ts >= last_ts
                changed = applied and (previous is None or previous != int(status))
                inserted = conn.execute(
                    sql["insert_delivery"],
                    _delivery_row(request_id, "task", event.task_id, None, request_ts, at,
                                  headers, body, applied, previous, int(status), changed),
                ).fetchone()  # fmt: skip
                if inserted is None:
                    retry = redelivery(conn, request_id, at)
                    if retry is None:
                        return _reply(0, "duplicate")
                    _, (_, previous, status, applied, changed) = retry
                elif applied:
                    stat = event.stat
                    stats = [getattr(stat, name) for name in _STATS] if stat else [None] * 7
                    conn.execute(
                        sql["apply_task"],
                        (event.user_task_id, event.scene_id, int(status), request_ts, request_id,
                         event.create_ts, *stats, at, event.task_id),
                    )  # fmt: skip
        except _Refused as refused:
            return refused.reply
        if previous is not None:
            previous = coerce_status(previous)
        planned: list[tuple[Any, dict[str, Any]]] = [(signals.callback_received, {"event": event})]
        if changed:
            change = {"event": event, "previous": previous}
            planned.append((signals.task_status_changed, change))
            if status == TaskStatus.IN_PROGRESS:
                resumed = previous == TaskStatus.PAUSED
                planned.append((signals.task_resumed if resumed else signals.task_started, change))
            elif status in _STATUS_SIGNAL:
                planned.append((_STATUS_SIGNAL[status], change))
        if applied:
            planned.append((signals.task_progress, {"event": event}))
        return send(app, planned, request_id)

    def number_callback(kind: str) -> Response:
        try:
            body, request_id, request_ts, headers = _authentic(secret_bytes, account)
            raw, fields = _payload(body, number_schema)
            event_type = OrderEvent if kind == "order" else CallEvent
            event = event_type(request_id=request_id, request_ts=request_ts, raw=raw, **fields)
            key = (event.task_id, event.order_id)
            at = store.timestamp(time.time())
            call = event.call
            with store.writing() as conn:
                row = conn.execute(sql["lock_order"], key).fetchone()
                if row is None:
                    conn.execute(sql["blank_order"], key)
                    if store.postgres:
                        row = conn.execute(sql["lock_order"], key).fetchone()
                incoming = (call.call_start_ts or 0, request_ts, _KIND_RANK[kind])
                if row is None or row[0] is None:
                    applied, first_order = True, True
                else:
                    applied = incoming >= (row[1] or 0, row[2], row[3])
                    first_order = row[4] is None
                if kind == "order":
                    news = first_order
                else:
                    reported = conn.execute(
                        sql["report_call"], (*key, call.call_id, request_id)
                    ).fetchone()
                    news = reported is not None
                inserted = conn.execute(
                    sql["insert_delivery"],
                    _delivery_row(request_id, kind, event.task_id, event.order_id, request_ts, at,
                                  headers, body, applied, None, None, news),
                ).fetchone()  # fmt: skip
                if inserted is None:
                    retry = redelivery(conn, request_id, at)
                    if retry is None:
                        return _reply(0, "duplicate")
                    news = retry[1][4] is not False
                else:
                    order_request_id = request_id if news and kind == "order" else None
                    if applied:
                        intents = json.dumps(
                            [
                                {"intent_id": i.intent_id, "intent_tag": i.intent_tag,
                                 "intent_name": i.intent_name, "intent_level": i.intent_level}
                                for i in call.intents
                            ]
                        )  # fmt: skip
                        conn.execute(
                            sql["apply_order"],
                            (at, order_request_id, event.user_task_id, event.scene_id,
                             event.user_phone, event.user_name, event.finish, event.other,
                             call.call_id, call.call_status, call.call_start_ts, call.call_end_ts,
                             call.call_duration, call.hangup_cause, intents, request_ts,
                             _KIND_RANK[kind], kind, request_id, *key),
                        )  # fmt: skip
                    else:
                        conn.execute(sql["count_order"], (at, order_request_id, *key))
        except _Refused as refused:
            return refused.reply
        planned: list[tuple[Any, dict[str, Any]]] = [(signals.callback_received, {"event": event})]
        if news:
            received = signals.order_received if kind == "order" else signals.call_received
            planned.append((received, {"event": event}))
        return send(app, planned, request_id)

    app.add_url_rule(
        "/api/v3/orderCallback", "order", lambda: number_callback("order"), methods=["POST"]
    )
    app.add_url_rule(
        "/api/v3/callCallback", "call", lambda: number_callback("call"), methods=["POST"]
    )
    return app
