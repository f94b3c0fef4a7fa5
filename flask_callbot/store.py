"""The durable record: every authentic delivery, and each task's last applied state.

SQLAlchemy Core, the same code for SQLite (one host) and PostgreSQL (shared by many). A delivery
is claimed by inserting its requestID under a unique constraint in the same transaction that
locks the task's row, decides stale or transition, and updates the task, so concurrent workers
never process a requestID twice and a task never moves backwards.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
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

from .errors import ConfigurationError, RequestIdReused, StoreUnavailable
from .events import CallbackKind, TaskEvent, TaskStatus, Transition, coerce_status

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

    PENDING = "pending"  # recorded; its signals are being (or are queued to be) sent
    PROCESSED = "processed"
    FAILED = "failed"


class ClaimResult(StrEnum):
    NEW = "new"  # first sighting: recorded and, for a task, applied
    RETRY = "retry"  # a failed (or abandoned) delivery taken up again: re-send its signals
    DUPLICATE = "duplicate"  # already processed: acknowledge, no signals
    IN_PROGRESS = "in_progress"  # another worker holds it right now


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
    event: TaskEvent


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


class Store:
    """One per app: owns the engine; tables are created on first use."""

    def __init__(self, url: str, engine_options: Mapping[str, Any] | None = None) -> None:
        self.engine = create_engine(url, engine_options or {})
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def record(self, delivery: NewDelivery, *, now: float, lease: int) -> Claim:
        """Claim the requestID and apply the delivery, in one transaction.

        A requestID seen before is answered from its stored row: processed → DUPLICATE; failed,
        or pending for longer than ``lease`` seconds (its worker died) → RETRY with the stored
        transition; pending → IN_PROGRESS. A different body under a known requestID is refused.
        """
        at = _utc(now)
        body_sha256 = hashlib.sha256(delivery.body).hexdigest()
        with self._transaction() as conn:
            task_event = delivery.event if isinstance(delivery.event, TaskEvent) else None
            transition = None
            if task_event is not None:
                transition = _decide(self._lock_task(conn, task_event.task_id), task_event)
            inserted = conn.execute(
                _insert(conn, deliveries)
                .values(
                    request_id=delivery.request_id,
                    kind=delivery.kind.value,
                    task_id=delivery.event.task_id,
                    order_id=None,
                    request_ts=delivery.request_ts,
                    received_at=at,
                    headers=json.dumps(dict(delivery.headers), sort_keys=True),
                    body=delivery.body,
                    body_sha256=body_sha256,
                    outcome=Outcome.PENDING.value,
                    attempts=1,
                    claimed_at=at,
                    **_transition_columns(transition),
                )
                .on_conflict_do_nothing(index_elements=["request_id"])
            ).rowcount
            if not inserted:
                return self._reclaim(conn, delivery.request_id, body_sha256, at, lease)
            if task_event is not None and transition is not None and transition.applied:
                _apply_task(conn, task_event, at)
            return Claim(ClaimResult.NEW, transition)

    def finish(self, request_id: str, *, now: float, error: str | None = None) -> None:
        """Mark a claimed delivery processed, or failed with ``error``."""
        with self._transaction() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.request_id == request_id)
                .values(
                    outcome=(Outcome.FAILED if error else Outcome.PROCESSED).value,
                    finished_at=_utc(now),
                    error=error,
                )
            )

    def get_delivery(self, request_id: str) -> StoredDelivery | None:
        with self._transaction() as conn:
            row = conn.execute(
                deliveries.select().where(deliveries.c.request_id == request_id)
            ).first()
        return None if row is None else _stored_delivery(row)

    def get_task(self, task_id: str) -> TaskState | None:
        with self._transaction() as conn:
            row = conn.execute(tasks.select().where(tasks.c.task_id == task_id)).first()
        return None if row is None or row.status is None else _task_state(row)

    def create_schema(self) -> None:
        """Create the tables if they do not exist (idempotent, safe across processes)."""
        with self._translate_errors():
            metadata.create_all(self.engine, checkfirst=True)
        self._schema_ready = True

    def dispose(self) -> None:
        self.engine.dispose()

    def _reclaim(
        self, conn: Connection, request_id: str, body_sha256: str, at: datetime, lease: int
    ) -> Claim:
        row = conn.execute(
            sa.select(
                deliveries.c.body_sha256,
                deliveries.c.outcome,
                deliveries.c.claimed_at,
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
        abandoned = row.outcome == Outcome.PENDING and _aware(row.claimed_at).timestamp() <= (
            at.timestamp() - lease
        )
        if row.outcome == Outcome.FAILED or abandoned:
            taken = conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.request_id == request_id,
                    deliveries.c.outcome == row.outcome,
                    deliveries.c.claimed_at == row.claimed_at,
                )
                .values(
                    outcome=Outcome.PENDING.value,
                    attempts=deliveries.c.attempts + 1,
                    claimed_at=at,
                    error=None,
                    finished_at=None,
                )
            ).rowcount
            if taken:
                return Claim(ClaimResult.RETRY, _transition(row))
        return Claim(ClaimResult.IN_PROGRESS)

    def _lock_task(self, conn: Connection, task_id: str) -> sa.Row[Any]:
        """The task's row, locked for this transaction; a blank one is created on first sighting."""
        query = tasks.select().where(tasks.c.task_id == task_id).with_for_update()
        row = conn.execute(query).first()
        if row is None:
            conn.execute(_insert(conn, tasks).values(task_id=task_id).on_conflict_do_nothing())
            row = conn.execute(query).one()
        return row

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready:
                    self.create_schema()
        with self._translate_errors(), self.engine.begin() as conn:
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


def create_engine(url: str, options: Mapping[str, Any]) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL, a busy timeout and write-locking BEGINs."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(f"CALLBOT_DATABASE_URL is not an SQLAlchemy URL: {exc}") from exc
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs = {"connect_args": {"timeout": 30, "check_same_thread": False}}
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
        _tune_sqlite(engine, in_memory=parsed.database in (None, "", ":memory:"))
    return engine


def _tune_sqlite(engine: Engine, *, in_memory: bool) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below emit BEGIN itself
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: two read-then-write transactions never deadlock.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _insert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING (SQLite and PostgreSQL)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


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


def _apply_task(conn: Connection, event: TaskEvent, at: datetime) -> None:
    stats = {name: getattr(event.stat, name) if event.stat else None for name in _STAT_COLUMNS}
    conn.execute(
        tasks.update()
        .where(tasks.c.task_id == event.task_id)
        .values(
            user_task_id=event.user_task_id,
            scene_id=event.scene_id,
            status=int(event.status),
            status_request_ts=event.request_ts,
            last_request_id=event.request_id,
            create_ts=event.create_ts,
            updated_at=at,
            **stats,
        )
    )


def _transition_columns(transition: Transition | None) -> dict[str, Any]:
    if transition is None:
        return {}
    return {
        "previous_status": None if transition.previous is None else int(transition.previous),
        "status": int(transition.status),
        "applied": transition.applied,
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


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
