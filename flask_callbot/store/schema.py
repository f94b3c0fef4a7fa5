"""The tables, and how to read which schema version they are at (Alembic makes and upgrades
them: see :mod:`flask_callbot.store.migrate`)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreUnavailable

#: The schema version, and the Alembic revision of the callbot branch that made it. Each change
#: of the tables is a new revision in ``flask_callbot/migrations/versions``, numbered on from the
#: versions flask-callbot 0.1 recorded itself (1 to 3): ``callbot_0004`` is schema version 4.
SCHEMA_VERSION = 3
HEAD_REVISION = "callbot_0003"
BRANCH = "callbot"
#: Alembic's version table for the callbot branch: its own, never the host's ``alembic_version``.
VERSION_TABLE = "callbot_alembic_version"

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

#: The version table of flask-callbot 0.1, before Alembic (see :mod:`.legacy`).
LEGACY_VERSION_TABLE = "callbot_schema_version"


def revision_number(revision: str) -> int:
    """The schema version a callbot revision stands for (``callbot_0003`` -> 3)."""
    prefix, _, number = revision.partition("_")
    if prefix != BRANCH or not number.isdigit():
        raise StoreUnavailable(f"{VERSION_TABLE} holds {revision!r}: not a callbot revision")
    return int(number)


def read_revision(conn: Connection) -> str | None:
    """The callbot revision the tables are at (``None``: not made by Alembic, or not at all).

    Standalone, Alembic keeps it in :data:`VERSION_TABLE`; under a host's Alembic, the callbot
    revisions keep that table current themselves (see :mod:`flask_callbot.store.migrate`).
    """
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    found = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()  # noqa: S608
    return max(found, key=revision_number) if found else None


def read_version(conn: Connection) -> int | None:
    """The tables' schema version, ``None`` before they exist: their revision's number, or the
    version flask-callbot 0.1 recorded in :data:`LEGACY_VERSION_TABLE`. Creates nothing."""
    revision = read_revision(conn)
    if revision is not None:
        return revision_number(revision)
    if sa.inspect(conn).has_table(LEGACY_VERSION_TABLE):
        query = f"SELECT max(version) FROM {LEGACY_VERSION_TABLE}"  # noqa: S608
        found = conn.execute(sa.text(query)).scalar()
        return None if found is None else int(found)
    return None


#: What to run when the tables are behind and flask_callbot does not manage them.
UPGRADE_COMMAND = (
    "run `flask callbot db upgrade` (or the host's `flask db upgrade` if its Alembic carries "
    "the callbot branch)"
)


def version_problem(version: int | None) -> str | None:
    """What is wrong with tables at ``version`` for this package (``None``: they serve): the
    message registration, first use and ``doctor`` give when the schema is not managed here."""
    if version is None:
        return f"the callbot tables do not exist: {UPGRADE_COMMAND}"
    if version < SCHEMA_VERSION:
        return (
            f"the callbot tables are at schema version {version}, this flask_callbot needs "
            f"{SCHEMA_VERSION}: {UPGRADE_COMMAND}"
        )
    if version > SCHEMA_VERSION:
        return (
            f"the callbot tables are at schema version {version}, newer than this "
            f"flask_callbot ({SCHEMA_VERSION}): upgrade the package"
        )
    return None
