"""Reads never wait for writers: the dashboard, the CLI and metrics stay off the hot path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flask import Flask

from flask_callbot import CallbackKind, DeliveryState, StoreReader, TaskStatus, get_store
from flask_callbot.state import get_state
from flask_callbot.testing import call_payload, order_payload, task_payload

from support import Clock, Sender, assert_reply


def test_a_read_does_not_wait_for_a_writer(
    make_app: Callable[..., Flask], sender: Sender, tmp_path: object
) -> None:
    app = make_app()
    client = Sender(app.test_client(), sender.clock)
    assert_reply(client.post("task", task_payload(taskStatus=5), request_id="r"), 200, 0)
    store = get_store(app)
    database = get_state(app).store.db
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with database.writing() as conn:  # holds the write turn and lock
            conn.exec_driver_sql("UPDATE callbot_tasks SET scene_id = 'busy'")
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        task = store.get_task("T100")
        deliveries = store.list_deliveries()
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(10)
    assert task is not None and task.status is TaskStatus.PAUSED
    assert task.scene_id == "S7"  # the snapshot before the uncommitted write
    assert [d.request_id for d in deliveries] == ["r"]
    assert waited < 5  # a reader that queued behind the writer would wait the full 10 s


#: The write side, and the engine that would allow writing: none of it on a reader.
WRITE_SIDE = (
    "record",
    "finish",
    "claim_for_replay",
    "claim_queued",
    "mark_enqueued",
    "requeue",
    "sweepable",
    "prune",
    "create_schema",
    "dispose",
    "engine",
    "db",
)


def test_host_code_gets_a_reader_that_cannot_write(app: Flask, sender: Sender) -> None:
    assert_reply(sender.post("task", task_payload(taskStatus=3), request_id="r"), 200, 0)
    reader = get_store(app)
    assert type(reader) is StoreReader
    assert reader is get_state(app).store.reader
    assert [name for name in WRITE_SIDE if hasattr(reader, name)] == []
    assert all(hasattr(get_state(app).store, name) for name in WRITE_SIDE)
    task = reader.get_task("T100")
    assert task is not None and task.status is TaskStatus.COMPLETED
    assert reader.get_delivery("r").outcome is DeliveryState.PROCESSED
    assert [d.request_id for d in reader.list_deliveries()] == ["r"]
    assert [t.task_id for t in reader.list_tasks()] == ["T100"]
    assert (reader.failed_request_ids(), reader.count_failed()) == ([], 0)
    assert reader.get_schema_version() == 3


def test_list_orders_newest_first_by_task_and_by_kind(
    app: Flask, sender: Sender, clock: Clock
) -> None:
    assert_reply(sender.post("call", call_payload(orderID="o1"), request_id="c1"), 200, 0)
    clock.now += 1
    assert_reply(sender.post("order", order_payload(orderID="o2"), request_id="o2"), 200, 0)
    clock.now += 1
    other = order_payload(orderID="o3", taskID="T200")
    assert_reply(sender.post("order", other, request_id="o3"), 200, 0)
    reader = get_store(app)
    assert [o.order_id for o in reader.list_orders()] == ["o3", "o2", "o1"]
    assert [o.order_id for o in reader.list_orders(task_id="T200")] == ["o3"]
    finished = reader.list_orders(kind=CallbackKind.ORDER)
    assert [(o.order_id, o.last_kind) for o in finished] == [
        ("o3", CallbackKind.ORDER),
        ("o2", CallbackKind.ORDER),
    ]
    assert [o.order_id for o in reader.list_orders(limit=1)] == ["o3"]


def test_deliveries_are_counted_per_task_and_kind(app: Flask, sender: Sender, clock: Clock) -> None:
    assert_reply(sender.post("task", task_payload(), request_id="t1"), 200, 0)
    assert_reply(sender.post("call", call_payload(orderID="o1"), request_id="c1"), 200, 0)
    assert_reply(sender.post("call", call_payload(orderID="o1"), request_id="c1"), 200, 0)
    clock.now += 1
    assert_reply(sender.post("call", call_payload(orderID="o1"), request_id="c2"), 200, 0)
    assert_reply(sender.post("order", order_payload(orderID="o1"), request_id="o1"), 200, 0)
    other = order_payload(orderID="o9", taskID="T200")
    assert_reply(sender.post("order", other, request_id="o9"), 200, 0)
    reader = get_store(app)
    assert reader.count_deliveries("T100") == {
        CallbackKind.TASK: 1,
        CallbackKind.ORDER: 1,
        CallbackKind.CALL: 2,  # the duplicate of c1 is not counted again
    }
    assert reader.count_deliveries("T200")[CallbackKind.ORDER] == 1
    assert set(reader.count_deliveries("none").values()) == {0}
