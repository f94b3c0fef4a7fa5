"""The store's two faces: :class:`StoreReader`, what host code may ask (``get_store(app)``), and
:class:`Store`, which adds the writes the pipeline, the dispatchers and the CLI make.

Both are thin: each method hands its :class:`~.engine.Database` to the module of its concern.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from ..events import CallbackKind
from . import ingest, queries, queue
from .engine import Database
from .outcomes import Outcome, OwedOutcomes
from .records import Claim, DeliveryState, NewDelivery, OrderState, StoredDelivery, TaskState
from .schema import version_problem


class StoreReader:
    """Lookups, lists and counts over the durable record, in read-only transactions that never
    wait for a writer. It cannot change anything: host code gets this from ``get_store(app)``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get_delivery(self, request_id: str) -> StoredDelivery | None:
        return queries.get_delivery(self._db, request_id)

    def get_task(self, task_id: str) -> TaskState | None:
        return queries.get_task(self._db, task_id)

    def get_task_by_user_task_id(self, user_task_id: str) -> TaskState | None:
        """The task with this ``userTaskID`` (your own id for it), the most recently updated if
        several share it."""
        return queries.get_task_by_user_task_id(self._db, user_task_id)

    def unfinished_tasks(self, *, since: datetime | None = None) -> list[TaskState]:
        """The tasks whose last applied status is not final (COMPLETED or FAILED), least
        recently updated first; only those updated at or after ``since``, if given."""
        return queries.unfinished_tasks(self._db, since=since)

    def reported(self, task_id: str) -> tuple[set[str], set[tuple[str, str]]]:
        """What the vendor's callbacks reported of one task: the orderIDs an order callback
        reported, and the ``(orderID, callID)`` pairs a call callback did."""
        return queries.reported(self._db, task_id)

    def get_order(self, task_id: str, order_id: str) -> OrderState | None:
        """What the newest order or call callback said about one order of one task."""
        return queries.get_order(self._db, task_id, order_id)

    def list_deliveries(
        self,
        *,
        outcome: DeliveryState | None = None,
        task_id: str | None = None,
        kind: CallbackKind | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 50,
        claimed_before: datetime | None = None,
    ) -> list[StoredDelivery]:
        """Recorded deliveries, newest first, filtered by any of the arguments
        (``claimed_before``: held or queued since that moment or earlier)."""
        return queries.list_deliveries(
            self._db,
            outcome=outcome,
            task_id=task_id,
            kind=kind,
            since=since,
            until=until,
            limit=limit,
            claimed_before=claimed_before,
        )

    def list_orders(
        self,
        *,
        task_id: str | None = None,
        kind: CallbackKind | None = None,
        limit: int | None = 50,
    ) -> list[OrderState]:
        """The tracked orders, most recently updated first: of one task, and only those whose
        newest data came from one kind of callback (``ORDER``: the finished orders), if given."""
        return queries.list_orders(self._db, task_id=task_id, kind=kind, limit=limit)

    def list_tasks(self, *, limit: int | None = None) -> list[TaskState]:
        """The tracked tasks, most recently updated first."""
        return queries.list_tasks(self._db, limit=limit)

    def failed_request_ids(
        self, *, now: float | None = None, lease: int | None = None
    ) -> list[str]:
        """The requestIDs of failed deliveries, oldest first (the order to replay them in); given
        ``now`` and the ``lease``, the abandoned ones too (see :meth:`count_abandoned`)."""
        return queries.failed_request_ids(self._db, now=now, lease=lease)

    def count_failed(self) -> int:
        """How many deliveries are failed now (the ``callbot_failed_deliveries`` gauge)."""
        return queries.count_failed(self._db)

    def count_abandoned(self, *, now: float, lease: int) -> int:
        """How many deliveries are held (pending) past the ``lease`` at ``now``: their worker
        died, or could not write their outcome (the ``callbot_abandoned_deliveries`` gauge)."""
        return queries.count_abandoned(self._db, now=now, lease=lease)

    def count_deliveries(self, task_id: str) -> dict[CallbackKind, int]:
        """How many deliveries of each kind are recorded for one task: every authentic callback
        once (duplicates are not counted again), whichever process received it."""
        return queries.count_deliveries(self._db, task_id)

    def count_prunable(self, *, before: datetime, include_failed: bool = False) -> int:
        """How many deliveries :meth:`Store.prune` with the same arguments would delete."""
        return queries.count_prunable(self._db, before=before, include_failed=include_failed)

    def get_schema_version(self) -> int | None:
        return queries.get_schema_version(self._db)


