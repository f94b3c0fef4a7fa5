"""CPU cost per callback through the WSGI app, no network: flask_callbot against the contract limit.

    python benchmarks/bench_inprocess.py [--requests 3000] [--rounds 5] [--memory 100000]
                                         [--million] [--profile] [--postgres URL]

Every figure is CPU time (``time.process_time``, this process only: a PostgreSQL server's own
time is not in it) per request through ``app.wsgi_app`` with a prebuilt WSGI environ. The
receivers compared take turns by chunks of 50 requests within each round (interleaved, so the
machine's drift touches them alike); a figure is the median of ``--rounds`` rounds, and a ratio
is the median of the rounds' ratios, all measured in this one run. The reference is the
contract limit (``limit.py``); the floor (a bare route) and the ORM peer are rows for context.
Task callbacks on SQLite (and on PostgreSQL with ``--postgres``), order callbacks with 1, 20
and 200 intents; also the cost with 1 thousand against 1 million tasks stored (``--million``),
the peak RSS while ``--memory`` deliveries go through one process, and, with ``--profile``,
where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apps import SECRET, UUID, callbot_app, floor_app, order_body, peer_app, signed, task_body
from limit import limit_app

from flask_callbot.state import get_state

Request = tuple[str, bytes, dict[str, str]]
#: Requests each receiver runs before the next one takes its turn, within a round.
CHUNK = 50


def environ(path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
    }
    env.update({"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    return env


def run(app: Flask, requests: Iterable[Request]) -> float:
    """CPU microseconds per request; every reply must be a 200."""
    envs = [environ(*request) for request in requests]
    return cpu_seconds(app, envs) / len(envs) * 1e6


def cpu_seconds(app: Flask, envs: list[dict[str, Any]]) -> float:
    """CPU seconds ``app`` spends on the prebuilt ``envs``; every reply must be a 200."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    started = time.process_time()
    for env in envs:
        for _ in app.wsgi_app(env, start_response):
            pass
    elapsed = time.process_time() - started
    assert set(statuses) == {"200 OK"}, set(statuses)
    return elapsed


def task_requests(n: int, tasks: int, seed: int, first: int = 0) -> list[Request]:
    """``n`` signed task callbacks for tasks ``first`` .. ``first + tasks - 1``."""
    rng = random.Random(seed)
    now = int(time.time())
    return [
        ("/api/v3/taskCallback", body, signed(body, now))
        for body in (task_body(rng, tasks, now, first) for _ in range(n))
    ]


def median_of(rounds: int, measure: Callable[[int], float]) -> float:
    return statistics.median(measure(r) for r in range(rounds))


def interleaved(
    apps: dict[str, Flask], rounds: int, requests: Callable[[int], list[Request]]
) -> dict[str, list[float]]:
    """Each round runs every app on the same requests (fresh requestIDs each), taking turns by
    chunks of ``CHUNK`` requests (the order reversed every other chunk), so the machine's drift
    within a round touches them alike."""
    costs: dict[str, list[float]] = {name: [] for name in apps}
    for r in range(rounds):
        batches = {name: [environ(*request) for request in requests(r)] for name in apps}
        spent = dict.fromkeys(apps, 0.0)
        count = len(next(iter(batches.values())))
        turns = list(apps.items())
        for start in range(0, count, CHUNK):
            for name, app in turns:
                spent[name] += cpu_seconds(app, batches[name][start : start + CHUNK])
            turns.reverse()
        for name in apps:
            costs[name].append(spent[name] / count * 1e6)
    return costs


def report(costs: dict[str, list[float]], reference: str = "limit", indent: str = "  ") -> None:
    """Median cost per app, and each app's median ratio (over the rounds) to the reference."""
    for name, values in costs.items():
        ratios = [value / ref for value, ref in zip(values, costs[reference], strict=True)]
        print(f"{indent}{name:12} {statistics.median(values):8.1f} us   "
              f"x{statistics.median(ratios):.3f} {reference}  "
              f"(rounds: {' '.join(f'{value:.0f}' for value in values)})")  # fmt: skip


