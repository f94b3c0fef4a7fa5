"""The callbot tables' Alembic branch: upgrading them (one process at a time), offline SQL for a
DBA, the history; and what the revisions call to stay right under a host's Alembic.

Imports Alembic, so it is loaded only when the tables must change or a ``db`` command runs: a
receiver whose tables are current never imports it (see :meth:`.engine.Database.create_schema`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from ..errors import StoreUnavailable
from .schema import (
    BRANCH,
    HEAD_REVISION,
    SCHEMA_VERSION,
    VERSION_TABLE,
    read_revision,
    read_version,
    revision_number,
)

#: The Alembic environment and the revisions (``versions/``), shipped in the package.
SCRIPT_LOCATION = str(Path(__file__).resolve().parent.parent / "migrations")
VERSIONS_LOCATION = str(Path(SCRIPT_LOCATION) / "versions")

_LOCK_KEY = 0x43414C4C424F54  # "CALLBOT": the advisory lock that serialises schema changes


def alembic_config(
    *, connection: Connection | None = None, dialect: str | None = None, out: TextIO | None = None
) -> Config:
    """A configuration for the shipped environment (no alembic.ini): online on ``connection``,
    or offline for ``dialect``, writing the SQL to ``out``."""
    config = Config(output_buffer=out)
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes["dialect"] = dialect
    return config


def upgrade(conn: Connection) -> None:
    """Bring the tables to :data:`HEAD_REVISION` in the caller's transaction.

    One process at a time, on any number of hosts: a PostgreSQL advisory lock held to the end of
    the transaction (SQLite: the caller holds the write lock). Whoever waited finds the work done.
    A database written by a newer flask_callbot is refused rather than misread.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    version = read_version(conn)
    if version is not None and version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the callbot tables are at schema version {version}, newer than this "
            f"flask_callbot ({SCHEMA_VERSION}): upgrade the package"
        )
    if read_revision(conn) != HEAD_REVISION:
        command.upgrade(alembic_config(connection=conn), f"{BRANCH}@head")


def upgrade_sql(dialect: str, out: TextIO, revision: str = f"{BRANCH}@head") -> None:
    """Write the SQL that upgrades the tables (offline, for a DBA): from nothing, or from the
    revision before ``:`` (``callbot_0003:callbot@head``)."""
    command.upgrade(alembic_config(dialect=dialect, out=out), revision, sql=True)


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool


def history() -> list[RevisionInfo]:
    """The callbot revisions, newest first."""
    script = ScriptDirectory(SCRIPT_LOCATION)
    return [
        RevisionInfo(
            revision=rev.revision,
            down_revision=str(rev.down_revision) if rev.down_revision else None,
            message=(rev.doc or "").strip(),
            is_head=rev.is_head,
        )
        for rev in script.walk_revisions()
    ]


# What each revision calls. Standalone, Alembic records the revision in VERSION_TABLE itself.
# Run by a host's Alembic (its own version table, the Flask-Migrate recipe), a revision also
# keeps VERSION_TABLE current, so flask_callbot can tell the state of its tables whoever changed
# them, and skips the work flask_callbot already did before the host took the branch over.


def under_host() -> bool:
    """Whether the running migration records its revisions elsewhere than VERSION_TABLE."""
    return bool(op.get_context().version_table != VERSION_TABLE)


def already_applied(revision: str) -> bool:
    """Under a host's Alembic: the tables are already at ``revision`` or later (flask_callbot
    made them before the host's Alembic carried the branch). Offline, nothing can be known."""
    if not under_host() or op.get_context().as_sql:
        return False
    current = read_revision(op.get_bind())
    return current is not None and revision_number(current) >= revision_number(revision)


def record(revision: str | None) -> None:
    """Under a host's Alembic: make VERSION_TABLE say ``revision`` (``None``: drop it)."""
    if not under_host():
        return
    if revision is None:
        op.execute(f"DROP TABLE IF EXISTS {VERSION_TABLE}")
        return
    op.execute(
        f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
        f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
    )
    op.execute(f"DELETE FROM {VERSION_TABLE}")  # noqa: S608
    op.execute(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{revision}')")  # noqa: S608
