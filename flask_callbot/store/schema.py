"""The tables, their schema version, and the steps that create or upgrade them."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreUnavailable

#: Bumped whenever the tables change; each bump adds its step to ``MIGRATIONS``.
SCHEMA_VERSION = 3

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
    sa.Column("outcome", sa.String(16), nullable=False, index=True),  # a DeliveryState value
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("enqueued_at", sa.DateTime(timezone=True)),  # schema 2: Celery dispatch
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Column("previous_status", sa.BigInteger),
    sa.Column("status", sa.BigInteger),
    sa.Column("applied", sa.Boolean),
    # A task delivery: its status changed. An order or call delivery: it was news (the first
    # report of its call as that kind), so it is signalled; NULL (schema 2 rows) counts as news.
    sa.Column("changed", sa.Boolean),
    sa.Column("source", sa.String(16)),  # schema 3: "reconcile", or NULL for a callback
)

tasks = sa.Table(
    "callbot_tasks",
    metadata,
    sa.Column("task_id", sa.String(255), primary_key=True),
    sa.Column("user_task_id", sa.String(255), index=True),  # schema 3: reconciliation looks up
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
    # The applied data's version (ordering.order_version): call start, request time, kind rank.
    sa.Column("version_request_ts", sa.BigInteger),
    sa.Column("version_kind_rank", sa.Integer),
    sa.Column("last_kind", sa.String(8)),
    sa.Column("last_request_id", sa.String(128)),
    sa.Column("callbacks", sa.Integer, nullable=False, server_default="0"),
    # Schema 3: the order callback that first reported the order (later ones are not news).
    sa.Column("order_request_id", sa.String(128)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

#: Schema 3: every call a call callback reported, and the first delivery that did. A later
#: report of the same call (a late copy of a callback that reconciliation recovered, a resend)
#: is recorded but not signalled again.
calls = sa.Table(
    "callbot_calls",
    metadata,
    sa.Column("task_id", sa.String(255), primary_key=True),
    sa.Column("order_id", sa.String(255), primary_key=True),
    sa.Column("call_id", sa.String(255), primary_key=True),
    sa.Column("request_id", sa.String(128), nullable=False),
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


def _track_reports(conn: Connection) -> None:
    """Schema 3: the ``source`` column, the userTaskID index, and the first report of each call
    (the calls table, created by ``create_all``) and of each order, filled from the deliveries
    already recorded, so nothing signalled before the upgrade is taken for missed."""
    for table, column in ((deliveries, "source"), (orders, "order_request_id")):
        column_type = table.c[column].type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column} {column_type}"))
    for index in tasks.indexes:
        index.create(conn, checkfirst=True)
    first = (
        sa.select(sa.func.min(deliveries.c.id))
        .where(deliveries.c.kind == "order")
        .group_by(deliveries.c.task_id, deliveries.c.order_id)
    )
    conn.execute(
        orders.update().values(
            order_request_id=sa.select(deliveries.c.request_id)
            .where(
                deliveries.c.id.in_(first),
                deliveries.c.task_id == orders.c.task_id,
                deliveries.c.order_id == orders.c.order_id,
            )
            .scalar_subquery()
        )
    )
    rows = conn.execute(
        sa.select(deliveries.c.request_id, deliveries.c.task_id, deliveries.c.order_id)
        .add_columns(deliveries.c.body)
        .where(deliveries.c.kind == "call")
        .order_by(deliveries.c.id)
    )
    seen: dict[tuple[str, str, str], str] = {}
    for row in rows:
        call_id = json.loads(bytes(row.body))["callInfoDetail"]["callID"]  # validated on entry
        seen.setdefault((row.task_id, row.order_id, str(call_id)), row.request_id)
    if seen:
        conn.execute(
            calls.insert(),
            [
                {"task_id": task, "order_id": order, "call_id": call, "request_id": request_id}
                for (task, order, call), request_id in seen.items()
            ],
        )


#: ``version -> step`` that upgrades tables at ``version - 1`` to ``version``, run in order by
#: :func:`create_or_upgrade`. Fresh databases are created at the current version and skip them.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _add_enqueued_at, 3: _track_reports}

_LOCK_KEY = 0x43414C4C424F54  # "CALLBOT": the advisory lock that serialises schema changes


def create_or_upgrade(conn: Connection) -> None:
    """Create or upgrade the tables to :data:`SCHEMA_VERSION`, in the caller's transaction.

    One process at a time does it (a PostgreSQL advisory lock; SQLite's write lock); the
    version is recorded in ``callbot_schema_version``. A database written by a newer
    flask_callbot is refused rather than misread.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    metadata.create_all(conn, checkfirst=True)
    current = read_version(conn)
    if current is None:  # tables just created at the current version
        conn.execute(
            schema_version.insert().values(version=SCHEMA_VERSION, applied_at=datetime.now(UTC))
        )
        current = SCHEMA_VERSION
    elif current > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the callbot tables are at schema version {current}, newer than this "
            f"flask_callbot ({SCHEMA_VERSION}): upgrade the package"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        if version in MIGRATIONS:
            MIGRATIONS[version](conn)
        conn.execute(schema_version.insert().values(version=version, applied_at=datetime.now(UTC)))


def read_version(conn: Connection) -> int | None:
    """The tables' schema version (``None`` before they were created)."""
    return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
