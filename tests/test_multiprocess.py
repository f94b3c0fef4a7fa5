"""Exactly once across processes: the example app under gunicorn, real clients, real faults.

Selected by ``CALLBOT_TEST_MULTIPROCESS=1`` (``.ci/run`` sets it); runs on SQLite and, when
``CALLBOT_TEST_POSTGRES_URL`` is set, on PostgreSQL. A receiver in every worker appends each
signal it sees to one log file; the assertions compare that log with the store.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_callbot.routes import ROUTES
from flask_callbot.testing import sign_headers, task_payload

from support import (
    POSTGRES_URL,
    SECRET,
    UUID,
    CuttableLink,
    Loiterers,
    free_port,
    honest_load,
    nginx_in_front,
    order_call_payload,
    postgres_schema,
)

pytestmark = pytest.mark.skipif(
    not os.environ.get("CALLBOT_TEST_MULTIPROCESS"),
    reason="set CALLBOT_TEST_MULTIPROCESS=1 to run the multi-process tests",
)

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4


@dataclass
class Delivery:
    kind: str
    request_id: str
    request_ts: int
    payload: dict[str, Any]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.body = json.dumps(self.payload).encode()
        self.headers = sign_headers(
            self.body,
            secret_key=SECRET,
            uuid=UUID,
            request_id=self.request_id,
            create_ts=self.request_ts,
        )


@dataclass
class Server:
    port: int
    database_url: str
    log_path: Path
    markers: Path
    process: subprocess.Popen[bytes]
    output: Any  # gunicorn's log file, closed when the server stops

    def post(self, delivery: Delivery, timeout: float = 60) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(
                "POST", ROUTES[delivery.kind], body=delivery.body, headers=delivery.headers
            )
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def post_until_done(self, delivery: Delivery) -> list[int]:
        """Post like the vendor: retry while the reply says 'try later' (409, retCode 7)."""
        statuses = []
        for attempt in range(400):
            status, body = self.post(delivery)
            statuses.append(status)
            if status != 409 or body["retCode"] != 7:
                return statuses
            time.sleep(min(0.01 * (attempt + 1), 0.25))
        raise AssertionError(f"{delivery.request_id} still in progress after {statuses}")

    def signals(self) -> list[dict[str, Any]]:
        """Every signal the workers sent, but the rejection of the start-up probe."""
        if not self.log_path.exists():
            return []
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines()]
        return [line for line in lines if line["signal"] != "callback-rejected"]

    def rows(self, table: str) -> list[Any]:
        engine = sa.create_engine(self.database_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(f"SELECT * FROM {table}")))  # noqa: S608
        finally:
            engine.dispose()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(
        database_url: str,
        *,
        processing_timeout: int = 60,
        options: Sequence[str] = ("--workers", str(WORKERS), "--timeout", "120"),
        **served: str,
    ) -> Server:
        """gunicorn serving the test app with ``options``; ``served``: more ``SERVED_*``."""
        port = free_port()
        markers = tmp_path / f"markers-{port}"
        markers.mkdir()
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            CALLBOT_SECRET_KEY=SECRET,
            CALLBOT_UUID=UUID,
            SERVED_DATABASE_URL=database_url,
            SERVED_SIGNAL_LOG=str(tmp_path / f"signals-{port}.jsonl"),
            SERVED_MARKERS=str(markers),
            SERVED_PROCESSING_TIMEOUT=str(processing_timeout),
            **{f"SERVED_{name.upper()}": value for name, value in served.items()},
        )
        log = (tmp_path / f"gunicorn-{port}.log").open("wb")
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            [
                sys.executable,
                "-m",
                "gunicorn",
                *options,
                "--bind",
                f"127.0.0.1:{port}",
                "--chdir",
                str(ROOT / "tests"),
                "--graceful-timeout",
                "5",
                "served_app:create_app()",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(port, database_url, Path(env["SERVED_SIGNAL_LOG"]), markers, process, log)
        servers.append(server)
        probe = Delivery("task", "probe", int(time.time()), {})
        probe.headers = {}
        deadline = time.monotonic() + 60
        while True:
            try:
                assert server.post(probe, timeout=5)[0] == 401
                return server
            except (ConnectionError, OSError):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError((tmp_path / f"gunicorn-{port}.log").read_text()) from None
                time.sleep(0.2)

    yield start
    for server in servers:
        server.process.terminate()
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        server.output.close()


def campaign(rng: random.Random, base_ts: int) -> list[Delivery]:
    """50 tasks x 20 status updates, and 1,600 orders each with a call and an order callback."""
    deliveries = []
    for t in range(50):
        statuses = [1, 2]
        while len(statuses) < 19:
            statuses.append(rng.choice([2, 5] if statuses[-1] == 2 else [2, 5, 2]))
        statuses.append(rng.choice([3, 4]))
        for j, status in enumerate(statuses):
            stats = {"finishOrderCount": j, "totalOrderCount": 20, "finishRate": j / 20}
            payload = task_payload(taskID=f"task-{t}", taskStatus=status, taskStat=stats)
            deliveries.append(Delivery("task", f"task-{t}-{j}", base_ts + 10 * j, payload))
    for o in range(1600):
        for kind, ts in (("call", base_ts + o % 97), ("order", base_ts + o % 97 + 1)):
            payload = order_call_payload(orderID=f"order-{o}", taskID=f"task-{o % 50}")
            payload["callInfoDetail"].update(callID=f"call-{o}", callStartTs=base_ts - 60)
            payload["finish"] = kind == "order"
            deliveries.append(Delivery(kind, f"{kind}-{o}", ts, payload))
    return deliveries


@pytest.mark.parametrize("seed", [20261124])
def test_load_with_simultaneous_duplicates_and_reordering(
    start_server: Callable[..., Server], database_url: str, seed: int
) -> None:
    server = start_server(database_url)
    rng = random.Random(seed)
    unique = campaign(rng, int(time.time()) - 3600)
    twins = set(rng.sample(range(len(unique)), k=len(unique) // 4))
    order = list(range(len(unique)))
    rng.shuffle(order)  # task updates and order/call callbacks arrive out of order
    replies: list[list[int]] = []

    def send(index: int) -> None:
        delivery = unique[index]
        if index not in twins:
            replies.append(server.post_until_done(delivery))
            return
        barrier = threading.Barrier(2)

        def twin() -> None:
            barrier.wait()
            replies.append(server.post_until_done(delivery))

        helper = threading.Thread(target=twin)
        helper.start()
        twin()
        helper.join()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(send, order))
    elapsed = time.monotonic() - started

    requests = len(unique) + len(twins)
    assert requests >= 5000
    assert len(twins) / len(unique) >= 0.2
    final = Counter(statuses[-1] for statuses in replies)
    assert final == {200: requests}, final
    assert not [s for statuses in replies for s in statuses if s >= 500]
    busy = sum(s == 409 for statuses in replies for s in statuses)
    print(f"\n{requests} requests ({len(twins)} simultaneous duplicates) in {elapsed:.1f}s; "
          f"{busy} answered 409 'try later' first")  # fmt: skip

    # Every unique delivery recorded once, processed once.
    deliveries = {row.request_id: row for row in server.rows("callbot_deliveries")}
    assert set(deliveries) == {d.request_id for d in unique}
    assert {(row.outcome, row.attempts) for row in deliveries.values()} == {("processed", 1)}

    signals = server.signals()
    by_signal: dict[str, Counter[str]] = defaultdict(Counter)
    for line in signals:
        by_signal[line["signal"]][line["request_id"]] += 1
    assert by_signal["callback-received"] == Counter({d.request_id: 1 for d in unique})
    for kind in ("order", "call"):
        expected = Counter({d.request_id: 1 for d in unique if d.kind == kind})
        assert by_signal[f"{kind}-received"] == expected
    applied = {rid for rid, row in deliveries.items() if row.kind == "task" and row.applied}
    assert by_signal["task-progress"] == Counter(dict.fromkeys(applied, 1))

    # Every task transition signalled exactly once, forming an unbroken chain per task.
    changed = {rid for rid, row in deliveries.items() if row.kind == "task" and row.changed}
    assert by_signal["task-status-changed"] == Counter(dict.fromkeys(changed, 1))
    specific = sum(
        (by_signal[name] for name in ("task-pending", "task-started", "task-paused",
                                      "task-resumed", "task-completed", "task-failed")),
        Counter(),
    )  # fmt: skip
    assert specific == Counter(dict.fromkeys(changed, 1))
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in signals:
        if line["signal"] == "task-status-changed":
            chains[line["task_id"]].append(line)
    newest = {}
    for delivery in unique:
        if delivery.kind == "task":
            task_id = delivery.payload["taskID"]
            if task_id not in newest or delivery.request_ts > newest[task_id].request_ts:
                newest[task_id] = delivery
    for task_id, chain in chains.items():
        chain.sort(key=lambda line: line["request_ts"])
        assert chain[0]["previous"] is None
        for before, after in itertools.pairwise(chain):
            assert after["previous"] == before["status"] != after["status"]
        assert chain[-1]["status"] == newest[task_id].payload["taskStatus"]

    # Every task's final state is its newest update; every order's is its order callback.
    for row in server.rows("callbot_tasks"):
        delivery = newest[row.task_id]
        assert (row.status, row.status_request_ts) == (
            delivery.payload["taskStatus"],
            delivery.request_ts,
        )
    orders = server.rows("callbot_orders")
    assert len(orders) == 1600
    assert {(row.last_kind, bool(row.finish), row.callbacks) for row in orders} == {
        ("order", True, 2)
    }
    assert len({line["pid"] for line in signals}) == WORKERS


def test_receiver_failure_under_gunicorn(
    start_server: Callable[..., Server], database_url: str
) -> None:
    server = start_server(database_url)
    delivery = Delivery("task", "fails-once", int(time.time()), task_payload(testFailOnce=True))
    status, body = server.post(delivery)
    assert (status, body["retCode"]) == (500, 5001)
    (row,) = [r for r in server.rows("callbot_deliveries") if r.request_id == "fails-once"]
    assert row.outcome == "failed"
    assert "injected receiver failure" in row.error
    assert server.post_until_done(delivery) == [200]
    (row,) = [r for r in server.rows("callbot_deliveries") if r.request_id == "fails-once"]
    assert (row.outcome, row.attempts) == ("processed", 2)
    seen = Counter(line["signal"] for line in server.signals())
    # fail_once runs before the recorders of callback-received, not of the later signals.
    assert seen == {
        "callback-received": 1,
        "task-status-changed": 2,
        "task-started": 2,
        "task-progress": 2,
    }


def test_worker_killed_mid_request_then_resent(
    start_server: Callable[..., Server], database_url: str
) -> None:
    server = start_server(database_url, processing_timeout=2)
    delivery = Delivery("task", "killed", int(time.time()), task_payload(testHang=True))
    outcome: list[Any] = []
    client = threading.Thread(target=lambda: outcome.append(_try_post(server, delivery)))
    client.start()
    marker = server.markers / "hang-killed"
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the request never reached the receiver"
        time.sleep(0.05)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    client.join(30)
    assert isinstance(outcome[0], (ConnectionError, http.client.HTTPException)), outcome
    (row,) = [r for r in server.rows("callbot_deliveries") if r.request_id == "killed"]
    assert row.outcome == "pending"  # recorded and applied, never finished
    statuses = server.post_until_done(delivery)  # 409 until the processing timeout passes
    assert statuses[-1] == 200
    assert set(statuses[:-1]) <= {409}
    (row,) = [r for r in server.rows("callbot_deliveries") if r.request_id == "killed"]
    assert (row.outcome, row.attempts) == ("processed", 2)
    seen = Counter(line["signal"] for line in server.signals())
    assert seen == {
        "callback-received": 1,
        "task-status-changed": 1,
        "task-started": 1,
        "task-progress": 1,
    }
    assert server.post_until_done(delivery) == [200]  # a duplicate now
    assert len(server.signals()) == 4


def _try_post(server: Server, delivery: Delivery) -> Any:
    try:
        return server.post(delivery)
    except (ConnectionError, http.client.HTTPException) as exc:
        return exc


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="set CALLBOT_TEST_POSTGRES_URL")
def test_postgres_unreachable_then_back(start_server: Callable[..., Server]) -> None:
    """The SQLite outage is tested in-process (test_store_unreachable_then_back)."""
    with postgres_schema() as database_url:
        _outage_then_back(start_server, sa.make_url(database_url))


def _outage_then_back(start_server: Callable[..., Server], url: sa.URL) -> None:
    link = CuttableLink(url.port or 5432)
    link.up()
    try:
        server = start_server(url.set(port=link.port).render_as_string(hide_password=False))
        now = int(time.time())
        first = Delivery("task", "before-outage", now, task_payload(taskStatus=1))
        assert server.post_until_done(first) == [200]
        link.down()
        during = [
            Delivery("task", f"during-{n}", now + 1 + n, task_payload(taskStatus=2))
            for n in range(8)
        ]
        for delivery in during:
            status, body = server.post(delivery)
            assert (status, body["retCode"]) == (503, 7), body
        link.up()  # the database is reachable again: no restart
        for delivery in during:
            assert server.post_until_done(delivery) == [200]
    finally:
        link.down()
    signals = server.signals()
    assert [line["request_id"] for line in signals if line["signal"] == "callback-received"] == [
        "before-outage",
        *(d.request_id for d in during),
    ]
    assert sum(line["signal"] == "task-started" for line in signals) == 1
    assert server.process.poll() is None


def test_reconciliation_racing_live_callbacks_sends_no_double_signal(
    start_server: Callable[..., Server],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Three campaigns lose 30% of their callbacks on the way; the rest go to gunicorn -w 4
    while this process reconciles in a loop against a fake of the vendor's API that learns each
    delivery as the vendor creates it. Every order and call is signalled once across all
    processes, each task's transitions form one chain, and the store ends level with the
    vendor."""
    from flask_callbot.client import CallbotAPI
    from flask_callbot.reconcile import reconcile
    from flask_callbot.simulator import build_campaign, differences
    from flask_callbot.state import get_state
    from flask_callbot.vendor_api import FakeVendor, serve_vendor_api

    server = start_server(database_url)
    for name, value in {
        "CALLBOT_SECRET_KEY": SECRET,
        "CALLBOT_UUID": UUID,
        "SERVED_DATABASE_URL": database_url,
        "SERVED_SIGNAL_LOG": str(server.log_path),
        "SERVED_MARKERS": str(server.markers),
    }.items():
        monkeypatch.setenv(name, value)
    from served_app import create_app  # the same receivers, writing to the same signal log

    reconciler = create_app()
    request.addfinalizer(get_state(reconciler).store.dispose)  # no connection left to the GC
    campaigns = [build_campaign(orders=40, seed=seed, drop=0.3) for seed in (41, 42, 43)]
    genuine = sorted(
        (d for c in campaigns for d in c.genuine), key=lambda d: (d.at, d.kind != "task")
    )
    vendor = FakeVendor(uuid=UUID, secret_key=SECRET)
    user_task_ids = [c.user_task_id for c in campaigns]
    done = threading.Event()
    runs = []

    def reconcile_in_a_loop() -> None:
        with CallbotAPI(
            f"http://127.0.0.1:{api_port}", uuid=UUID, secret_key=SECRET, timeout=30
        ) as api:
            while not done.is_set():
                runs.append(reconcile(reconciler, api, user_task_ids=user_task_ids, orders=True))
            # A task a callback updated in the listing's own second is left to the next run
            # (that callback is at least as fresh): the last run comes a second later.
            time.sleep(1.1)
            runs.append(reconcile(reconciler, api, user_task_ids=user_task_ids, orders=True))

    with serve_vendor_api(vendor) as api_url, ThreadPoolExecutor(max_workers=8) as pool:
        api_port = int(api_url.rsplit(":", 1)[1])
        loop = threading.Thread(target=reconcile_in_a_loop)
        loop.start()
        pending = []
        for delivery in genuine:  # the vendor creates each delivery now, and sends it or loses it
            vendor.book.record(delivery.kind, delivery.payload)
            if not delivery.lost:
                sent = Delivery(delivery.kind.value, delivery.request_id, int(time.time()), {})
                sent.body, sent.headers = (
                    delivery.body,
                    sign_headers(
                        delivery.body,
                        secret_key=SECRET,
                        uuid=UUID,
                        request_id=delivery.request_id,
                        create_ts=sent.request_ts,
                    ),
                )
                pending.append(pool.submit(server.post_until_done, sent))
            if delivery.kind == "task":  # the task's life in order, as the vendor sends it
                for future in pending:
                    future.result()
                pending.clear()
            time.sleep(0.002)
        for future in pending:
            assert future.result()[-1] == 200
        done.set()
        loop.join(timeout=120)
    assert not loop.is_alive() and len(runs) >= 3  # at least two while callbacks flowed
    print(
        f"\n{len(runs)} reconcile runs; {sum(len(r.findings) for r in runs)} differences recorded"
    )
    assert runs[-1].errors == []
    # Only a run before the vendor created a task may miss it; nothing else goes wrong.
    errors = {error.split(": ", 1)[1] for run in runs for error in run.errors}
    assert errors <= {"the vendor's listTask does not have it"}
    with reconciler.app_context():
        from flask_callbot import get_store

        store = get_store(reconciler)
        for user_task_id in user_task_ids:
            assert differences(store, vendor.book, user_task_id) == []

    signals = server.signals()
    orders = Counter(
        (line["task_id"], line["order_id"])
        for line in signals
        if line["signal"] == "order-received"
    )
    assert len(orders) == 120 and set(orders.values()) == {1}
    calls = Counter(line["request_id"] for line in signals if line["signal"] == "call-received")
    assert set(calls.values()) == {1}
    assert len(calls) == sum(c.calls for c in campaigns)
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in signals:  # appended in the order the processes sent them
        if line["signal"] == "task-status-changed":
            chains[line["task_id"]].append(line)
    assert set(chains) == {c.task_id for c in campaigns}
    for chain in chains.values():
        assert chain[0]["previous"] is None
        for before, after in itertools.pairwise(chain):
            assert after["previous"] == before["status"] != after["status"]
        assert chain[-1]["status"] == 3
    assert len({line["pid"] for line in signals}) > 1


