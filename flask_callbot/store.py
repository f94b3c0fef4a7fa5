"""The durable record: every authentic delivery, and each task's last applied state.

SQLAlchemy Core, the same code for SQLite (one host) and PostgreSQL (shared by many). A delivery
is claimed by inserting its requestID under a unique constraint in the same transaction that
locks the task's row, decides stale or transition, and updates the task, so concurrent workers
never process a requestID twice and a task never moves backwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from .errors import ConfigurationError, DeliveryInProgress, RequestIdReused, StoreUnavailable
from .events import (
    CallbackKind,
    CallEvent,
    Event,
    Intent,
    OrderEvent,
    TaskEvent,
    TaskStatus,
    Transition,
    coerce_status,
)

#: Bumped whenever the tables change; each bump adds its step to ``_MIGRATIONS``.
SCHEMA_VERSION = 2

metadata = sa.MetaData()
_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

deliveries = sa.Table(
    "callbot_deliveries",
    metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, unique=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("task_id", sa.String(255), index=True),
    sa.Column("order_id", sa.String(255)),
    sa.Column("request_ts", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("headers", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("body_sha256", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("enqueued_at", sa.DateTime(timezone=True)),  # schema 2: Celery dispatch
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Column("previous_status", sa.BigInteger),
    sa.Column("status", sa.BigInteger),
    sa.Column("applied", sa.Boolean),
    sa.Column("changed", sa.Boolean),
)

tasks = sa.Table(
    "callbot_tasks",
    metadata,
    sa.Column("task_id", sa.String(255), primary_key=True),
    sa.Column("user_task_id", sa.String(255)),
    sa.Column("scene_id", sa.String(255)),
    sa.Column("status", sa.BigInteger),
    sa.Column("status_request_ts", sa.BigInteger),
    sa.Column("last_request_id", sa.String(128)),
    sa.Column("create_ts", sa.BigInteger),
    sa.Column("answer_order_count", sa.BigInteger),
    sa.Column("finish_order_count", sa.BigInteger),
    sa.Column("total_order_count", sa.BigInteger),
    sa.Column("finish_rate", sa.Float),
    sa.Column("total_answer_call", sa.BigInteger),
    sa.Column("total_call", sa.BigInteger),
    sa.Column("answer_rate", sa.Float),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

orders = sa.Table(
    "callbot_orders",
    metadata,
    sa.Column("task_id", sa.String(255), primary_key=True),
    sa.Column("order_id", sa.String(255), primary_key=True),
    sa.Column("user_task_id", sa.String(255)),
    sa.Column("scene_id", sa.String(255)),
    sa.Column("user_phone", sa.String(64)),
    sa.Column("user_name", sa.Text),
    sa.Column("finish", sa.Boolean),
    sa.Column("other", sa.Text),
    sa.Column("last_call_id", sa.String(255)),
    sa.Column("last_call_status", sa.BigInteger),
    sa.Column("last_call_start_ts", sa.BigInteger),
    sa.Column("last_call_end_ts", sa.BigInteger),
    sa.Column("last_call_duration", sa.BigInteger),
    sa.Column("hangup_cause", sa.String(255)),
    sa.Column("intents", sa.Text),
    # The applied data's version: (call start, request time, kind rank); newer data wins.
    sa.Column("version_request_ts", sa.BigInteger),
    sa.Column("version_kind_rank", sa.Integer),
    sa.Column("last_kind", sa.String(8)),
    sa.Column("last_request_id", sa.String(128)),
    sa.Column("callbacks", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

schema_version = sa.Table(
    "callbot_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def _add_enqueued_at(conn: Connection) -> None:
    column_type = deliveries.c.enqueued_at.type.compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE callbot_deliveries ADD COLUMN enqueued_at {column_type}"))


#: ``version -> step`` that upgrades tables at ``version - 1`` to ``version``, run in order by
#: :meth:`Store.create_schema` under the schema lock. Fresh databases are created at the current
#: version and skip them.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _add_enqueued_at}

#: An order callback carries the order's final word on a call; a call callback ranks below it.
_KIND_RANK = {CallbackKind.CALL: 0, CallbackKind.ORDER: 1}

_STAT_COLUMNS = (
    "answer_order_count",
    "finish_order_count",
    "total_order_count",
    "finish_rate",
    "total_answer_call",
    "total_call",
    "answer_rate",
)


class Outcome(StrEnum):
    """A recorded delivery's processing state."""

    QUEUED = "queued"  # recorded, waiting for a Celery worker (enqueued once enqueued_at is set)
    PENDING = "pending"  # a worker (a request, or a Celery worker) is sending its signals
    PROCESSED = "processed"
    FAILED = "failed"


