"""The three receivers the benchmarks compare, and the signed requests they are fed.

- floor: the least any Flask endpoint can do (read the body, parse the JSON, reply).
- peer: a careful receiver written by hand, as a user without flask_callbot would: header
  checks and a constant-time MD5 check on the raw body, a marshmallow schema, the Flask-SQLAlchemy
  style ORM for the delivery and task rows, a blinker signal, and the outcome marked only after
  the receivers succeeded (the same guarantees as flask_callbot, so the comparison is fair).
- callbot: flask_callbot's blueprint, inline dispatch.
- limit: the contract limit (``limit.py``), the reference flask_callbot is judged against.

``create_app()`` serves one of them under gunicorn: ``BENCH_APP`` (floor|peer|limit|callbot) and
``BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import random
import socket
import time
import uuid
from typing import Any

import sqlalchemy as sa
from blinker import Namespace
from flask import Flask, Response, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields
from sqlalchemy import orm

from flask_callbot import create_blueprint
from flask_callbot.testing import sign_headers, task_payload

SECRET = "bench-secret-key-0123456789abcdef"
UUID = "BenchAccount"


def free_port() -> int:
    """A free loopback port for a server the benchmark starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def envelope(code: int, message: str, status: int = 200) -> Response:
    body = {"retCode": code, "retMsg": message, "responseID": uuid.uuid4().hex}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def floor_app() -> Flask:
    app = Flask("floor")

    @app.post("/api/v3/taskCallback")
    def task_callback() -> Response:
        json.loads(request.get_data())
        return envelope(0, "success")

    return app


class _Base(orm.DeclarativeBase):
    pass


class PeerDelivery(_Base):
    __tablename__ = "peer_deliveries"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    request_id: orm.Mapped[str] = orm.mapped_column(sa.String(128), unique=True)
    body: orm.Mapped[bytes]
    outcome: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    received_at: orm.Mapped[float]


class PeerTask(_Base):
    __tablename__ = "peer_tasks"
    task_id: orm.Mapped[str] = orm.mapped_column(sa.String(255), primary_key=True)
    status: orm.Mapped[int]
    request_ts: orm.Mapped[int]
    stats: orm.Mapped[str]


class _Stat(Schema):
    class Meta:
        unknown = EXCLUDE

    answerOrderCount = fields.Integer(allow_none=True)
    finishOrderCount = fields.Integer(allow_none=True)
    totalOrderCount = fields.Integer(allow_none=True)
    finishRate = fields.Float(allow_none=True)
    totalAnswerCall = fields.Integer(allow_none=True)
    totalCall = fields.Integer(allow_none=True)
    answerRate = fields.Float(allow_none=True)


class _TaskCallback(Schema):
    class Meta:
        unknown = EXCLUDE

    taskID = fields.String(required=True)
    userTaskID = fields.String(required=True)
    taskStatus = fields.Integer(required=True)
    sceneID = fields.String(allow_none=True)
    createTs = fields.Integer(allow_none=True)
    taskStat = fields.Nested(_Stat, allow_none=True)


