"""Reads never wait for writers: the dashboard, the CLI and metrics stay off the hot path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flask import Flask

from flask_callbot import TaskStatus, get_store
from flask_callbot.testing import task_payload

from support import Sender, assert_reply


def test_a_read_does_not_wait_for_a_writer(
    make_app: Callable[..., Flask], sender: Sender, tmp_path: object
) -> None:
    app = make_app()
    client = Sender(app.test_client(), sender.clock)
    assert_reply(client.post("task", task_payload(taskStatus=5), request_id="r"), 200, 0)
    store = get_store(app)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store._transaction() as conn:  # holds the write turn and lock
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
