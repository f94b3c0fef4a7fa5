"""Where the hot path's writing transactions get their DB-API connection, and give it back.

- SQLite file stores on an engine of the store's own write on the writer's connection, which
  the writers' turn grants (:mod:`.writer`);
- server databases (PostgreSQL) on an engine of the store's own keep the connection of their
  last transaction aside (:class:`KeptConnection`);
- a host's engine (``CALLBOT_ENGINE``), and SQLite in memory, check one out of the pool for
  each transaction (:class:`PooledConnections`).

A pool's check-out and return, with its reset (a rollback) and a new cursor, cost a request
about as much client CPU as its statements: the hot path avoids them where the engine is ours.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.engine import Engine


class Lease:
    """A connection lent for one transaction, with a cursor on it."""

    __slots__ = ("connection", "cursor", "fairy")

    def __init__(self, connection: Any, cursor: Any, fairy: Any = None) -> None:
        self.connection = connection
        self.cursor = cursor
        #: The pool's proxy of the connection (``None``: the writer's, see :mod:`.writer`).
        self.fairy = fairy


class ConnectionSource(Protocol):
    """Lends the hot path a connection per transaction (within the writers' turn, if any)."""

    def take(self) -> Lease: ...

    def give_back(self, lease: Lease, *, committed: bool, lost: bool) -> None:
        """After the transaction: what was not committed is rolled back; a ``lost`` connection
        is dropped."""

    def close(self) -> None:
        """Give back what is kept (the store is disposed of), from outside any transaction."""


class PooledConnections:
    """One connection checked out of the engine's pool per transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def take(self) -> Lease:
        fairy = self._engine.raw_connection()
        return Lease(fairy.dbapi_connection, fairy.cursor(), fairy)

    def give_back(self, lease: Lease, *, committed: bool, lost: bool) -> None:
        if lost:
            lease.fairy.invalidate()
        lease.fairy.close()  # back to the pool, which rolls back what was not committed

    def close(self) -> None:
        pass


class KeptConnection(PooledConnections):
    """A server database's hot path keeps the pooled connection of its last committed
    transaction checked out, with its cursor, for the next one; a transaction that finds it in
    use (by another thread) checks one out as usual. One connection at most: it counts against
    the pool's size like any other checked out.

    Kept idle for ``ping_after`` seconds or more, it is pinged before use, as the pool's are
    (see ``engine._ping_when_idle``), and replaced if it is dead.
    """

    def __init__(self, engine: Engine, *, ping_after: float) -> None:
        super().__init__(engine)
        self._ping_after = ping_after
        self._lock = threading.Lock()
        self._kept: tuple[Lease, float] | None = None  # and since when it is idle
        if hasattr(os, "register_at_fork"):
            kept = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _forget_kept(kept))

    def take(self) -> Lease:
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is None:
            fairy = self._engine.raw_connection()
            cursor = fairy.info.get(_CURSOR)
            if cursor is None:  # (the info dict lives as long as the DB-API connection)
                cursor = fairy.info[_CURSOR] = fairy.cursor()
            return Lease(fairy.dbapi_connection, cursor, fairy)
        lease, idle_since = kept
        if time.monotonic() - idle_since >= self._ping_after:
            try:
                self._engine.dialect.do_ping(lease.connection)
            except self._engine.dialect.loaded_dbapi.Error:  # died while kept: another one
                super().give_back(lease, committed=False, lost=True)
                return self.take()
        return lease

    def give_back(self, lease: Lease, *, committed: bool, lost: bool) -> None:
        if committed and not lost:
            with self._lock:
                if self._kept is None:
                    self._kept = (lease, time.monotonic())
                    return
        super().give_back(lease, committed=committed, lost=lost)
        if lost:  # the one kept is likely lost too (a server restarted, a link cut)
            with self._lock:
                kept, self._kept = self._kept, None
            if kept is not None:
                super().give_back(kept[0], committed=False, lost=True)

    def close(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None:
            super().give_back(kept[0], committed=True, lost=False)


#: Where a pooled connection's cursor for the hot path is kept (``fairy.info``).
_CURSOR = "callbot_cursor"
#: Connections kept by a parent process when it forked: the child must neither use them nor
#: let them be collected (the pool would roll them back over the parent's socket).
_INHERITED: list[Lease] = []


def _forget_kept(kept_ref: weakref.ref[KeptConnection]) -> None:
    kept = kept_ref()
    if kept is None:
        return
    kept._lock = threading.Lock()  # another thread of the parent may have held it
    if kept._kept is not None:
        _INHERITED.append(kept._kept[0])
        kept._kept = None


class Held:
    """Something this process opened (a connection, a file descriptor), closed when dropped,
    but never by a forked child: its copy is the parent's."""

    __slots__ = ("__weakref__", "_closing", "value")

    def __init__(self, value: Any, close: Callable[[], object]) -> None:
        self.value = value
        self._closing = weakref.finalize(self, _close, close, os.getpid())

    def close(self) -> None:
        self._closing()

    def forget(self) -> None:
        self._closing.detach()


def _close(close: Callable[[], object], pid: int) -> None:
    if os.getpid() == pid:
        with contextlib.suppress(Exception):
            close()


def detached_connection(engine: Engine) -> Any:
    """A new DB-API connection from ``engine``, set up by its pool's hooks (WAL, pragmas), then
    taken out of the pool for good."""
    fairy = engine.raw_connection()
    fairy.detach()
    return fairy.dbapi_connection