class ClaimResult(StrEnum):
    NEW = "new"  # first sighting: recorded and, for a task, applied
    RETRY = "retry"  # a failed (or abandoned) delivery taken up again: re-send its signals
    DUPLICATE = "duplicate"  # already processed: acknowledge, no signals
    IN_PROGRESS = "in_progress"  # another worker holds it right now
    QUEUED = "queued"  # Celery mode: already durably queued (or being processed): acknowledge


@dataclass(frozen=True, slots=True)
class Claim:
    result: ClaimResult
    transition: Transition | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewDelivery:
    """An authentic, valid delivery about to be recorded."""

    request_id: str
    kind: CallbackKind
    request_ts: int
    headers: Mapping[str, str]
    body: bytes
    event: Event


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredDelivery:
    request_id: str
    kind: CallbackKind
    task_id: str | None
    order_id: str | None
    request_ts: int
    received_at: datetime
    headers: dict[str, str]
    body: bytes
    outcome: Outcome
    attempts: int
    enqueued_at: datetime | None
    finished_at: datetime | None
    error: str | None
    transition: Transition | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskState:
    """A tracked task as last applied."""

    task_id: str
    user_task_id: str | None
    scene_id: str | None
    status: TaskStatus | int | None
    status_request_ts: int | None
    last_request_id: str | None
    create_ts: int | None
    stats: dict[str, int | float | None]
    updated_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderState:
    """A tracked order (one phone number) as of its newest callback."""

    task_id: str
    order_id: str
    user_task_id: str | None
    scene_id: str | None
    user_phone: str | None
    user_name: str | None
    finish: bool | None
    other: str | None
    last_call_id: str | None
    last_call_status: int | None
    last_call_start_ts: int | None
    last_call_end_ts: int | None
    last_call_duration: int | None
    hangup_cause: str | None
    intents: tuple[Intent, ...]
    last_kind: CallbackKind
    last_request_id: str
    #: How many authentic callbacks (order and call) were recorded for this order.
    callbacks: int
    updated_at: datetime | None