def peer_app(database_url: str) -> Flask:
    app = Flask("peer")
    engine = sa.create_engine(database_url, connect_args={"timeout": 30})
    sa.event.listen(engine, "connect", _wal)
    with open(f"{engine.url.database}.init-lock", "w") as lock:  # gunicorn's workers start together
        fcntl.flock(lock, fcntl.LOCK_EX)
        _Base.metadata.create_all(engine)
    sessions = orm.sessionmaker(engine, expire_on_commit=False)
    task_status = Namespace().signal("task-status")
    schema = _TaskCallback()

    @app.post("/api/v3/taskCallback")
    def task_callback() -> Response:
        headers = request.headers
        needed = ("requestID", "uuid", "createTs", "sign")
        if not all(headers.get(name) for name in needed):
            return envelope(6001, "missing header", 401)
        request_id, account, create_ts, sign = (headers[name] for name in needed)
        if not create_ts.isdigit() or abs(time.time() - int(create_ts)) > 300:
            return envelope(6, "bad timestamp", 401)
        if not hmac.compare_digest(account, UUID):
            return envelope(6002, "unknown account", 401)
        body = request.get_data()
        signed = (
            f"{SECRET}&body=".encode()
            + body
            + f"&createTs={create_ts}&requestID={request_id}&uuid={account}".encode()
        )
        expected = hashlib.md5(signed).hexdigest().upper()  # noqa: S324 - the vendor's scheme
        if not hmac.compare_digest(expected, sign.upper()):
            return envelope(6, "bad signature", 401)
        try:
            payload = schema.load(json.loads(body))
        except (ValueError, ValidationError):
            return envelope(4, "bad payload", 400)
        with sessions.begin() as session:
            if session.scalar(sa.select(PeerDelivery.id).filter_by(request_id=request_id)):
                return envelope(0, "duplicate")
            session.add(
                PeerDelivery(
                    request_id=request_id, body=body, outcome="pending", received_at=time.time()
                )
            )
            task = session.get(PeerTask, payload["taskID"], with_for_update=True)
            previous = None if task is None else task.status
            if task is None:
                task = PeerTask(task_id=payload["taskID"], status=0, request_ts=0, stats="")
                session.add(task)
            stale = int(create_ts) < task.request_ts
            if not stale:
                task.status = payload["taskStatus"]
                task.request_ts = int(create_ts)
                task.stats = json.dumps(payload.get("taskStat"))
        if not stale:
            task_status.send(app, payload=payload, previous=previous)
        with sessions.begin() as session:
            session.execute(
                sa.update(PeerDelivery)
                .where(PeerDelivery.request_id == request_id)
                .values(outcome="processed")
            )
        return envelope(0, "success")

    return app


def _wal(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def callbot_app(database_url: str, **config: Any) -> Flask:
    app = Flask("callbot")
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET, CALLBOT_UUID=UUID, CALLBOT_DATABASE_URL=database_url, **config
    )
    app.register_blueprint(create_blueprint())
    return app


def create_app() -> Flask:
    name = os.environ["BENCH_APP"]
    if name == "floor":
        return floor_app()
    url = os.environ["BENCH_DATABASE_URL"]
    if name == "limit":
        from limit import limit_app

        return limit_app(url, SECRET, UUID)
    return peer_app(url) if name == "peer" else callbot_app(url)


def task_body(rng: random.Random, tasks: int, create_ts: int, first: int = 0) -> bytes:
    """A signed-to-be task callback for one of ``tasks`` tasks, numbered from ``first``."""
    payload = task_payload(
        userTaskID="campaign",
        taskID=f"task-{first + rng.randrange(tasks)}",
        sceneID="scene",
        taskStatus=rng.choice([2, 2, 2, 5]),
        createTs=create_ts - 3600,
    )
    return json.dumps(payload).encode()


def order_body(intents: int) -> bytes:
    payload = {
        "callbackType": 2,
        "orderID": f"order-{uuid.uuid4().hex[:8]}",
        "taskID": "task-1",
        "userPhone": "8613800138000",
        "finish": True,
        "callInfoDetail": {
            "callID": "call-1",
            "callStatus": 1,
            "callStartTs": 1_800_000_000,
            "callEndTs": 1_800_000_060,
            "callDuration": 60,
            "intents": [
                {
                    "intentID": f"i{n}",
                    "intentTag": f"tag{n}",
                    "intentName": "意向",
                    "intentLevel": 1,
                }
                for n in range(intents)
            ],
        },
    }
    return json.dumps(payload).encode()


def signed(body: bytes, create_ts: int) -> dict[str, str]:
    return sign_headers(body, secret_key=SECRET, uuid=UUID, create_ts=create_ts)
