"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flask_callbot.store import migrate

revision = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def upgrade() -> None:
    if migrate.already_applied(revision):
        return
    ${upgrades if upgrades else "pass"}
    migrate.record(revision)


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
    migrate.record(down_revision)
