"""The engine and its transactions: backend tuning, writing and reading transactions (on
SQLite in the writers' turn, see :mod:`.writer`), the hot path's writing transactions on the
driver's own connection, the schema made ready on first use, database errors as
StoreUnavailable, and a fresh pool in a forked child."""

from __future__ import annotations

import contextlib
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from ..errors import ConfigurationError, StoreUnavailable
from . import space
from .connections import (
    ConnectionSource,
    KeptConnection,
    Lease,
    PooledConnections,
    detached_connection,
)
from .schema import HEAD_REVISION, read_revision, read_version, version_problem
from .writer import WritersTurn

_T = TypeVar("_T")

#: The execution option that marks a connection's transactions read-only (see Database.reading).
_READ_ONLY = "callbot_read_only"
#: How an SQLite writing transaction begins: the write lock up front, so two read-then-write
#: transactions never deadlock (both Database.writing and Database.writing_on_driver).
_BEGIN_WRITING = "BEGIN IMMEDIATE"
#: The PostgreSQL driver flask-callbot[postgres] installs.
_PSYCOPG = "postgresql+psycopg"


class Database:
    """One per store: the engine, and the transactions every store operation runs in."""

    def __init__(
        self,
        url: str,
        engine_options: Mapping[str, Any],
        *,
        sqlite_synchronous: str,
        engine: Engine | None = None,
        manage_schema: bool = True,
    ) -> None:
        #: ``engine``: the host's (``CALLBOT_ENGINE``), used as it is (no tuning, never
        #: disposed here); the store still runs its own transactions on it.
        self.owns_engine = engine is None
        self.engine = (
            create_engine(url, engine_options, sqlite_synchronous) if engine is None else engine
        )
        #: ``CALLBOT_MANAGE_SCHEMA``: whether first use creates or upgrades the tables.
        self.manage_schema = manage_schema
        #: SQLite file stores: writers take turns (``with db.turn:``); on an engine of the
        #: store's own the turn grants the hot path's connection.
        self.turn = _writers_turn(self.engine, writes_on_its_own=self.owns_engine)
        #: Where the hot path's transactions get their connection (see :mod:`.connections`).
        self.hot_connections = _hot_connections(
            self.engine, self.turn, owns_engine=self.owns_engine
        )
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._driver_statements: dict[tuple[Any, tuple[str, ...]], DriverStatement] = {}
        self._driver_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        self._begin_writing = _BEGIN_WRITING if self.engine.dialect.name == "sqlite" else None
        # An app dropped without store.dispose() (a test's, say) closes its pooled connections
        # instead of leaving them to the garbage collector (a ResourceWarning since Python 3.13).
        weakref.finalize(self, self.engine.dispose)
        # A server forking after the store was made (gunicorn --preload) must not share
        # connections with its parent: children drop the inherited pool without closing it.
        # (Windows has no fork, nor this hook.)
        if self.owns_engine and hasattr(os, "register_at_fork"):
            engine_ref = weakref.ref(self.engine)
            os.register_at_fork(after_in_child=lambda: _drop_pool(engine_ref))

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A writing transaction: on SQLite, the writers' turn and BEGIN IMMEDIATE."""
        self._ensure_schema()
        with self._translate_errors(), self.turn:
            try:
                with self.engine.begin() as conn:
                    yield conn
            except sa_exc.OperationalError as exc:
                if self.sqlite_file is not None and space.out_of_space(exc):
                    self._make_room(self.sqlite_file)
                raise

    @contextmanager
    def writing_on_driver(self) -> Iterator[DriverTransaction]:
        """A writing transaction like :meth:`writing`, its statements run on a DB-API
        connection: the hot path's per-request statements, which would otherwise spend most of
        their time in SQLAlchemy's per-execution machinery.

        The connection is the writer's on an SQLite file store of the store's own engine (see
        :mod:`.writer`), else one checked out of the pool. The same writers' turn and BEGIN,
        and the same errors: a driver error is wrapped as SQLAlchemy would wrap it (its message
        without the statement's values: ``hide_parameters``), a lost connection is dropped, and
        unavailability is :class:`StoreUnavailable`.
        """
        if not self._schema_ready:
            self._ensure_schema()
        try:
            with self.turn:
                transaction = DriverTransaction(self, self._lease())
                try:
                    if self._begin_writing is not None:
                        transaction.run(self._begin_writing)
                    yield transaction
                    transaction.sql = "COMMIT"
                    transaction.connection.commit()
                    transaction.committed = True
                except self._driver_error as exc:
                    lost = self._is_lost(transaction, exc)
                    transaction.end(lost=lost)
                    if lost and self.owns_engine:  # the others are likely dead too
                        self.engine.dispose()
                    raise self._failure(exc, transaction.sql, invalidated=lost) from exc
                finally:
                    transaction.end()
        except _DATABASE_ERRORS as exc:
            unavailable = _unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    def _lease(self) -> Lease:
        try:
            return self.hot_connections.take()
        except self._driver_error as exc:  # connecting: the pool leaves it unwrapped
            raise self._failure(exc, None, invalidated=False) from exc

    def _is_lost(self, transaction: DriverTransaction, exc: Exception) -> bool:
        """Whether the driver error ``exc`` lost the transaction's connection."""
        return bool(
            self.engine.dialect.is_disconnect(
                exc,  # type: ignore[arg-type]  # the driver's Error: what the dialect expects
                transaction.connection,
                transaction.cursor,
            )
        )

    def _failure(self, exc: Exception, sql: str | None, *, invalidated: bool) -> Exception:
        """A driver error as SQLAlchemy raises it; out of space, the WAL's room made first."""
        failure = self._wrapped(exc, sql, invalidated=invalidated)
        if (
            isinstance(failure, sa_exc.OperationalError)
            and self.sqlite_file is not None
            and space.out_of_space(failure)
        ):
            self._make_room(self.sqlite_file)  # as writing() does
        return failure

    def _wrapped(self, exc: Exception, sql: str | None, *, invalidated: bool) -> Exception:
        """A driver error as SQLAlchemy raises it (the statement without its values)."""
        return sa_exc.DBAPIError.instance(
            sql,
            None,
            exc,
            self._driver_error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=self.engine.dialect,
        )

    def driver_statement(self, statement: Any, keys: tuple[str, ...]) -> DriverStatement:
        """``statement`` compiled for this engine's dialect with the parameters ``keys``, once."""
        found = self._driver_statements.get((statement, keys))
        if found is None:
            found = DriverStatement(statement, self.engine.dialect, keys)
            self._driver_statements[statement, keys] = found
        return found

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite a plain (deferred) BEGIN without the writers' turn,
        so the dashboard, the CLI and metrics scrapes never hold up deliveries (WAL readers see
        a consistent snapshot and block no one)."""
        self._ensure_schema()
        with (
            self._translate_errors(),
            self.engine.connect().execution_options(**{_READ_ONLY: True}) as conn,
            conn.begin(),
        ):
            yield conn

    @property
    def sqlite_file(self) -> str | None:
        """The database file of an SQLite file store (``None``: in memory, or PostgreSQL)."""
        if self.engine.dialect.name != "sqlite":
            return None
        database = self.engine.url.database
        return None if database in (None, "", ":memory:") else database

    def _make_room(self, path: str) -> None:
        """A write failed for lack of space: give the WAL's space back (see :mod:`.space`), and
        reopen the connections, which bound their WAL by the free space they find."""
        if space.make_room(path) and self.owns_engine:  # a host's pool is the host's to reset
            self.engine.dispose()
            if isinstance(self.turn, WritersTurn):  # (made room within the turn)
                self.turn.reconnect()

    def create_schema(self) -> None:
        """Create or upgrade the tables to the package's Alembic head (idempotent, one process at
        a time across hosts: see :func:`.migrate.upgrade`). Current tables cost one read, and
        Alembic is imported only when they are not."""
        # A host's SQLite engine begins deferred (no BEGIN IMMEDIATE): take the writers' turn.
        turn = contextlib.nullcontext() if self.owns_engine else self.turn
        with self._translate_errors(), turn, self.engine.begin() as conn:
            if read_revision(conn) != HEAD_REVISION:
                from .migrate import upgrade

                upgrade(conn)
        self._schema_ready = True

    def check_schema(self) -> None:
        """With ``CALLBOT_MANAGE_SCHEMA`` off: refuse tables that are missing, older or newer
        than this package's (a :class:`StoreUnavailable` naming what to run); change nothing."""
        with self._translate_errors(), self.engine.connect() as conn:
            problem = version_problem(read_version(conn))
        if problem:
            raise StoreUnavailable(problem)
        self._schema_ready = True

    def peek_schema_version(self) -> int | None:
        """The tables' schema version, creating and upgrading nothing (``None`` before they
        exist): for diagnostics, which must not change what they look at. A failure is a
        :class:`StoreUnavailable` that names the driver's reason (the password hidden)."""
        return self._peek(read_version)

    def peek_schema_revision(self) -> str | None:
        """The tables' callbot revision, as :meth:`peek_schema_version` reads."""
        return self._peek(read_revision)

    def _peek(self, read: Callable[[Connection], _T]) -> _T:
        try:
            with self.engine.connect() as conn:
                return read(conn)
        except sa_exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            password = self.engine.url.password
            if password:
                reason = reason.replace(str(password), "***")
            raise StoreUnavailable(f"{type(exc).__name__}: {reason}") from exc

    def dispose(self) -> None:
        self.hot_connections.close()
        if isinstance(self.turn, WritersTurn):
            self.turn.close()
        if self.owns_engine:
            self.engine.dispose()

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready and self.manage_schema:
                    self.create_schema()
                elif not self._schema_ready:
                    self.check_schema()

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except _DATABASE_ERRORS as exc:
            unavailable = _unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc


