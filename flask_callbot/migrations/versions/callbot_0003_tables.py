"""the callbot tables as of schema version 3

The first revision of the callbot branch: it creates today's tables on an empty database, and
takes over a database made by flask-callbot 0.1 (``callbot_schema_version`` at 1, 2 or 3): tables
at 1 or 2 get that version's own upgrade steps once, then the old version table is dropped. At 3
nothing else is touched. Numbered 0003 so revision numbers go on from those schema versions.

Revision ID: callbot_0003
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from flask_callbot.store import legacy, migrate

revision = "callbot_0003"
down_revision: str | None = None
branch_labels = ("callbot",)
depends_on: str | None = None

_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if migrate.already_applied(revision):
        return
    if not context.is_offline_mode() and legacy.has_legacy_tables(op.get_bind()):
        legacy.upgrade_legacy(op.get_bind())
    else:
        _create_tables()
    migrate.record(revision)


def downgrade() -> None:
    for table in ("callbot_calls", "callbot_orders", "callbot_tasks", "callbot_deliveries"):
        op.drop_table(table)
    migrate.record(None)


def _create_tables() -> None:
    op.create_table(
        "callbot_deliveries",
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
        sa.Column("enqueued_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Column("previous_status", sa.BigInteger),
        sa.Column("status", sa.BigInteger),
        sa.Column("applied", sa.Boolean),
        sa.Column("changed", sa.Boolean),
        sa.Column("source", sa.String(16)),
    )
    op.create_table(
        "callbot_tasks",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("user_task_id", sa.String(255), index=True),
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
    op.create_table(
        "callbot_orders",
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
        sa.Column("version_request_ts", sa.BigInteger),
        sa.Column("version_kind_rank", sa.Integer),
        sa.Column("last_kind", sa.String(8)),
        sa.Column("last_request_id", sa.String(128)),
        sa.Column("callbacks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("order_request_id", sa.String(128)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "callbot_calls",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("order_id", sa.String(255), primary_key=True),
        sa.Column("call_id", sa.String(255), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False),
    )
