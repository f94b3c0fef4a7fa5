"""Reconciliation: bring the store level with what the vendor's API says, through the callbacks'
own path.

The vendor documents no retries, so a callback sent while the receiver was down is gone. The
reconciler asks the vendor (listTask; with ``orders``, listOrder and listOrderDetail) about each
task, compares, and records every difference as a delivery of its own, with
``source="reconcile"``, through :func:`~flask_callbot.pipeline.record_and_dispatch`: one
transaction records and applies it (the never-backwards rule included), then the same signals,
with the same ``previous``, inline or on Celery workers.

Idempotent by construction. A reconciled delivery's requestID is derived from what it says and
from the stored state it corrects, so two runs (a cron line and a beat task racing) record it
once. A callback arriving afterwards with nothing newer sends no transition, order or call
signal again: a task update older than the listing is stale, and an order or call already
reported is not news (see :mod:`flask_callbot.store.ingest`).

The listing's time is the reconciled deliveries' request time. A reconciled task update never
wins a tie: a callback stamped in the listing's second is at least as fresh as the listing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask

from .client import TASK_IDS_PER_QUERY, ApiError, CallbotAPI
from .errors import DeliveryInProgress, InvalidField, MissingField, ReceiverFailed
from .events import CallbackKind, TaskEvent, TaskStat
from .pipeline import record_and_dispatch
from .schemas import build_event
from .state import CallbotState, get_state
from .store import NewDelivery, TaskState
from .store.records import STAT_COLUMNS
from .wire import serialize

logger = logging.getLogger("flask_callbot")

#: The requestID prefix of reconciled deliveries: the vendor's are random hex, never this.
REQUEST_ID_PREFIX = "reconcile-"

#: What callbacks already reported of a task: orderIDs (order callbacks) and
#: ``(orderID, callID)`` pairs (call callbacks); see ``StoreReader.reported``.
Reported = tuple[set[str], set[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Planned:
    """A delivery the reconciler means to record: what a missed callback would have carried."""

    kind: CallbackKind
    payload: dict[str, Any]
    #: What differed: ``"IN_PROGRESS -> COMPLETED"``, ``"statistics"``, ``"missed call"``, ...
    change: str
    user_task_id: str
    task_id: str
    order_id: str | None = None
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference between the store and the vendor, and what was done about it."""

    planned: Planned
    request_id: str
    #: ``recorded`` (and signalled or enqueued), ``stale``, ``already recorded``, ``would
    #: record`` (dry run), ``receiver failed`` (kept as failed: replay it), ``busy``.
    result: str


@dataclass
class Report:
    """What one run looked at, found and could not do."""

    tasks_checked: int = 0
    orders_checked: int = 0
    calls_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: One line per task the vendor could not be asked about: nothing of that task was applied.
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``flask callbot reconcile --json``)."""
        return {
            "tasks_checked": self.tasks_checked,
            "orders_checked": self.orders_checked,
            "calls_checked": self.calls_checked,
            "findings": [
                {
                    "kind": f.planned.kind.value,
                    "user_task_id": f.planned.user_task_id,
                    "task_id": f.planned.task_id,
                    "order_id": f.planned.order_id,
                    "call_id": f.planned.call_id,
                    "change": f.planned.change,
                    "result": f.result,
                    "request_id": f.request_id,
                }
                for f in self.findings
            ],
            "errors": list(self.errors),
        }


def api_client(app: Flask, **options: Any) -> CallbotAPI:
    """A client of the vendor's API as ``app``'s ``CALLBOT_API_*`` settings describe it, on the
    app's clock (the one its deliveries are stamped with)."""
    state = get_state(app)
    return CallbotAPI.from_settings(state.settings.api, **{"clock": state.clock, **options})


