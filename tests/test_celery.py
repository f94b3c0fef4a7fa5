"""Celery dispatch against a real broker (Redis) and a real Celery worker process.

Selected by ``CALLBOT_TEST_REDIS_URL`` (``.ci/run`` sets it to the machine's Redis). The web
side is the served test app in this process; the worker runs ``served_celery`` with the same
store. Every process appends the signals it sends, with its pid, to one log file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_callbot import get_store
from flask_callbot.state import get_state
from flask_callbot.testing import CallbotClient, record_signals, task_payload

from support import SECRET, UUID, CuttableLink, assert_reply, order_call_payload

BROKER_URL = os.environ.get("CALLBOT_TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(
    not BROKER_URL, reason="set CALLBOT_TEST_REDIS_URL to run the Celery tests"
)
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Deployment:
    """One store, one queue, one Celery worker process; web apps made on demand."""

    env: dict[str, str]
    worker: subprocess.Popen[bytes]
    log_path: Path
    make_web: Callable[..., Flask]

    def signals(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def signals_for(self, request_id: str) -> Counter[str]:
        return Counter(s["signal"] for s in self.signals() if s["request_id"] == request_id)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    assert BROKER_URL
    folder = tmp_path_factory.mktemp("celery")
    (folder / "markers").mkdir()
    env = {
        "PYTHONPATH": str(ROOT),
        "CALLBOT_SECRET_KEY": SECRET,
        "CALLBOT_UUID": UUID,
        "SERVED_DATABASE_URL": f"sqlite:///{folder / 'callbot.sqlite3'}",
        "SERVED_SIGNAL_LOG": str(folder / "signals.jsonl"),
        "SERVED_MARKERS": str(folder / "markers"),
        "SERVED_BROKER_URL": BROKER_URL,
        "SERVED_QUEUE": f"callbot-test-{uuid.uuid4().hex[:8]}",
        "SERVED_MAX_RETRIES": "1",
    }
    worker = start_worker(
        folder / "worker.log", env, "--concurrency=2", "--queues", env["SERVED_QUEUE"]
    )
    wait_until_ready(worker, folder / "worker.log")
    webs: list[Flask] = []

    def make_web(**overrides: str) -> Flask:
        import served_app

        with pytest.MonkeyPatch.context() as patch:
            for key, value in {**env, **overrides}.items():
                patch.setenv(key, value)
            web = served_app.create_app()
        webs.append(web)
        return web

    yield Deployment(env, worker, Path(env["SERVED_SIGNAL_LOG"]), make_web)
    stop_worker(worker)
    for web in webs:
        get_state(web).store.dispose()
        web.extensions["celery"].close()


def start_worker(
    log_path: Path, env: dict[str, str], *args: str, session: bool = False
) -> subprocess.Popen[bytes]:
    """A Celery worker process on the served test app, logging to ``log_path``; ``session``: in
    a process group of its own, to be killed whole."""
    with log_path.open("wb") as log:
        return subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "served_celery",
                "worker",
                "--loglevel=INFO",
                "--pool=prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *args,
            ],
            cwd=ROOT / "tests",
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=session,
        )


def wait_until_ready(worker: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while b"ready." not in log_path.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log_path.read_text())
        time.sleep(0.2)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def post(web: Flask, kind: str, payload: dict[str, Any], request_id: str) -> Any:
    return CallbotClient.for_app(web).post(kind, payload, request_id=request_id)


def wait_for(web: Flask, request_id: str, outcome: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        delivery = get_store(web).get_delivery(request_id)
        if delivery is not None and delivery.outcome == outcome:
            return delivery
        assert time.monotonic() < deadline, f"{request_id}: {delivery}"
        time.sleep(0.1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_replies_at_once_and_signals_fire_in_the_worker(deployment: Deployment) -> None:
    web = deployment.make_web()
    ids = {kind: unique(kind) for kind in ("task", "order", "call")}
    payloads = {
        "task": task_payload(taskID=unique("T"), taskStatus=2),
        "order": order_call_payload(orderID=unique("o")),
        "call": order_call_payload(orderID=unique("o")),
    }
    with record_signals(sender=web) as in_web:
        for kind, request_id in ids.items():
            body = assert_reply(post(web, kind, payloads[kind], request_id), 200, 0)
            assert body["retMsg"] == "queued"
    assert in_web == []  # nothing ran in the web process
    for request_id in ids.values():
        delivery = wait_for(web, request_id, "processed")
        assert delivery.attempts == 1
        assert delivery.enqueued_at is not None
    assert deployment.signals_for(ids["task"]) == {
        "callback-received": 1,
        "task-status-changed": 1,
        "task-started": 1,
        "task-progress": 1,
    }
    assert deployment.signals_for(ids["order"]) == {"callback-received": 1, "order-received": 1}
    assert deployment.signals_for(ids["call"]) == {"callback-received": 1, "call-received": 1}
    pids = {s["pid"] for s in deployment.signals() if s["request_id"] in ids.values()}
    assert os.getpid() not in pids
    assert deployment.worker.pid not in pids  # prefork: the worker's child processes


def test_a_duplicate_of_a_queued_delivery_is_acknowledged(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    web = deployment.make_web()
    request_id = unique("dup")
    payload = task_payload(taskID=unique("T"), taskStatus=1)
    caplog.set_level(logging.INFO, logger="flask_callbot")
    assert_reply(post(web, "task", payload, request_id), 200, 0)
    again = assert_reply(post(web, "task", payload, request_id), 200, 0)
    assert again["retMsg"] in {"already queued", "duplicate delivery: already processed"}
    outcomes = [r.callbot["outcome"] for r in caplog.records if hasattr(r, "callbot")]
    assert outcomes[0] == "enqueued"
    assert outcomes[1] == (
        "already_enqueued" if again["retMsg"] == "already queued" else "duplicate"
    )
    wait_for(web, request_id, "processed")
    assert_reply(post(web, "task", payload, request_id), 200, 0)
    time.sleep(0.5)
    assert deployment.signals_for(request_id)["callback-received"] == 1


def test_a_failing_receiver_is_retried_then_succeeds(deployment: Deployment) -> None:
    web = deployment.make_web()
    request_id = unique("flaky")
    payload = task_payload(taskID=unique("T"), taskStatus=2, testFailOnce=True)
    assert_reply(post(web, "task", payload, request_id), 200, 0)
    delivery = wait_for(web, request_id, "processed")
    assert (delivery.attempts, delivery.error) == (2, None)
    # Logged before the retry is scheduled, so before the second attempt marks it processed.
    worker_log = (deployment.log_path.parent / "worker.log").read_text()
    assert f"callbot: worker retrying request_id={request_id}" in worker_log
    # The failing receiver is the callback-received recorder: it raised before writing the
    # first time, so the later signals of that attempt are logged too.
    assert deployment.signals_for(request_id) == {
        "callback-received": 1,
        "task-status-changed": 2,
        "task-started": 2,
        "task-progress": 2,
    }


def test_past_the_retries_it_is_failed_and_replay_finishes_it(deployment: Deployment) -> None:
    web = deployment.make_web()
    request_id = unique("broken")
    payload = task_payload(taskID=unique("T"), testFailAlways=True)
    assert_reply(post(web, "task", payload, request_id), 200, 0)
    delivery = wait_for(web, request_id, "failed")
    assert delivery.attempts == 2  # the first try and CALLBOT_CELERY_MAX_RETRIES=1 retry
    assert "injected permanent receiver failure" in delivery.error
    result = web.test_cli_runner().invoke(args=["callbot", "replay", "--failed"])
    assert result.exit_code == 1  # the receiver still fails: reported, not hidden
    assert f"{request_id}: failed" in result.output


def test_broker_down_gives_503_and_nothing_is_lost(deployment: Deployment) -> None:
    broker = sa.make_url(BROKER_URL or "")
    link = CuttableLink(broker.port or 6379)
    link.up()
    linked = broker.set(port=link.port).render_as_string(hide_password=False)
    web = deployment.make_web(SERVED_BROKER_URL=linked)
    try:
        warm = unique("warm")
        assert_reply(post(web, "task", task_payload(taskID=unique("T")), warm), 200, 0)
        link.down()
        redelivered, swept = unique("redelivered"), unique("swept")
        payloads = {
            redelivered: task_payload(taskID=unique("T"), taskStatus=1),
            swept: order_call_payload(orderID=unique("o")),
        }
        assert_reply(post(web, "task", payloads[redelivered], redelivered), 503, 7)
        assert_reply(post(web, "order", payloads[swept], swept), 503, 7)
        for request_id in (redelivered, swept):
            orphan = get_store(web).get_delivery(request_id)
            assert (orphan.outcome, orphan.enqueued_at) == ("queued", None)
        link.up()
        # The vendor retries one of them ...
        assert_reply(post(web, "task", payloads[redelivered], redelivered), 200, 0)
        wait_for(web, redelivered, "processed")
        # ... the other is found by the sweep.
        result = web.test_cli_runner().invoke(args=["callbot", "sweep", "--older-than", "0s"])
        assert result.exit_code == 0, result.output
        assert f"{swept}: enqueued" in result.output
        wait_for(web, swept, "processed")
    finally:
        link.down()
    for request_id in (warm, redelivered, swept):
        assert deployment.signals_for(request_id)["callback-received"] == 1


def wait(condition: Callable[[], Any], failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def test_a_killed_worker_s_reserved_deliveries_are_swept_and_processed_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A worker prefetching four messages (Celery's default multiplier) is SIGKILLed while it
    runs one: the default sweep enqueues the one it ran (past the lease) and those it had
    reserved (Redis gives them back only after an hour), and each is processed once."""
    queue = unique("callbot-kill")
    env = {**deployment.env, "SERVED_QUEUE": queue, "SERVED_PROCESSING_TIMEOUT": "3"}
    names = {role: f"{role}-{uuid.uuid4().hex[:6]}@callbot" for role in ("dying", "survivor")}
    logs = {role: tmp_path / f"{role}.log" for role in names}
    dying = start_worker(
        logs["dying"], env, "-n", names["dying"], "--concurrency=1", "--prefetch-multiplier=4",
        "--queues", queue, session=True,
    )  # fmt: skip
    survivor = start_worker(
        logs["survivor"], env, "-n", names["survivor"], "--concurrency=2",
        "--queues", f"{queue}-later",
    )  # fmt: skip
    try:
        wait_until_ready(dying, logs["dying"])
        wait_until_ready(survivor, logs["survivor"])
        web = deployment.make_web(SERVED_QUEUE=queue, SERVED_PROCESSING_TIMEOUT="3")
        control = web.extensions["celery"].control
        ids = [unique("held") for _ in range(6)]
        payloads = {ids[0]: task_payload(taskID=unique("T"), testHang=True)}
        assert_reply(post(web, "task", payloads[ids[0]], ids[0]), 200, 0)
        hang = Path(env["SERVED_MARKERS"]) / f"hang-{ids[0]}"
        wait(lambda: hang.exists() and hang.read_text(), "the worker never ran the first one")
        for request_id in ids[1:]:
            payloads[request_id] = order_call_payload(orderID=unique("o"))
            assert_reply(post(web, "order", payloads[request_id], request_id), 200, 0)

        def reserved() -> set[str]:
            replies = control.inspect(destination=[names["dying"]], timeout=1).reserved() or {}
            return {r["args"][0] for requests in replies.values() for r in requests}

        wait(lambda: len(reserved()) == 3, "the worker did not prefetch three")
        held = reserved()
        os.killpg(dying.pid, signal.SIGKILL)
        killed = time.monotonic()
        dying.wait()
        control.add_consumer(queue, destination=[names["survivor"]], reply=True, timeout=5)
        for request_id in set(ids[1:]) - held:  # left in the queue: the survivor takes them
            wait_for(web, request_id, "processed")
        store = get_store(web)
        assert store.get_delivery(ids[0]).outcome == "pending"
        assert {store.get_delivery(request_id).outcome for request_id in held} == {"queued"}

        # Past the lease, the vendor's redelivery of one enqueues it again ...
        time.sleep(max(0.0, hang.stat().st_mtime + 3.5 - time.time()))
        redelivered, *swept = sorted(held)
        again = assert_reply(post(web, "order", payloads[redelivered], redelivered), 200, 0)
        assert again["retMsg"] == "queued"
        wait_for(web, redelivered, "processed")
        # ... and the default sweep, a minute on, finds the rest.
        later = time.time() + 61
        web.extensions["callbot"] = dataclasses.replace(get_state(web), clock=lambda: later)
        result = web.test_cli_runner().invoke(args=["callbot", "sweep"])
        assert result.exit_code == 0, result.output
        assert sorted(line.split(":")[0] for line in result.output.splitlines()[:-1]) == sorted(
            [ids[0], *swept]
        )
        for request_id in ids:
            wait_for(web, request_id, "processed")
        elapsed = time.monotonic() - killed
    finally:
        stop_worker(survivor)
        if dying.poll() is None:
            os.killpg(dying.pid, signal.SIGKILL)
    print(f"\nkilled with 1 running and 3 reserved; all processed {elapsed:.1f}s after the kill")
    for request_id in ids:
        assert deployment.signals_for(request_id)["callback-received"] == 1, request_id
    assert get_store(web).get_delivery(ids[0]).attempts == 2
