"""The callbot branch of Alembic revisions, and what a host's own Alembic needs to carry it.

flask_callbot runs these revisions itself by default (at first use, or ``flask callbot db
upgrade``), recording them in its own ``callbot_alembic_version`` table. A host that runs its
schema through Alembic or Flask-Migrate can carry the branch instead::

    from flask_callbot.migrations import add_version_location, include_name

    migrate = Migrate(app, db, include_name=include_name)  # autogenerate leaves them alone
    migrate.configure(add_version_location)                 # the callbot revisions

and set ``CALLBOT_MANAGE_SCHEMA = False`` (see the README).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..store.schema import LEGACY_VERSION_TABLE, VERSION_TABLE, metadata

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["CALLBOT_TABLES", "VERSIONS_LOCATION", "add_version_location", "include_name"]

#: Where the callbot revisions are (a directory inside the installed package).
VERSIONS_LOCATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "versions")
#: The tables flask_callbot owns: a host's autogenerate must neither drop nor alter them.
CALLBOT_TABLES = frozenset({*metadata.tables, VERSION_TABLE, LEGACY_VERSION_TABLE})

_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's ``include_name`` hook: leave the callbot tables (and their columns, indexes and
    constraints) out of the host's autogenerate, so it never proposes to drop or change them.
    To combine with a hook of your own: ``include_name=lambda *a: include_name(*a) and mine(*a)``.
    """
    table = name if type_ == "table" else parent_names.get("table_name")
    return table not in CALLBOT_TABLES


def include_object(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's ``include_object`` hook, the same rule as :func:`include_name`, for hosts whose
    own metadata holds the callbot tables too (``include_name`` suffices otherwise)."""
    table = name if type_ == "table" else getattr(getattr(object_, "table", None), "name", None)
    return table not in CALLBOT_TABLES


def add_version_location(config: Config) -> Config:
    """Add the callbot revisions to a host's Alembic configuration, keeping its own.

    For Flask-Migrate: ``migrate.configure(add_version_location)``; plain Alembic: call it on the
    ``Config`` before running a command, or list :data:`VERSIONS_LOCATION` in alembic.ini.
    """
    option = next(
        (
            name
            for name in ("path_separator", "version_path_separator")
            if config.get_main_option(name)
        ),
        None,
    )
    current = config.get_main_option("version_locations")
    if current:
        separator = _SEPARATORS[config.get_main_option(option) or "space"] if option else " "
        locations = [part for part in current.split(separator) if part.strip()]
    else:
        if option is None:  # path_separator: Alembic >= 1.16; version_path_separator before
            config.set_main_option("path_separator", "os")
            config.set_main_option("version_path_separator", "os")
        separator = _SEPARATORS[config.get_main_option(option or "path_separator") or "os"]
        script_location = config.get_main_option("script_location") or "."
        locations = [os.path.join(script_location, "versions")]
    if VERSIONS_LOCATION not in locations:
        locations.append(VERSIONS_LOCATION)
    config.set_main_option("version_locations", separator.join(locations).replace("%", "%%"))
    return config