class Store:
    """One per app: owns the engine; tables are created on first use."""

    def __init__(
        self,
        url: str,
        engine_options: Mapping[str, Any] | None = None,
        *,
        sqlite_synchronous: str = "NORMAL",
    ) -> None:
        self.engine = create_engine(url, engine_options or {}, sqlite_synchronous)
        self._write_lock = _writer_queue(self.engine)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        # A server forking after the store was made (gunicorn --preload) must not share
        # connections with its parent: children drop the inherited pool without closing it.
        engine_ref = weakref.ref(self.engine)
        os.register_at_fork(after_in_child=lambda: _drop_pool(engine_ref))

    def record(
        self, delivery: NewDelivery, *, now: float, lease: int, queue: bool = False
    ) -> Claim:
        """Claim the requestID and apply the delivery, in one transaction.

        Inline (``queue=False``) the new row is PENDING, held by the caller; with ``queue=True``
        (Celery) it is QUEUED, for a worker, and the caller enqueues it. A requestID seen before
        is answered from its stored row: processed → DUPLICATE; failed, or pending for longer
        than ``lease`` seconds (its worker died) → RETRY with the stored transition (taken
        inline, or back to QUEUED to enqueue again); pending → IN_PROGRESS inline, QUEUED with
        Celery (it is accepted). A different body under a known requestID is refused.
        """
        at = _utc(now)
        body_sha256 = hashlib.sha256(delivery.body).hexdigest()
        event = delivery.event
        with self._transaction() as conn:
            transition = None
            sql = _statements(conn.dialect.name)
            if isinstance(event, TaskEvent):
                task_row = _lock_row(conn, sql.lock_task, sql.blank_task, task_id=event.task_id)
                transition = _decide(task_row, event)
                applied = transition.applied
            else:
                key = {"task_id": event.task_id, "order_id": event.order_id}
                order_row = _lock_row(conn, sql.lock_order, sql.blank_order, **key)
                applied = _order_is_newer(order_row, delivery, event)
            inserted = conn.execute(
                sql.insert_delivery,
                {
                    "request_id": delivery.request_id,
                    "kind": delivery.kind.value,
                    "task_id": event.task_id,
                    "order_id": None if isinstance(event, TaskEvent) else event.order_id,
                    "request_ts": delivery.request_ts,
                    "received_at": at,
                    "headers": json.dumps(dict(delivery.headers), sort_keys=True),
                    "body": delivery.body,
                    "body_sha256": body_sha256,
                    "outcome": (Outcome.QUEUED if queue else Outcome.PENDING).value,
                    "attempts": 0 if queue else 1,
                    "claimed_at": at,
                    "applied": applied,
                    **_transition_columns(transition),
                },
            ).first()
            if not inserted:
                return self._reclaim(conn, delivery.request_id, body_sha256, at, lease, queue)
            if isinstance(event, TaskEvent):
                if applied:
                    _apply_task(conn, sql, event, at)
            else:
                _apply_order(conn, sql, delivery, event, applied=applied, at=at)
            return Claim(ClaimResult.NEW, transition)

    def finish(self, request_id: str, *, now: float, error: str | None = None) -> None:
        """Mark a claimed delivery processed, or failed with ``error``."""
        with self._transaction() as conn:
            conn.execute(
                _statements(conn.dialect.name).finish_delivery,
                {
                    "k_request_id": request_id,
                    "outcome": (Outcome.FAILED if error else Outcome.PROCESSED).value,
                    "finished_at": _utc(now),
                    "error": error,
                },
            )

    def get_delivery(self, request_id: str) -> StoredDelivery | None:
        with self._reading() as conn:
            row = conn.execute(
                deliveries.select().where(deliveries.c.request_id == request_id)
            ).first()
        return None if row is None else _stored_delivery(row)

    def claim_for_replay(self, request_id: str, *, now: float, lease: int) -> StoredDelivery:
        """Take a stored delivery for a replay, as a redelivery would: never one in progress."""
        at = _utc(now)
        with self._transaction() as conn:
            claimed = conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.request_id == request_id,
                    sa.or_(
                        deliveries.c.outcome != Outcome.PENDING.value,
                        deliveries.c.claimed_at <= _utc(now - lease),
                    ),
                )
                .values(**_claimed(at))
                .returning(*deliveries.c)
            ).first()
            if claimed is not None:
                return _stored_delivery(claimed)
            exists = conn.execute(
                sa.select(deliveries.c.id).where(deliveries.c.request_id == request_id)
            ).first()
        if exists is None:
            raise LookupError(f"no delivery with requestID {request_id}")
        raise DeliveryInProgress(f"requestID {request_id} is being processed right now")

    def mark_enqueued(self, request_id: str, *, now: float) -> None:
        """Record that a delivery's message reached the broker (its worker may be done already)."""
        with self._transaction() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.request_id == request_id, deliveries.c.enqueued_at.is_(None))
                .values(enqueued_at=_utc(now))
            )

    def claim_queued(self, request_id: str, *, now: float, lease: int) -> StoredDelivery | None:
        """A Celery worker takes a queued delivery (or one whose worker died); ``None`` if another
        worker holds it or it is already done, so a message delivered twice is processed once."""
        at = _utc(now)
        with self._transaction() as conn:
            claimed = conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.request_id == request_id,
                    sa.or_(
                        deliveries.c.outcome == Outcome.QUEUED.value,
                        sa.and_(
                            deliveries.c.outcome == Outcome.PENDING.value,
                            deliveries.c.claimed_at <= _utc(now - lease),
                        ),
                    ),
                )
                .values(**_claimed(at))
                .returning(*deliveries.c)
            ).first()
        return None if claimed is None else _stored_delivery(claimed)

    def requeue(self, request_id: str, *, now: float, error: str) -> None:
        """Put a delivery whose receivers raised back in the queue for a later retry."""
        at = _utc(now)
        with self._transaction() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.request_id == request_id)
                .values(outcome=Outcome.QUEUED.value, error=error, claimed_at=at, enqueued_at=at)
            )

    def sweepable(
        self, *, now: float, unqueued_after: int, lease: int, stalled_after: int
    ) -> list[str]:
        """RequestIDs a sweep must enqueue (again), oldest first.

        Recorded but never enqueued for ``unqueued_after`` seconds (the process died, or the
        broker was down, between the two); held by a worker past the ``lease`` (it died); queued
        for ``stalled_after`` seconds without being taken (the message was lost).
        """
        query = (
            sa.select(deliveries.c.request_id)
            .where(
                sa.or_(
                    sa.and_(
                        deliveries.c.outcome == Outcome.QUEUED.value,
                        deliveries.c.enqueued_at.is_(None),
                        deliveries.c.claimed_at <= _utc(now - unqueued_after),
                    ),
                    sa.and_(
                        deliveries.c.outcome == Outcome.PENDING.value,
                        deliveries.c.claimed_at <= _utc(now - lease),
                    ),
                    sa.and_(
                        deliveries.c.outcome == Outcome.QUEUED.value,
                        deliveries.c.enqueued_at <= _utc(now - stalled_after),
                    ),
                )
            )
            .order_by(deliveries.c.id)
        )
        with self._reading() as conn:
            return list(conn.execute(query).scalars())

    def list_deliveries(
        self,
        *,
        outcome: Outcome | None = None,
        task_id: str | None = None,
        kind: CallbackKind | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 50,
    ) -> list[StoredDelivery]:
        """Recorded deliveries, newest first, filtered by any of the arguments."""
        query = deliveries.select().order_by(deliveries.c.id.desc()).limit(limit)
        if outcome is not None:
            query = query.where(deliveries.c.outcome == outcome.value)
        if task_id is not None:
            query = query.where(deliveries.c.task_id == task_id)
        if kind is not None:
            query = query.where(deliveries.c.kind == kind.value)
        if since is not None:
            query = query.where(deliveries.c.received_at >= _in_utc(since))
        if until is not None:
            query = query.where(deliveries.c.received_at < _in_utc(until))
        with self._reading() as conn:
            return [_stored_delivery(row) for row in conn.execute(query)]

    def failed_request_ids(self) -> list[str]:
        """The requestIDs of failed deliveries, oldest first (the order to replay them in)."""
        with self._reading() as conn:
            return list(
                conn.execute(
                    sa.select(deliveries.c.request_id)
                    .where(deliveries.c.outcome == Outcome.FAILED.value)
                    .order_by(deliveries.c.id)
                ).scalars()
            )

    def count_failed(self) -> int:
        """How many deliveries are failed now (the ``callbot_failed_deliveries`` gauge)."""
        with self._reading() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(deliveries)
                    .where(deliveries.c.outcome == Outcome.FAILED.value)
                ).scalar_one()
            )

    def list_tasks(self, *, limit: int | None = None) -> list[TaskState]:
        """The tracked tasks, most recently updated first."""
        query = (
            tasks.select()
            .where(tasks.c.status.is_not(None))
            .order_by(tasks.c.updated_at.desc(), tasks.c.task_id)
            .limit(limit)
        )
        with self._reading() as conn:
            return [_task_state(row) for row in conn.execute(query)]

    def prune(
        self, *, before: datetime, include_failed: bool = False, batch_size: int = 1000
    ) -> Iterator[int]:
        """Delete deliveries received before ``before``, a batch per transaction.

        Yields the number deleted by each batch (for progress). Deliveries in progress are always
        kept, failed ones unless ``include_failed``: they are what ``replay --failed`` works on.
        """
        batch = (
            sa.select(deliveries.c.id).where(_prunable(before, include_failed)).limit(batch_size)
        )
        while True:
            with self._transaction() as conn:
                ids = list(conn.execute(batch).scalars())
                if ids:
                    conn.execute(deliveries.delete().where(deliveries.c.id.in_(ids)))
            if not ids:
                return
            yield len(ids)

    def count_prunable(self, *, before: datetime, include_failed: bool = False) -> int:
        """How many deliveries :meth:`prune` with the same arguments would delete."""
        query = sa.select(sa.func.count()).where(_prunable(before, include_failed))
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def get_task(self, task_id: str) -> TaskState | None:
        with self._reading() as conn:
            row = conn.execute(tasks.select().where(tasks.c.task_id == task_id)).first()
        return None if row is None or row.status is None else _task_state(row)

    def get_order(self, task_id: str, order_id: str) -> OrderState | None:
        """What the newest order or call callback said about one order of one task."""
        with self._reading() as conn:
            row = conn.execute(
                orders.select().where(orders.c.task_id == task_id, orders.c.order_id == order_id)
            ).first()
        return None if row is None or row.last_request_id is None else _order_state(row)

    def create_schema(self) -> None:
        """Create or upgrade the tables to :data:`SCHEMA_VERSION` (idempotent, safe across hosts).

        One process at a time does it (a PostgreSQL advisory lock; SQLite's write lock); the
        version is recorded in ``callbot_schema_version``. A database written by a newer
        flask_callbot is refused rather than misread.
        """
        with self._translate_errors(), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            metadata.create_all(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            if current is None:  # tables just created at the current version
                conn.execute(
                    schema_version.insert().values(
                        version=SCHEMA_VERSION, applied_at=datetime.now(UTC)
                    )
                )
                current = SCHEMA_VERSION
            elif current > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the callbot tables are at schema version {current}, newer than this "
                    f"flask_callbot ({SCHEMA_VERSION}): upgrade the package"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                if version in _MIGRATIONS:
                    _MIGRATIONS[version](conn)
                conn.execute(
                    schema_version.insert().values(version=version, applied_at=datetime.now(UTC))
                )
        self._schema_ready = True

    def get_schema_version(self) -> int | None:
        with self._reading() as conn:
            return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()

    def dispose(self) -> None:
        self.engine.dispose()

    def _reclaim(
        self,
        conn: Connection,
        request_id: str,
        body_sha256: str,
        at: datetime,
        lease: int,
        queue: bool,
    ) -> Claim:
        row = conn.execute(
            sa.select(
                deliveries.c.body_sha256,
                deliveries.c.outcome,
                deliveries.c.claimed_at,
                deliveries.c.enqueued_at,
                deliveries.c.previous_status,
                deliveries.c.status,
                deliveries.c.applied,
                deliveries.c.changed,
            ).where(deliveries.c.request_id == request_id)
        ).one()
        if row.body_sha256 != body_sha256:
            raise RequestIdReused(f"requestID {request_id} was already used for another body")
        if row.outcome == Outcome.PROCESSED:
            return Claim(ClaimResult.DUPLICATE)
        if queue and row.outcome == Outcome.QUEUED and row.enqueued_at is not None:
            return Claim(ClaimResult.QUEUED)
        abandoned = row.outcome == Outcome.PENDING and _aware(row.claimed_at).timestamp() <= (
            at.timestamp() - lease
        )
        # Take it up: a failed or abandoned delivery; a queued one never enqueued (queue mode),
        # or any queued one when processing inline (nobody else will).
        if row.outcome in (Outcome.FAILED, Outcome.QUEUED) or abandoned:
            taken = conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.request_id == request_id,
                    deliveries.c.outcome == row.outcome,
                    deliveries.c.claimed_at == row.claimed_at,
                )
                .values(**_claimed(at, queue=queue), enqueued_at=None)
            ).rowcount
            if taken:
                return Claim(ClaimResult.RETRY, _transition(row))
        return Claim(ClaimResult.QUEUED if queue else ClaimResult.IN_PROGRESS)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A writing transaction: on SQLite, the writers' turn and BEGIN IMMEDIATE."""
        self._ensure_schema()
        with self._translate_errors(), self._write_lock(), self.engine.begin() as conn:
            yield conn

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready:
                    self.create_schema()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite a plain (deferred) BEGIN without the writers' turn,
        so the dashboard, the CLI and metrics scrapes never hold up deliveries (WAL readers see
        a consistent snapshot and block no one)."""
        self._ensure_schema()
        with (
            self._translate_errors(),
            self.engine.connect().execution_options(**{_READ_ONLY: True}) as conn,
            conn.begin(),
        ):
            yield conn

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            message = f"the callbot store is unavailable ({type(exc).__name__})"
            raise StoreUnavailable(message) from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable("the callbot store connection was lost") from exc
            raise


#: The execution option that marks a connection's transactions read-only (see Store._reading).
_READ_ONLY = "callbot_read_only"
_LOCK_KEY = 0x43414C4C424F54  # "CALLBOT": the advisory lock that serialises schema changes


def _writer_queue(engine: Engine) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """SQLite file stores: processes take turns at writing through an OS file lock.

    SQLite's own busy handler polls with sleeps of 1 to 100 ms while another process writes;
    under load that wastes most of the time. A blocking ``flock`` on a side file hands the turn
    over the moment it is released (and the kernel frees it if a process dies).
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return contextlib.nullcontext
    path = f"{database}.writer-lock"
    local = threading.local()

    @contextlib.contextmanager
    def take_turn() -> Iterator[None]:
        fd = getattr(local, "fd", None)
        if fd is None or getattr(local, "pid", None) != os.getpid():
            fd = local.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            local.pid = os.getpid()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    return take_turn


