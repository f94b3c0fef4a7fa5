"""Alembic's environment for the callbot branch when flask_callbot runs it itself (standalone:
registration, ``flask callbot db``). A host's Alembic uses its own env.py (see the package)."""

from __future__ import annotations

from alembic import context

from flask_callbot.store.schema import VERSION_TABLE, metadata

config = context.config
if context.is_offline_mode():
    context.configure(
        dialect_name=config.attributes["dialect"],
        literal_binds=True,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
    )
else:
    context.configure(
        connection=config.attributes["connection"],
        target_metadata=metadata,
        version_table=VERSION_TABLE,
    )
with context.begin_transaction():
    context.run_migrations()