# -- Slow and idle clients ----------------------------------------------------------------------
# Against plain sync workers (gunicorn -w 4), 8 clients stalling their body, or 500 idle
# connections, leave nothing for the vendor: 0 % answered in benchmarks/bench_slow_clients.py.


def slow_client_store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'slow-clients.sqlite3'}"


@pytest.mark.skipif(not shutil.which("nginx"), reason="needs nginx (apt-get install nginx-light)")
def test_behind_the_shipped_nginx_config_sync_workers_hold_slow_and_idle_clients(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(slow_client_store(tmp_path))  # 4 sync workers
    with nginx_in_front(server.port, tmp_path) as port, Loiterers(port, stalled=8, idle=500):
        time.sleep(1)  # the attack takes hold
        result = honest_load(port, seconds=4)
    print(f"\nbehind nginx, 8 stalled bodies and 500 idle connections: {result.line()}")
    assert result.sent >= 40
    assert result.success == 1.0, result.line()
    assert result.percentile(0.99) < 2


def test_the_shipped_threaded_config_holds_stalled_bodies_and_logs_them_as_incomplete(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    config = ("--config", str(ROOT / "deploy" / "gunicorn.conf.py"))
    server = start_server(slow_client_store(tmp_path), options=config, body_timeout="1")
    with Loiterers(server.port, stalled=32) as stalled:
        time.sleep(1.5)
        result = honest_load(server.port, seconds=3)
    print(f"\ngthread, 32 stalled bodies: {result.line()}; {stalled.reopened} given up")
    assert result.success == 1.0, result.line()
    assert stalled.reopened >= 32  # each freed its thread after CALLBOT_BODY_TIMEOUT (1 s)
    log = server_log(server)
    assert "outcome=incomplete http_status=400 ret_code=3" in log
    assert "reason=incomplete-body" in log
    assert "outcome=error" not in log


def test_a_body_cut_short_by_the_sync_worker_timeout_is_logged_as_incomplete(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    options = ("--workers", "1", "--timeout", "2")  # the arbiter gives up before the body timeout
    server = start_server(slow_client_store(tmp_path), options=options, body_timeout="60")
    with Loiterers(server.port, stalled=1) as stalled:
        deadline = time.monotonic() + 30
        while "WORKER TIMEOUT" not in server_log(server) or stalled.reopened < 1:
            assert time.monotonic() < deadline, server_log(server)
            time.sleep(0.2)
    log = server_log(server)
    assert "outcome=incomplete http_status=None ret_code=None" in log, log
    assert "reason=incomplete-body" in log
    assert "outcome=error" not in log
    assert stalled.reopened >= 1


def server_log(server: Server) -> str:
    server.output.flush()
    return Path(server.output.name).read_text(errors="replace")