def _drop_pool(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.dispose(close=False)


def create_engine(
    url: str, options: Mapping[str, Any], sqlite_synchronous: str = "NORMAL"
) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL, a busy timeout and write-locking BEGINs."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(f"CALLBOT_DATABASE_URL is not an SQLAlchemy URL: {exc}") from exc
    # hide_parameters: a database error's message never carries a statement's values (a body,
    # a phone number) into a log or an error report.
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs = {
            "connect_args": {"timeout": 30, "check_same_thread": False},
            "hide_parameters": True,
        }
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
    kwargs.update(options)
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa_exc.ArgumentError, ImportError, TypeError) as exc:
        hint = " (install flask-callbot[postgres])" if "psycopg" in str(exc) else ""
        raise ConfigurationError(
            f"CALLBOT_DATABASE_URL / CALLBOT_ENGINE_OPTIONS: cannot create the engine: {exc}{hint}"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:")
        _tune_sqlite(engine, in_memory=in_memory, synchronous=sqlite_synchronous)
    return engine


def _tune_sqlite(engine: Engine, *, in_memory: bool, synchronous: str) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below emit BEGIN itself
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: two read-then-write transactions never deadlock.
        # A read-only transaction (Store._reading) begins deferred and never takes it.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@dataclass(frozen=True, slots=True)
class _Statements:
    """The hot path's statements, built once per dialect with bind parameters, so a request pays
    for executing them, not for constructing and cache-keying new ones."""

    lock_task: Any
    blank_task: Any
    lock_order: Any
    blank_order: Any
    insert_delivery: Any
    apply_task: Any
    apply_order: Any
    finish_delivery: Any


@functools.cache
def _statements(dialect_name: str) -> _Statements:
    dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    task_key = tasks.c.task_id == sa.bindparam("task_id")
    order_key = sa.and_(
        orders.c.task_id == sa.bindparam("task_id"), orders.c.order_id == sa.bindparam("order_id")
    )
    return _Statements(
        lock_task=tasks.select().where(task_key).with_for_update(),
        blank_task=dialect_insert(tasks).on_conflict_do_nothing(),
        lock_order=orders.select().where(order_key).with_for_update(),
        blank_order=dialect_insert(orders).on_conflict_do_nothing(),
        insert_delivery=dialect_insert(deliveries)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(deliveries.c.id),  # rowcount is not reliable here across drivers
        apply_task=tasks.update().where(tasks.c.task_id == sa.bindparam("k_task_id")),
        apply_order=orders.update()
        .where(
            orders.c.task_id == sa.bindparam("k_task_id"),
            orders.c.order_id == sa.bindparam("k_order_id"),
        )
        .values(callbacks=orders.c.callbacks + 1),
        finish_delivery=deliveries.update().where(
            deliveries.c.request_id == sa.bindparam("k_request_id")
        ),
    )


def _lock_row(conn: Connection, lock: Any, blank: Any, **key: str) -> sa.Row[Any]:
    """The row with this primary key, locked for the transaction; a blank one on first sighting.

    Inserting the blank row under ON CONFLICT DO NOTHING first means two workers seeing a new task
    at once still queue on one row lock instead of both deciding "first sighting".
    """
    row = conn.execute(lock, key).first()
    if row is None:
        conn.execute(blank, key)
        row = conn.execute(lock, key).one()
    return row


def _prunable(before: datetime, include_failed: bool) -> sa.ColumnElement[bool]:
    kept = [Outcome.PENDING.value] + ([] if include_failed else [Outcome.FAILED.value])
    return sa.and_(deliveries.c.received_at < _in_utc(before), deliveries.c.outcome.not_in(kept))


def _decide(row: sa.Row[Any], event: TaskEvent) -> Transition:
    """Stale if older than the last applied request time; otherwise applied, changed or not."""
    previous = coerce_status(row.status)
    if row.status_request_ts is not None and event.request_ts < row.status_request_ts:
        return Transition(previous=previous, status=event.status, applied=False, changed=False)
    return Transition(
        previous=previous,
        status=event.status,
        applied=True,
        changed=previous is None or int(previous) != int(event.status),
    )


def _apply_task(conn: Connection, sql: _Statements, event: TaskEvent, at: datetime) -> None:
    stats = {name: getattr(event.stat, name) if event.stat else None for name in _STAT_COLUMNS}
    conn.execute(
        sql.apply_task,
        {
            "k_task_id": event.task_id,
            "user_task_id": event.user_task_id,
            "scene_id": event.scene_id,
            "status": int(event.status),
            "status_request_ts": event.request_ts,
            "last_request_id": event.request_id,
            "create_ts": event.create_ts,
            "updated_at": at,
            **stats,
        },
    )


def _order_version(call_start_ts: int | None, request_ts: int, rank: int) -> tuple[int, int, int]:
    return (call_start_ts or 0, request_ts, rank)


def _order_is_newer(row: sa.Row[Any], delivery: NewDelivery, event: OrderEvent | CallEvent) -> bool:
    """Whether this order/call delivery is at least as new as what the order row holds.

    Newer means a later call (by its start time), then a later request, then an order callback
    over a call callback for the same call, so a late call callback never overwrites the order.
    """
    if row.last_request_id is None:
        return True
    stored = _order_version(row.last_call_start_ts, row.version_request_ts, row.version_kind_rank)
    incoming = _order_version(
        event.call.call_start_ts, delivery.request_ts, _KIND_RANK[delivery.kind]
    )
    return incoming >= stored


def _apply_order(
    conn: Connection,
    sql: _Statements,
    delivery: NewDelivery,
    event: OrderEvent | CallEvent,
    *,
    applied: bool,
    at: datetime,
) -> None:
    values: dict[str, Any] = {
        "k_task_id": event.task_id,
        "k_order_id": event.order_id,
        "updated_at": at,
    }
    if applied:
        call = event.call
        values.update(
            user_task_id=event.user_task_id,
            scene_id=event.scene_id,
            user_phone=event.user_phone,
            user_name=event.user_name,
            finish=event.finish,
            other=event.other,
            last_call_id=call.call_id,
            last_call_status=call.call_status,
            last_call_start_ts=call.call_start_ts,
            last_call_end_ts=call.call_end_ts,
            last_call_duration=call.call_duration,
            hangup_cause=call.hangup_cause,
            intents=json.dumps([_intent_row(intent) for intent in call.intents]),
            version_request_ts=delivery.request_ts,
            version_kind_rank=_KIND_RANK[delivery.kind],
            last_kind=delivery.kind.value,
            last_request_id=delivery.request_id,
        )
    conn.execute(sql.apply_order, values)


def _claimed(at: datetime, *, queue: bool = False) -> dict[str, Any]:
    """The columns of a delivery taken up again: held by a worker from ``at`` (one attempt more),
    or, with ``queue``, back in the queue for a Celery worker (which counts the attempt)."""
    return {
        "outcome": (Outcome.QUEUED if queue else Outcome.PENDING).value,
        "attempts": deliveries.c.attempts + (0 if queue else 1),
        "claimed_at": at,
        "error": None,
        "finished_at": None,
    }


def _intent_row(intent: Intent) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies every value, a third of an order callback's cost.
    return {
        "intent_id": intent.intent_id,
        "intent_tag": intent.intent_tag,
        "intent_name": intent.intent_name,
        "intent_level": intent.intent_level,
    }


def _transition_columns(transition: Transition | None) -> dict[str, Any]:
    if transition is None:  # the same keys every time: one compiled INSERT serves all
        return {"previous_status": None, "status": None, "changed": None}
    return {
        "previous_status": None if transition.previous is None else int(transition.previous),
        "status": int(transition.status),
        "changed": transition.changed,
    }


def _transition(row: Any) -> Transition | None:
    if row.status is None:
        return None
    return Transition(
        previous=coerce_status(row.previous_status),
        status=coerce_status(row.status) or 0,
        applied=bool(row.applied),
        changed=bool(row.changed),
    )


def _stored_delivery(row: Any) -> StoredDelivery:
    return StoredDelivery(
        request_id=row.request_id,
        kind=CallbackKind(row.kind),
        task_id=row.task_id,
        order_id=row.order_id,
        request_ts=row.request_ts,
        received_at=_aware(row.received_at),
        headers=json.loads(row.headers),
        body=bytes(row.body),
        outcome=Outcome(row.outcome),
        attempts=row.attempts,
        enqueued_at=None if row.enqueued_at is None else _aware(row.enqueued_at),
        finished_at=None if row.finished_at is None else _aware(row.finished_at),
        error=row.error,
        transition=_transition(row),
    )


def _task_state(row: Any) -> TaskState:
    return TaskState(
        task_id=row.task_id,
        user_task_id=row.user_task_id,
        scene_id=row.scene_id,
        status=coerce_status(row.status),
        status_request_ts=row.status_request_ts,
        last_request_id=row.last_request_id,
        create_ts=row.create_ts,
        stats={name: getattr(row, name) for name in _STAT_COLUMNS},
        updated_at=None if row.updated_at is None else _aware(row.updated_at),
    )


def _order_state(row: Any) -> OrderState:
    return OrderState(
        task_id=row.task_id,
        order_id=row.order_id,
        user_task_id=row.user_task_id,
        scene_id=row.scene_id,
        user_phone=row.user_phone,
        user_name=row.user_name,
        finish=row.finish,
        other=row.other,
        last_call_id=row.last_call_id,
        last_call_status=row.last_call_status,
        last_call_start_ts=row.last_call_start_ts,
        last_call_end_ts=row.last_call_end_ts,
        last_call_duration=row.last_call_duration,
        hangup_cause=row.hangup_cause,
        intents=tuple(Intent(**item) for item in json.loads(row.intents or "[]")),
        last_kind=CallbackKind(row.last_kind),
        last_request_id=row.last_request_id,
        callbacks=row.callbacks,
        updated_at=None if row.updated_at is None else _aware(row.updated_at),
    )


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _in_utc(value: datetime) -> datetime:
    """Compare in UTC: SQLite stores datetimes as naive UTC text and drops a bound value's zone."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