#: The errors _unavailable looks at.
_DATABASE_ERRORS = (sa_exc.DBAPIError, sa_exc.TimeoutError)


def _unavailable(exc: sa_exc.DBAPIError | sa_exc.TimeoutError) -> StoreUnavailable | None:
    """The store is unavailable: the database refused or lost us, or the pool timed out.
    ``None`` for any other database error (a bug, a constraint): it stays what it is."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return StoreUnavailable(f"the callbot store is unavailable ({type(exc).__name__})")
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return StoreUnavailable("the callbot store connection was lost")
    return None


class DriverStatement:
    """A Core statement compiled once, run on a DB-API cursor with the values converted as
    SQLAlchemy would convert them (its types' bind processors, e.g. SQLite's datetimes as text).
    """

    __slots__ = ("_convert", "_fixed", "_pick", "_processors", "sql")

    def __init__(self, statement: Any, dialect: sa.Dialect, keys: tuple[str, ...]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        self.sql: str = compiled.string
        #: The statement's own values (``callbacks + 1``'s 1), under the caller's.
        self._fixed = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required and name not in keys
        }
        processors = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        self._processors: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(processors.items())
        #: Positional drivers (sqlite3's "?"): the values picked in order, and the positions
        #: to convert; named drivers (psycopg): None.
        self._pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
        self._convert: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
        names = compiled.positiontup
        if names is not None:
            self._pick = _picker(tuple(names))
            self._convert = tuple(
                (position, processors[name])
                for position, name in enumerate(names)
                if name in processors
            )

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``values``."""
        if self._fixed:
            values = {**self._fixed, **values}
        if self._pick is not None:
            row = self._pick(values)
            if not self._convert:
                return row
            converted = list(row)
            for position, process in self._convert:
                converted[position] = process(converted[position])
            return converted
        if self._processors:
            values = dict(values)
            for name, process in self._processors:
                if name in values:
                    values[name] = process(values[name])
        return values


