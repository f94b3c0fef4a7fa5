"""Inline against Celery dispatch with slow receivers (two of 200 ms each), in one run.

    python benchmarks/bench_dispatch.py [--deliveries 200] [--clients 16] [--broker URL]

Serves ``dispatch_app`` with gunicorn (4 sync workers) on a fresh SQLite store, once with inline
dispatch and once with Celery dispatch plus a Celery worker (16 threads) on Redis, and posts the
same signed task callbacks from concurrent clients. Reports reply latency (p50, p99), request
throughput, and the time until every delivery was processed; then the ratios celery / inline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flask_callbot.testing import sign_headers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from apps import free_port  # noqa: E402
from dispatch_app import SECRET, UUID  # noqa: E402


def start(
    command: list[str], env: dict[str, str], log: Path, ready: Any
) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    process = subprocess.Popen(command, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + 60
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.2)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/v3/taskCallback", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def processed(database_url: str) -> int:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM callbot_deliveries WHERE outcome = 'processed'")
                ).scalar_one()
            )
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def run(mode: str, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    database_url = f"sqlite:///{folder / f'{mode}.sqlite3'}"
    port = free_port()
    env = dict(
        os.environ,
        BENCH_DATABASE_URL=database_url,
        BENCH_DISPATCH=mode,
        BENCH_BROKER_URL=args.broker,
        BENCH_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    )

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    processes = [
        start(
            [sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}",
             "--timeout", "300", "dispatch_app:create_app()"],
            env, folder / f"gunicorn-{mode}.log", listening,
        )
    ]  # fmt: skip
    if mode == "celery":
        log = folder / "worker.log"
        processes.append(
            start(
                [sys.executable, "-m", "celery", "-A", "dispatch_app:celery_app", "worker",
                 "--loglevel=INFO", "--pool=threads", f"--concurrency={args.clients}",
                 "--queues", env["BENCH_QUEUE"],
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env, log, lambda: log.exists() and b"ready." in log.read_bytes(),
            )
        )  # fmt: skip
    try:
        now = int(time.time())
        requests = []
        for n in range(args.deliveries):
            body = json.dumps(
                {"taskID": f"task-{n % 20}", "userTaskID": "bench", "taskStatus": 2,
                 "taskStat": {"finishOrderCount": n, "totalOrderCount": args.deliveries}}
            ).encode()  # fmt: skip
            requests.append((body, sign_headers(body, secret_key=SECRET, uuid=UUID, create_ts=now)))
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda r: post(port, *r), requests))
        replied = time.perf_counter() - started
        while processed(database_url) < args.deliveries:
            time.sleep(0.05)
        done = time.perf_counter() - started
    finally:
        for process in reversed(processes):
            stop(process)
    statuses = {status for status, _ in results}
    assert statuses == {200}, statuses
    latencies = sorted(seconds for _, seconds in results)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "replies_per_s": args.deliveries / replied,
        "all_processed_s": done,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: run(mode, args, Path(tmp)) for mode in ("inline", "celery")}
    print(f"{args.deliveries} task callbacks, {args.clients} concurrent clients, "
          f"gunicorn 4 sync workers, receivers 2 x {0.2 * 1000:.0f} ms")  # fmt: skip
    print(f"{'':8}{'p50 reply':>12}{'p99 reply':>12}{'replies/s':>12}{'all done':>12}")
    for mode, r in results.items():
        print(f"{mode:8}{r['p50_ms']:>10.1f}ms{r['p99_ms']:>10.1f}ms"
              f"{r['replies_per_s']:>12.1f}{r['all_processed_s']:>11.2f}s")  # fmt: skip
    inline, celery = results["inline"], results["celery"]
    ratios = {key: celery[key] / inline[key] for key in inline}
    print(
        f"celery/inline: p50 reply x{ratios['p50_ms']:.3f}, "
        f"replies/s x{ratios['replies_per_s']:.1f}, "
        f"time to process all x{ratios['all_processed_s']:.2f}"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
