"""Databases made before Alembic (flask-callbot 0.1): ``callbot_schema_version`` at 1, 2 or 3.

Run once, by the first Alembic revision: tables at 1 or 2 take the hand-written steps of the
time to reach 3 (today's schema, which that revision reproduces), then the old version table is
dropped. The tables here are frozen as those steps knew them, whatever ``schema`` says later.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreUnavailable
from .schema import LEGACY_VERSION_TABLE as VERSION_TABLE

#: The version the first Alembic revision stands for.
LAST_VERSION = 3

_deliveries = sa.table(
    "callbot_deliveries",
    sa.column("id"),
    sa.column("request_id"),
    sa.column("kind"),
    sa.column("task_id"),
    sa.column("order_id"),
    sa.column("body", sa.LargeBinary),
)
_orders = sa.table(
    "callbot_orders", sa.column("task_id"), sa.column("order_id"), sa.column("order_request_id")
)
_frozen = sa.MetaData()
_tasks = sa.Table("callbot_tasks", _frozen, sa.Column("user_task_id", sa.String(255)))
_calls = sa.Table(
    "callbot_calls",
    _frozen,
    sa.Column("task_id", sa.String(255), primary_key=True),
    sa.Column("order_id", sa.String(255), primary_key=True),
    sa.Column("call_id", sa.String(255), primary_key=True),
    sa.Column("request_id", sa.String(128), nullable=False),
)


def has_legacy_tables(conn: Connection) -> bool:
    return sa.inspect(conn).has_table(VERSION_TABLE)


def upgrade_legacy(conn: Connection) -> int:
    """Bring tables made by flask-callbot 0.1 to schema 3 in the caller's transaction, drop
    ``callbot_schema_version``, and return the version they were at (nothing else is touched)."""
    found = conn.execute(sa.text(f"SELECT max(version) FROM {VERSION_TABLE}")).scalar()  # noqa: S608
    if found is None or not 1 <= found <= LAST_VERSION:
        raise StoreUnavailable(
            f"{VERSION_TABLE} says {found}: not a schema flask_callbot knows; upgrade the package"
        )
    for version in range(found + 1, LAST_VERSION + 1):
        _STEPS[version](conn)
    conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
    return int(found)


def _add_column(conn: Connection, table: str, column: str, column_type: Any) -> None:
    compiled = column_type.compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {compiled}"))


def _add_enqueued_at(conn: Connection) -> None:
    """Schema 2: Celery dispatch's ``enqueued_at``."""
    _add_column(conn, "callbot_deliveries", "enqueued_at", sa.DateTime(timezone=True))


def _track_reports(conn: Connection) -> None:
    """Schema 3: the ``source`` column, the userTaskID index, and the first report of each call
    and of each order, filled from the deliveries already recorded, so nothing signalled before
    the upgrade is taken for missed."""
    _add_column(conn, "callbot_deliveries", "source", sa.String(16))
    _add_column(conn, "callbot_orders", "order_request_id", sa.String(128))
    sa.Index("ix_callbot_tasks_user_task_id", _tasks.c.user_task_id).create(conn, checkfirst=True)
    _calls.create(conn, checkfirst=True)
    first = (
        sa.select(sa.func.min(_deliveries.c.id))
        .where(_deliveries.c.kind == "order")
        .group_by(_deliveries.c.task_id, _deliveries.c.order_id)
    )
    conn.execute(
        _orders.update().values(
            order_request_id=sa.select(_deliveries.c.request_id)
            .where(
                _deliveries.c.id.in_(first),
                _deliveries.c.task_id == _orders.c.task_id,
                _deliveries.c.order_id == _orders.c.order_id,
            )
            .scalar_subquery()
        )
    )
    rows = conn.execute(
        sa.select(_deliveries.c.request_id, _deliveries.c.task_id, _deliveries.c.order_id)
        .add_columns(_deliveries.c.body)
        .where(_deliveries.c.kind == "call")
        .order_by(_deliveries.c.id)
    )
    seen: dict[tuple[str, str, str], str] = {}
    for row in rows:
        call_id = json.loads(bytes(row.body))["callInfoDetail"]["callID"]  # validated on entry
        seen.setdefault((row.task_id, row.order_id, str(call_id)), row.request_id)
    if seen:
        conn.execute(
            _calls.insert(),
            [
                {"task_id": task, "order_id": order, "call_id": call, "request_id": request_id}
                for (task, order, call), request_id in seen.items()
            ],
        )


_STEPS: dict[int, Callable[[Connection], None]] = {2: _add_enqueued_at, 3: _track_reports}