def _picker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function taking ``names``' values out of a mapping, as a tuple, in order."""
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    if not names:
        return lambda values: ()
    return operator.itemgetter(*names)


class DriverTransaction:
    """What :meth:`Database.writing_on_driver` yields: Core statements run on a DB-API cursor."""

    __slots__ = ("_db", "_ended", "_lease", "committed", "connection", "cursor", "sql")

    def __init__(self, db: Database, lease: Lease) -> None:
        self._db = db
        self._lease = lease
        self.connection = lease.connection
        self.cursor = lease.cursor
        self.committed = False
        self._ended = False
        #: The statement running, for the error's message.
        self.sql: str | None = None

    def run(self, sql: str) -> None:
        """Run a statement of the driver's own SQL (BEGIN)."""
        self.sql = sql
        self.cursor.execute(sql)

    def execute(self, statement: Any, values: Mapping[str, Any]) -> int:
        """Run ``statement`` with ``values``; the number of rows it changed."""
        compiled = self._db.driver_statement(statement, tuple(values))
        self.sql = compiled.sql
        self.cursor.execute(compiled.sql, compiled.parameters(values))
        return int(self.cursor.rowcount)

    def first(self, statement: Any, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run ``statement`` with ``values``; its first row (values as the driver returns
        them: only for columns that need no conversion), or None."""
        compiled = self._db.driver_statement(statement, tuple(values))
        self.sql = compiled.sql
        self.cursor.execute(compiled.sql, compiled.parameters(values))
        row: tuple[Any, ...] | None = self.cursor.fetchone()
        self.cursor.fetchall()  # the rest (none): leave the cursor ready for the next statement
        return row

    def end(self, *, lost: bool = False) -> None:
        """Give the connection back (once): what was not committed is rolled back, a ``lost``
        connection dropped."""
        if not self._ended:
            self._ended = True
            self._db.hot_connections.give_back(self._lease, committed=self.committed, lost=lost)


def _writers_turn(
    engine: Engine, *, writes_on_its_own: bool
) -> WritersTurn | contextlib.nullcontext[None]:
    """SQLite file stores take turns at writing (see :mod:`.writer`); with
    ``writes_on_its_own`` (the store's own engine) the turn grants the hot path's connection."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return contextlib.nullcontext()
    connect = (lambda: detached_connection(engine)) if writes_on_its_own else None
    return WritersTurn(database, connect)


def _hot_connections(
    engine: Engine, turn: WritersTurn | contextlib.nullcontext[None], owns_engine: bool
) -> ConnectionSource:
    """Where the hot path gets its connections (see :mod:`.connections`)."""
    if not owns_engine:
        return PooledConnections(engine)
    if isinstance(turn, WritersTurn):
        return turn
    if engine.dialect.name == "sqlite":  # in memory: one connection, the pool's
        return PooledConnections(engine)
    return KeptConnection(engine, ping_after=_PING_AFTER_IDLE)


def _drop_pool(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.dispose(close=False)


def create_engine(
    url: str, options: Mapping[str, Any], sqlite_synchronous: str = "NORMAL"
) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL, a busy timeout and write-locking BEGINs."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(f"CALLBOT_DATABASE_URL is not an SQLAlchemy URL: {exc}") from exc
    # hide_parameters: a database error's message never carries a statement's values (a body,
    # a phone number) into a log or an error report.
    kwargs: dict[str, Any] = {"hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs = {
            "connect_args": {"timeout": 30, "check_same_thread": False},
            "hide_parameters": True,
        }
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
    kwargs.update(options)
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa_exc.ArgumentError, ImportError, TypeError) as exc:
        hint = _url_hint(parsed, exc)
        raise ConfigurationError(
            f"CALLBOT_DATABASE_URL / CALLBOT_ENGINE_OPTIONS: cannot create the engine: {exc}{hint}"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:")
        _tune_sqlite(engine, in_memory=in_memory, synchronous=sqlite_synchronous)
    elif "pool_pre_ping" not in options:  # asked for explicitly: SQLAlchemy's, every checkout
        _ping_when_idle(engine)
    return engine


#: A pooled connection idle for longer than this (seconds) is pinged before it is handed out.
_PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Check a server connection before use if it sat in the pool for a while, so a database
    restarted or a link cut while it was idle is found here, not by a request.

    A connection used within the last second is not pinged: under load SQLAlchemy's
    ``pool_pre_ping`` would add a round trip to every transaction (HikariCP skips its check
    the same way). One found dead during a transaction empties the pool (see
    ``Database.writing_on_driver``; SQLAlchemy does the same for its own statements).
    """

    @sa_event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["callbot_idle_since"] = time.monotonic()

    @sa_event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get("callbot_idle_since")
        if idle_since is None or time.monotonic() - idle_since < _PING_AFTER_IDLE:
            return  # just connected, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and hands out a fresh one (SQLAlchemy's rule).
            raise sa_exc.DisconnectionError(f"{type(exc).__name__} on ping") from exc


def _url_hint(url: URL, exc: Exception) -> str:
    """The usual slips: a ``postgres://`` URL (Heroku's form, no dialect of that name) or
    another PostgreSQL driver than the one ``flask-callbot[postgres]`` installs."""
    if url.get_backend_name() in ("postgres", "postgresql") and url.drivername != _PSYCOPG:
        return (
            f" (write the URL as {_PSYCOPG}://...: psycopg 3, installed by flask-callbot[postgres])"
        )
    return " (install flask-callbot[postgres])" if "psycopg" in str(exc) else ""


def _tune_sqlite(engine: Engine, *, in_memory: bool, synchronous: str) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below emit BEGIN itself
        cursor = dbapi_connection.cursor()
        if not in_memory:
            _use_wal(cursor)
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            space.tune_connection(cursor, engine.url.database or "")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: two read-then-write transactions never deadlock.
        # A read-only transaction (Database.reading) begins deferred and never takes it.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else _BEGIN_WRITING)


#: How long a new connection keeps trying to put a new database file in WAL mode.
_WAL_SWITCH_TIMEOUT = 30.0


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode (it stays so; later connections find it done).

    Processes opening a new file at once (gunicorn's workers on their first requests) race for
    the switch, and SQLite refuses the losers at once, without its busy wait (which could
    deadlock there): they try again until the winner is done.
    """
    deadline = time.monotonic() + _WAL_SWITCH_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
