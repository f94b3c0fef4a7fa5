"""SQLite file stores: the writers' turn, and the connection the hot path writes on.

SQLite runs one writing transaction at a time, so writers take turns: the threads of a process
through a lock, processes through an OS file lock on a side file (``<database>.writer-lock``).
A blocking ``flock`` hands the turn over the moment it is released, where SQLite's own busy
handler would poll with sleeps of 1 to 100 ms, and the kernel frees it if a process dies.
Without ``fcntl`` (Windows) processes rely on SQLite's locking alone: BEGIN IMMEDIATE and the
busy timeout, correct but slower under contention.

As a process writes one transaction at a time, the hot path's transactions (recording and
finishing a delivery) run on one connection that the turn grants, kept open between them,
rather than on one checked out of the pool for each: the check-out and the return with its
reset cost a request about as much as its statements. Everything else stays on the pool.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

from .connections import Held, Lease

try:
    import fcntl
except ImportError:  # not POSIX (Windows): SQLite's own locking serves
    fcntl = None  # type: ignore[assignment]


class WritersTurn:
    """``with turn:`` waits for this store's turn to write, across threads and processes.

    Inside it, :meth:`connection` is the writer's connection, opened by ``connect`` on first
    use (without ``connect`` the caller writes on connections of its own: a host's engine).
    """

    def __init__(self, database: str, connect: Callable[[], Any] | None = None) -> None:
        self._lock_path = f"{database}.writer-lock"
        self._connect = connect
        self._threads = threading.Lock()
        self._lock_file: Held | None = None
        self._writer: Held | None = None
        if hasattr(os, "register_at_fork"):  # a child must not share the parent's lock or file
            turn = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _forget_in_child(turn))

    def __enter__(self) -> None:
        self._threads.acquire()
        if fcntl is None:
            return
        try:
            if self._lock_file is None:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                self._lock_file = Held(fd, partial(os.close, fd))
            fcntl.flock(self._lock_file.value, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._lock_file is not None:
                fcntl.flock(self._lock_file.value, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def take(self) -> Lease:
        """The writer's connection, within the turn (opened on first use)."""
        writer = self._writer
        if writer is None:
            if self._connect is None:
                raise RuntimeError("this turn grants no connection: the engine is the host's")
            connection = self._connect()
            writer = self._writer = Held(Lease(connection, connection.cursor()), connection.close)
        lease: Lease = writer.value
        return lease

    def give_back(self, lease: Lease, *, committed: bool, lost: bool) -> None:
        """Within the turn, after a transaction: roll back what was not committed. A connection
        ``lost``, or that cannot roll back, is closed (the next turn opens another)."""
        if committed or self._writer is None:
            return
        if not lost:
            try:
                lease.connection.rollback()
            except Exception:  # a connection in an unknown state: not used again
                lost = True
        if lost:
            self.reconnect()

    def reconnect(self) -> None:
        """Within the turn: close the writer's connection; the next turn opens a new one."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def close(self) -> None:
        """Close the writer's connection and the lock file, from any thread (the store is
        disposed of; a later write opens them again)."""
        with self._threads:
            self.reconnect()
            lock_file, self._lock_file = self._lock_file, None
            if lock_file is not None:
                lock_file.close()


def _forget_in_child(turn_ref: weakref.ref[WritersTurn]) -> None:
    """In a forked child: a fresh thread lock (another thread of the parent may have held it),
    and the parent's writer connection and lock file left to the parent (unlocking the
    inherited file would unlock the parent)."""
    turn = turn_ref()
    if turn is None:
        return
    turn._threads = threading.Lock()
    for held in (turn._writer, turn._lock_file):
        if held is not None:
            held.forget()
    turn._writer = turn._lock_file = None