def fresh_postgres(url: str, schemas: list[str]) -> str:
    """A URL on a new schema of ``url``'s database (dropped at the end, see main)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    schemas.append(schema)
    with_path = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return with_path.render_as_string(hide_password=False)


def seed_tasks(app: Flask, count: int) -> None:
    """Store ``count`` tasks directly (the bench is about requests, not about loading)."""
    store = get_state(app).store
    store.create_schema()
    rows = (
        {"task_id": f"task-{n}", "user_task_id": "campaign", "status": 2, "status_request_ts": 0}
        for n in range(count)
    )
    columns = ("task_id", "user_task_id", "status", "status_request_ts")
    table = sa.table("callbot_tasks", *(sa.column(name) for name in columns))
    with store.engine.begin() as conn:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 50_000:
                conn.execute(table.insert(), batch)
                batch.clear()
        if batch:
            conn.execute(table.insert(), batch)
    raw = store.engine.raw_connection()  # outside a transaction: a checkpoint needs that
    try:  # measure the steady state, not the bulk load's write-ahead log
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", type=int, default=100_000, help="deliveries (0: skip)")
    parser.add_argument("--million", action="store_true", help="also 1,000,000 stored tasks")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--postgres", help="also run the limit and flask_callbot on this database")
    args = parser.parse_args()
    schemas: list[str] = []
    try:
        measure(args, schemas)
    finally:
        if schemas:
            admin = sa.create_engine(args.postgres)
            with admin.begin() as conn:
                for schema in schemas:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def measure(args: argparse.Namespace, schemas: list[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="callbot-bench-"))
    n = args.requests

    def fresh(name: str) -> str:
        return f"sqlite:///{folder / f'{name}-{time.monotonic_ns()}.sqlite3'}"

    def pair(url: Callable[[str], str]) -> dict[str, Flask]:
        return {
            "limit": limit_app(url("limit"), SECRET, UUID),
            "flask_callbot": callbot_app(url("callbot")),
        }

    backends = {"SQLite": fresh}
    if args.postgres:
        backends["PostgreSQL"] = lambda name: fresh_postgres(args.postgres, schemas)
    callbot = None
    for backend, url in backends.items():
        apps = pair(url)
        if backend == "SQLite":
            apps = {"floor": floor_app(), "peer": peer_app(fresh("peer")), **apps}
            callbot = apps["flask_callbot"]
        for app in apps.values():  # warm up: imports, compiled statement caches
            run(app, task_requests(300, 1000, seed=0))
        costs = interleaved(apps, args.rounds, lambda r: task_requests(n, 1000, r + 1))
        print(f"task callback, CPU per request ({args.rounds} interleaved rounds x {n}), "
              f"{backend}, inline:")  # fmt: skip
        report(costs)
        now = int(time.time())
        apps = pair(url)
        for intents in (1, 20, 200):

            def orders(count: int, intents: int = intents, now: int = now) -> list[Request]:
                bodies = (order_body(intents) for _ in range(count))
                return [("/api/v3/orderCallback", body, signed(body, now)) for body in bodies]

            for app in apps.values():
                run(app, orders(50))
            costs = interleaved(apps, args.rounds, lambda r, orders=orders: orders(n // 3))
            print(f"order callback, {intents} intents, {backend}:")
            report(costs)
    assert callbot is not None

    # Callbacks come for a campaign's active tasks, however many older ones are stored: 1,000
    # active tasks (the newest) on top of 1 thousand or 1 million stored; then the worst case,
    # callbacks spread evenly over every stored task, so each one reads a cold page.
    sizes = [1000, 1_000_000] if args.million else [1000]
    stored: dict[tuple[int, str], float] = {}
    for size in sizes:
        app = callbot_app(fresh(f"tasks{size}"))
        seed_tasks(app, size)
        spreads = {"active": (1000, size - 1000), "uniform": (size, 0)}
        for spread, (tasks, first) in spreads.items():
            run(app, task_requests(300, tasks, 0, first))
            stored[size, spread] = median_of(args.rounds, lambda r, a=app, t=tasks, f=first: run(
                a, task_requests(n, t, r + 1, f)))  # fmt: skip
            print(f"  {size:>9,} tasks stored, callbacks for {spread} tasks: "
                  f"{stored[size, spread]:8.1f} us")  # fmt: skip
    if len(sizes) == 2:
        for spread in ("active", "uniform"):
            ratio = stored[1_000_000, spread] / stored[1000, spread]
            print(f"  1M / 1k stored, {spread} tasks: x{ratio:.3f}")

    if args.memory:
        app = callbot_app(fresh("memory"))
        done, marks = 0, {}
        for mark in (10_000, 25_000, 50_000, args.memory):
            while done < mark:
                size = min(5000, mark - done)
                run(app, task_requests(size, 1000, seed=done))
                done += size
            marks[mark] = (rss_kib("VmRSS"), rss_kib("VmHWM"))
            print(f"  after {mark:>7,} deliveries: RSS {marks[mark][0] / 1024:6.1f} MiB, "
                  f"peak {marks[mark][1] / 1024:6.1f} MiB")  # fmt: skip
    if args.profile:
        profiler = cProfile.Profile()
        requests = task_requests(n, 1000, seed=99)
        profiler.enable()
        run(callbot, requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
