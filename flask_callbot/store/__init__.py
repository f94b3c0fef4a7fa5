"""The durable record: every authentic delivery, and each task's and order's last applied state.

SQLAlchemy Core, the same code for SQLite (one host) and PostgreSQL (shared by many). One module
per concern: ``schema`` (tables, versions, upgrades), ``engine`` (engine, transactions),
``writer`` (SQLite's writers' turn), ``connections`` (the hot path's connections), ``records``
(states, verdicts, dataclasses), ``ingest`` (the hot path), ``queue`` (Celery's
bookkeeping), ``queries`` (reads, counts, prune), ``claims`` (the lease predicate), ``api``
(:class:`StoreReader` and :class:`Store`). The tables are made and upgraded by the Alembic
branch in ``flask_callbot.migrations``, run by ``migrate``; ``legacy`` takes over databases made
before it.
"""

from __future__ import annotations

from .api import Store, StoreReader
from .claims import is_abandoned
from .engine import Database, create_engine
from .records import (
    Claim,
    ClaimVerdict,
    DeliveryState,
    NewDelivery,
    OrderState,
    StoredDelivery,
    TaskState,
)
from .schema import HEAD_REVISION, SCHEMA_VERSION, deliveries, metadata, orders, tasks

__all__ = [
    "HEAD_REVISION",
    "SCHEMA_VERSION",
    "Claim",
    "ClaimVerdict",
    "Database",
    "DeliveryState",
    "NewDelivery",
    "OrderState",
    "Store",
    "StoreReader",
    "StoredDelivery",
    "TaskState",
    "create_engine",
    "deliveries",
    "is_abandoned",
    "metadata",
    "orders",
    "tasks",
]
