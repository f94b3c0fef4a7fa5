"""SQLite near a full disk: a WAL bounded by the free space, the checkpoint that gives the WAL's
space back when a write fails for lack of it, and the figures ``flask callbot doctor`` reports.

In WAL mode every commit appends to the ``-wal`` file, which is copied into the database and
started over only once it holds ``wal_autocheckpoint`` pages (1,000: 4 MiB). With less free space
than that the WAL fills the disk first, every write then fails, and no checkpoint ever runs: the
store stays down even after space was freed. So each connection checkpoints after at most a
quarter of the free space it found, and a write that fails for lack of space checkpoints the WAL
into the database and truncates it, so the next write has room.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc

logger = logging.getLogger("flask_callbot")

#: SQLite's default ``wal_autocheckpoint``, in pages: the WAL's bound with room to spare.
WAL_PAGES = 1000
#: The smallest bound, when space is short (a few transactions).
MIN_WAL_PAGES = 16
#: Below this much free space the store may fail around a checkpoint: the WAL at its bound,
#: and the database growing by as much when the WAL is copied into it.
NEEDED_BYTES = 2 * WAL_PAGES * 4096
#: Free space to keep, besides the deliveries' growth until the next prune (see the README).
ADVISED_BYTES = 64 * 1024 * 1024


def wal_pages(directory: str, page_size: int) -> int:
    """The WAL's bound for a connection opened now: SQLite's default, or a quarter of the free
    space when that is less (so the WAL never fills the disk before it is checkpointed)."""
    try:
        free = free_bytes(directory)
    except OSError:
        return WAL_PAGES
    return max(MIN_WAL_PAGES, min(WAL_PAGES, free // page_size // 4))


def tune_connection(cursor: Any, path: str) -> None:
    """Bound a new connection's WAL (autocheckpoint, and the size the file is cut back to)."""
    page_size = int(cursor.execute("PRAGMA page_size").fetchone()[0])
    pages = wal_pages(os.path.dirname(os.path.abspath(path)), page_size)
    cursor.execute(f"PRAGMA wal_autocheckpoint={pages}")
    cursor.execute(f"PRAGMA journal_size_limit={pages * page_size}")


def out_of_space(exc: sa_exc.OperationalError) -> bool:
    """Whether SQLite refused a write for lack of disk space (SQLITE_FULL)."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc.orig)


def make_room(path: str) -> bool:
    """Checkpoint the WAL into the database and truncate it: the space the WAL held is free
    again. On a connection of its own (the failed one is mid-rollback), waiting at most a second
    for readers. ``True`` if the WAL is now empty."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=1.0, isolation_level=None)) as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        logger.warning("callbot: store out of space; checkpoint failed: %s", exc)
        return False
    if busy:
        logger.warning("callbot: store out of space; checkpoint incomplete (readers)")
        return False
    logger.warning("callbot: store out of space; the WAL was checkpointed and truncated")
    return True


def free_bytes(directory: str) -> int:
    """Space available to this process on the file system holding ``directory``."""
    return shutil.disk_usage(directory).free


@dataclass(frozen=True, slots=True)
class DiskUse:
    """An SQLite store's files and the free space beside them, for ``doctor``."""

    directory: str
    free: int
    database: int
    wal: int


def disk_use(path: str) -> DiskUse:
    directory = os.path.dirname(os.path.abspath(path))

    def size(name: str) -> int:
        try:
            return os.path.getsize(name)
        except OSError:
            return 0

    return DiskUse(directory, free_bytes(directory), size(path), size(f"{path}-wal"))