class Store(StoreReader):
    """One per app (``get_state(app).store``): owns the engine; tables are created on first use.

    The reads are :class:`StoreReader`'s; :attr:`reader` is the read-only face for host code.
    """

    def __init__(
        self,
        url: str,
        engine_options: Mapping[str, Any] | None = None,
        *,
        sqlite_synchronous: str = "NORMAL",
        engine: Engine | None = None,
        manage_schema: bool = True,
    ) -> None:
        """``engine``: a host's engine to use instead of one made from ``url`` (which then only
        names it); ``manage_schema=False``: never create or upgrade the tables on first use."""
        database = Database(
            url,
            engine_options or {},
            sqlite_synchronous=sqlite_synchronous,
            engine=engine,
            manage_schema=manage_schema,
        )
        super().__init__(database)
        self.reader = StoreReader(self._db)
        #: Outcomes not written yet (the store failed after the receivers ran): see
        #: :mod:`.outcomes`; written before this store records or claims anything else.
        self.owed = OwedOutcomes(self._db)

    @property
    def db(self) -> Database:
        """The engine and its transactions."""
        return self._db

    @property
    def engine(self) -> Engine:
        return self._db.engine

    def record(
        self, delivery: NewDelivery, *, now: float, lease: int, queue: bool = False
    ) -> Claim:
        """Claim the requestID and apply the delivery, in one transaction (see
        :func:`.ingest.record` for the verdicts)."""
        self.owed.flush()
        return ingest.record(self._db, delivery, now=now, lease=lease, queue=queue)

    def finish(
        self, request_id: str, *, now: float, attempt: int, error: str | None = None
    ) -> bool:
        """Mark the delivery held by ``attempt`` processed, or failed with ``error``. If the
        store fails, the outcome is retried, then owed (see :mod:`.outcomes`): ``False``."""
        return self.owed.write(Outcome(request_id, attempt, now, error))

    def claim_for_replay(self, request_id: str, *, now: float, lease: int) -> StoredDelivery:
        """Take a stored delivery for a replay, as a redelivery would: never one in progress."""
        self.owed.flush()
        return ingest.claim_for_replay(self._db, request_id, now=now, lease=lease)

    def mark_enqueued(self, request_id: str, *, now: float) -> None:
        """Record that a delivery's message reached the broker (its worker may be done already)."""
        queue.mark_enqueued(self._db, request_id, now=now)

    def claim_queued(self, request_id: str, *, now: float, lease: int) -> StoredDelivery | None:
        """A Celery worker takes a queued delivery (or one whose worker died); ``None`` if another
        worker holds it or it is already done."""
        self.owed.flush()
        return queue.claim_queued(self._db, request_id, now=now, lease=lease)

    def requeue(self, request_id: str, *, now: float, error: str) -> None:
        """Put a delivery whose receivers raised back in the queue for a later retry."""
        queue.requeue(self._db, request_id, now=now, error=error)

    def sweepable(
        self, *, now: float, unqueued_after: int, lease: int, stalled_after: int
    ) -> list[str]:
        """RequestIDs a sweep must enqueue (again), oldest first (see :func:`.queue.sweepable`)."""
        return queue.sweepable(
            self._db,
            now=now,
            unqueued_after=unqueued_after,
            lease=lease,
            stalled_after=stalled_after,
        )

    def queued_request_ids(self, *, enqueued_before: float) -> list[str]:
        """Queued deliveries enqueued at or before then, oldest first (see
        :func:`flask_callbot.celery_dispatch.lost_with_workers`)."""
        return queue.queued_request_ids(self._db, enqueued_before=enqueued_before)

    def prune(
        self, *, before: datetime, include_failed: bool = False, batch_size: int = 1000
    ) -> Iterator[int]:
        """Delete deliveries received before ``before``, a batch per transaction.

        Yields the number deleted by each batch (for progress). Deliveries in progress are always
        kept, failed ones unless ``include_failed``: they are what ``replay --failed`` works on.
        """
        return queries.prune(
            self._db, before=before, include_failed=include_failed, batch_size=batch_size
        )

    def peek_schema_version(self) -> int | None:
        """The schema version without creating or upgrading the tables (see Database)."""
        return self._db.peek_schema_version()

    def create_schema(self) -> None:
        """Create or upgrade the tables to :data:`~.schema.SCHEMA_VERSION` through the callbot
        Alembic branch (idempotent, safe across hosts), even with ``manage_schema`` off; a
        database written by a newer flask_callbot is refused."""
        self._db.create_schema()

    def peek_schema_revision(self) -> str | None:
        """The callbot Alembic revision of the tables, creating nothing (``None``: none yet, or
        made before Alembic)."""
        return self._db.peek_schema_revision()

    def schema_problem(self) -> str | None:
        """What keeps the tables from serving this package, read without changing anything
        (``None``: nothing); see :func:`~.schema.version_problem`."""
        return version_problem(self._db.peek_schema_version())

    def dispose(self) -> None:
        self.owed.close()
        self._db.dispose()
