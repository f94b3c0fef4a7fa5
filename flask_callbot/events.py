"""What receivers get: frozen dataclasses for each callback, the task status enum, transitions.

Attributes are the vendor's camelCase fields in snake_case. Every field but the required ids may
be ``None``: the vendor's payloads drift. ``raw`` keeps the whole decoded JSON, unknown fields
included, for anything the dataclasses do not name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TaskStatus(enum.IntEnum):
    """``taskStatus`` values documented by the vendor."""

    PENDING = 1
    IN_PROGRESS = 2
    COMPLETED = 3
    FAILED = 4
    PAUSED = 5


class CallbackKind(enum.StrEnum):
    """Which callback a delivery is; it comes from the route, never from ``callbackType``."""

    TASK = "task"
    ORDER = "order"
    CALL = "call"


def coerce_status(value: int | None) -> TaskStatus | int | None:
    """A known status as :class:`TaskStatus`, an unknown one kept as the plain int."""
    if value is None:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStat:
    """``taskStat``: the task's counters and rates as the vendor reports them."""

    answer_order_count: int | None = None
    finish_order_count: int | None = None
    total_order_count: int | None = None
    finish_rate: float | None = None
    total_answer_call: int | None = None
    total_call: int | None = None
    answer_rate: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent:
    """One task callback: the task's status and statistics at ``request_ts``."""

    request_id: str
    request_ts: int
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)
    task_id: str
    user_task_id: str
    status: TaskStatus | int
    scene_id: str | None = None
    create_ts: int | None = None
    stat: TaskStat | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """What a task delivery did to the task's tracked state, computed once and stored with it.

    ``applied`` is false for a stale delivery (older than the last applied one); ``changed`` is true
    when the status differs from ``previous`` (``None`` on the task's first sighting).
    """

    previous: TaskStatus | int | None
    status: TaskStatus | int
    applied: bool
    changed: bool
