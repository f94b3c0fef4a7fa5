"""Without ``fcntl`` or fork (Windows) flask_callbot imports, and a file SQLite store still
records and processes callbacks: writers fall back to SQLite's own locking (busy timeout, BEGIN
IMMEDIATE)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support import run_script

#: What Windows lacks, taken away before anything is imported.
WINDOWS = """
import os, sys
sys.modules["fcntl"] = None  # `import fcntl` raises ImportError
del os.fork, os.register_at_fork  # no fork, nor its hook
"""

SCRIPT = """
import json, os, sys, threading
from flask import Flask
from flask_callbot import create_blueprint, get_store, signals
from flask_callbot.store import writer
from flask_callbot.testing import CallbotClient, order_payload, task_payload

database = sys.argv[1]
app = Flask("no_fcntl", instance_path=os.path.dirname(database))
app.config.update(
    CALLBOT_SECRET_KEY="s", CALLBOT_UUID="u", CALLBOT_DATABASE_URL="sqlite:///" + database
)
app.register_blueprint(create_blueprint())
received, replies = [], []
signals.callback_received.connect(
    lambda sender, event, **extra: received.append(event.request_id), app, weak=False
)

def post(worker):
    client = CallbotClient.for_app(app)
    for n in range(5):
        payload = task_payload(taskID=f"T{n}", taskStatus=2 + worker % 2)
        replies.append(client.post("task", payload, request_id=f"w{worker}-{n}").status_code)
    replies.append(client.post("order", order_payload(), request_id=f"o{worker}").status_code)

threads = [threading.Thread(target=post, args=(worker,)) for worker in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({
    "fcntl": writer.fcntl is not None,
    "writer_lock_file": os.path.exists(database + ".writer-lock"),
    "replies": replies,
    "received": sorted(received),
    "stored": sorted(
        (d.request_id, d.outcome.value) for d in get_store(app).list_deliveries(limit=None)
    ),
    "tasks": len(get_store(app).list_tasks()),
}))
"""


def run(database: Path, *, without_fcntl: bool) -> dict[str, object]:
    script = (WINDOWS if without_fcntl else "") + SCRIPT
    return json.loads(run_script(script, str(database)))  # type: ignore[no-any-return]


def test_a_file_store_records_and_processes_without_fcntl(tmp_path: Path) -> None:
    found = run(tmp_path / "callbot.sqlite3", without_fcntl=True)
    assert found["fcntl"] is False
    assert found["writer_lock_file"] is False  # no writers' turn: SQLite's locking alone
    assert found["replies"] == [200] * 24
    expected = sorted(
        [f"w{w}-{n}" for w in range(4) for n in range(5)] + [f"o{w}" for w in range(4)]
    )
    assert found["received"] == expected
    assert found["stored"] == [[request_id, "processed"] for request_id in expected]
    assert found["tasks"] == 5


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl is POSIX-only")
def test_with_fcntl_writers_take_turns_through_the_lock_file(tmp_path: Path) -> None:
    """The control: the same run on POSIX uses the flock'd side file."""
    found = run(tmp_path / "callbot.sqlite3", without_fcntl=False)
    assert (found["fcntl"], found["writer_lock_file"]) == (True, True)
    assert found["replies"] == [200] * 24