def reconcile(
    app: Flask,
    api: CallbotAPI,
    *,
    user_task_ids: Sequence[str] | None = None,
    since: datetime | None = None,
    orders: bool = False,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Ask the vendor about tasks and record every difference as a delivery (see the module).

    Vendor errors (after the client's retries) are reported per task and leave that task
    untouched; a store or queue outage stops the run (it raises).

    :param app: the app whose store is reconciled.
    :param api: the vendor's API client (:func:`api_client` builds it from the settings).
    :param user_task_ids: these tasks; default every task the store knows whose last applied
        status is not final.
    :param since: without ``user_task_ids``, only the tasks updated at or after this time.
    :param orders: also the tasks' orders and calls.
    :param dry_run: find the differences, record nothing.
    :param progress: called with each userTaskID as it is done.
    :returns: what was looked at, found and could not be done.

    .. versionadded:: 0.1.0
    """
    state = get_state(app)
    report = Report()
    targets = list(user_task_ids) if user_task_ids is not None else _unfinished(state, since)
    for batch in _chunks(list(dict.fromkeys(targets)), TASK_IDS_PER_QUERY):
        listed_at = int(state.clock())
        try:
            found = {str(item.get("userTaskID")): item for item in api.list_tasks(batch)}
        except ApiError as exc:
            report.errors.extend(f"{user_task_id}: {exc}" for user_task_id in batch)
            _progress(progress, batch)
            continue
        for user_task_id in batch:
            vendor = found.get(user_task_id)
            if vendor is None:
                report.errors.append(f"{user_task_id}: the vendor's listTask does not have it")
            else:
                _reconcile_task(app, state, api, vendor, listed_at, orders, dry_run, report)
            _progress(progress, [user_task_id])
    return report


def _unfinished(state: CallbotState, since: datetime | None) -> list[str]:
    tasks = state.store.unfinished_tasks(since=since)
    return [task.user_task_id for task in tasks if task.user_task_id]


def _reconcile_task(
    app: Flask,
    state: CallbotState,
    api: CallbotAPI,
    vendor: dict[str, Any],
    listed_at: int,
    orders: bool,
    dry_run: bool,
    report: Report,
) -> None:
    """Find a task's differences, then record them: its calls and orders first, the task last
    (the order the vendor sends them in), or nothing when the vendor could not be asked."""
    user_task_id = str(vendor.get("userTaskID"))
    report.tasks_checked += 1
    try:
        event = _task_event(vendor)
        stored = state.store.get_task(event.task_id)
        planned: list[tuple[Planned, str]] = []
        if orders:
            orders_listed_at = int(state.clock())
            details = _order_details(api, user_task_id)
            report.orders_checked += len(details)
            report.calls_checked += sum(len(_calls(order)) for order in details)
            reported = state.store.reported(event.task_id)
            planned += [
                (p, "-") for p in plan_orders(event.task_id, user_task_id, details, reported)
            ]
        else:
            orders_listed_at = listed_at
        task_plan = plan_task(stored, vendor, event, listed_at)
        if task_plan is not None:
            planned.append((task_plan, (stored.last_request_id if stored else None) or "-"))
        deliveries = [
            _delivery(
                plan, basis, listed_at if plan.kind is CallbackKind.TASK else orders_listed_at
            )
            for plan, basis in planned
        ]
    except ApiError as exc:
        report.errors.append(f"{user_task_id}: {exc}")
        return
    except (MissingField, InvalidField) as exc:  # the vendor's data fails the callbacks' schema
        report.errors.append(f"{user_task_id}: the vendor's data is refused: {exc.message}")
        return
    for (plan, _), delivery in zip(planned, deliveries, strict=True):
        report.findings.append(_record(app, state, plan, delivery, dry_run))


def plan_task(
    stored: TaskState | None, vendor: dict[str, Any], event: TaskEvent, listed_at: int
) -> Planned | None:
    """The task delivery that brings ``stored`` level with the vendor's listTask object, if any.

    A difference in status or in any statistic counts; a task the store never saw is recorded
    as its first sighting. A task the store heard of in or after the listing's second is left
    alone: what it has is at least as fresh.
    """
    if stored is not None:
        if stored.status_request_ts is not None and stored.status_request_ts >= listed_at:
            return None
        same_status = stored.status is not None and int(stored.status) == int(event.status)
        if same_status and _stats(event.stat) == stored.stats:
            return None
        change = (
            "statistics"
            if same_status
            else f"{_status_name(stored.status)} -> {_status_name(event.status)}"
        )
    else:
        change = f"first sighting: {_status_name(event.status)}"
    return Planned(
        kind=CallbackKind.TASK,
        payload={"callbackType": 1, **vendor},
        change=change,
        user_task_id=event.user_task_id,
        task_id=event.task_id,
    )


def plan_orders(
    task_id: str, user_task_id: str, details: Iterable[dict[str, Any]], reported: Reported
) -> list[Planned]:
    """The call and order deliveries the store never got, from listOrderDetail objects.

    A call never reported by a call callback is a missed call; a finished order never reported
    by an order callback is a missed order, carrying its last call (by start time). Calls come
    first, in start order, then their order.
    """
    reported_orders, reported_calls = reported
    planned: list[Planned] = []
    for order in details:
        fields = {key: value for key, value in order.items() if key != "callInfoDetailList"}
        fields.setdefault("taskID", task_id)
        fields.setdefault("userTaskID", user_task_id)
        order_id = str(fields.get("orderID"))
        calls = _calls(order)
        for call in calls:
            if (order_id, str(call["callID"])) not in reported_calls:
                planned.append(_order_or_call(CallbackKind.CALL, fields, call, "missed call"))
        if calls and order.get("finish") is True and order_id not in reported_orders:
            planned.append(_order_or_call(CallbackKind.ORDER, fields, calls[-1], "missed order"))
    return planned


def reconciled_request_id(planned: Planned, basis: str) -> str:
    """A requestID the vendor never uses, the same for the same correction of the same state.

    ``basis`` names the stored state corrected (a task's last applied requestID), so a task that
    returns to a status it had before gets a new requestID, not a duplicate of the old one.
    """
    material = json.dumps([planned.kind.value, basis, planned.payload], sort_keys=True)
    return REQUEST_ID_PREFIX + hashlib.sha256(material.encode()).hexdigest()[:40]


def _delivery(planned: Planned, basis: str, at: int) -> NewDelivery:
    """The delivery recording ``planned``, stamped ``at`` (validated as a callback would be)."""
    request_id = reconciled_request_id(planned, basis)
    event = build_event(
        planned.kind, planned.payload, request_id=request_id, request_ts=at, source="reconcile"
    )
    return NewDelivery(
        request_id=request_id,
        kind=planned.kind,
        request_ts=at,
        headers={"requestID": request_id, "createTs": str(at)},
        body=serialize(planned.payload, "compact"),
        event=event,
        source="reconcile",
    )


def _record(
    app: Flask, state: CallbotState, planned: Planned, delivery: NewDelivery, dry_run: bool
) -> Finding:
    request_id = delivery.request_id
    if dry_run:
        return Finding(planned, request_id, "would record")
    try:
        result = _RESULTS.get(record_and_dispatch(app, state, delivery).value, "recorded")
    except ReceiverFailed:
        result = "receiver failed"
    except DeliveryInProgress:
        result = "busy"
    logger.info(
        "callbot reconcile request_id=%s kind=%s task_id=%s change=%s result=%s",
        request_id,
        planned.kind.value,
        planned.task_id,
        planned.change,
        result,
    )
    return Finding(planned, request_id, result)


#: How a pipeline result reads in a report (anything else: ``recorded``).
_RESULTS = {"stale": "stale", "duplicate": "already recorded", "already_enqueued": "recorded"}


def _task_event(vendor: dict[str, Any]) -> TaskEvent:
    event = build_event(CallbackKind.TASK, vendor, request_id="-", request_ts=0)
    assert isinstance(event, TaskEvent)  # noqa: S101 - build_event's type for TASK
    return event


def _order_details(api: CallbotAPI, user_task_id: str) -> list[dict[str, Any]]:
    order_ids = [str(order.get("orderID")) for order in api.list_orders(user_task_id)]
    return list(api.list_order_details(user_task_id, order_ids)) if order_ids else []


def _calls(order: dict[str, Any]) -> list[dict[str, Any]]:
    """An order's calls with an id, in start order (its last call last)."""
    calls = [
        call
        for call in order.get("callInfoDetailList") or ()
        if isinstance(call, dict) and call.get("callID")
    ]
    return sorted(calls, key=lambda call: (call.get("callStartTs") or 0, str(call["callID"])))


def _order_or_call(
    kind: CallbackKind, fields: dict[str, Any], call: dict[str, Any], change: str
) -> Planned:
    return Planned(
        kind=kind,
        payload={
            "callbackType": 2 if kind is CallbackKind.ORDER else 3,
            **fields,
            "callInfoDetail": call,
        },
        change=change,
        user_task_id=str(fields.get("userTaskID")),
        task_id=str(fields.get("taskID")),
        order_id=str(fields.get("orderID")),
        call_id=str(call["callID"]),
    )


def _stats(stat: TaskStat | None) -> dict[str, int | float | None]:
    return {name: getattr(stat, name) if stat else None for name in STAT_COLUMNS}


def _status_name(status: Any) -> str:
    if status is None:
        return "none"
    return getattr(status, "name", None) or str(status)


def _chunks(values: list[str], size: int) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


def _progress(progress: Callable[[str], None] | None, done: Iterable[str]) -> None:
    if progress is not None:
        for user_task_id in done:
            progress(user_task_id)
