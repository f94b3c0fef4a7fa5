"""Throughput and latency under gunicorn on loopback, driven by wrk: floor, peer, flask_callbot.

    python benchmarks/bench_http.py [--workers 4] [--seconds 10] [--connections 32]
                                    [--postgres postgresql+psycopg://postgres@127.0.0.1/test]

Each receiver is served by gunicorn with the same number of sync workers and hit by wrk
(Debian's package) with pre-signed, unique task callbacks for the same time; the figures are
requests per second, p50 and p99 latency, and errors (socket errors and non-2xx replies), with
ratios to the floor measured in the same run. With ``--postgres`` flask_callbot also runs on that
database (a fresh schema), next to SQLite.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from apps import UUID, free_port, signed, task_body  # noqa: E402


def request_file(path: Path, count: int) -> None:
    rng = random.Random(7)
    now = int(time.time())
    with path.open("w") as out:
        for _ in range(count):
            body = task_body(rng, 1000, now)
            headers = signed(body, now)
            out.write(f"{headers['requestID']}\t{now}\t{headers['sign']}\t{body.decode()}\n")


def serve(
    app: str, database_url: str, workers: int, folder: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, BENCH_APP=app, BENCH_DATABASE_URL=database_url, PYTHONPATH=str(HERE))
    log = (folder / f"gunicorn-{app}-{port}.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "apps:create_app()"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start: {log.name}") from None
            time.sleep(0.2)
    time.sleep(1)  # every worker up
    return process, port


def wrk(port: int, requests: Path, args: argparse.Namespace) -> dict[str, float]:
    output = subprocess.run(  # noqa: S603 - wrk from the PATH, fixed arguments
        ["wrk",  # noqa: S607 "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.seconds}s",
         "--latency", "-s", str(HERE / "wrk_signed.lua"), f"http://127.0.0.1:{port}",
         "--", str(requests), UUID, str(args.threads)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match, output
        return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    total = re.search(r"(\d+) requests in", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1]),  # type: ignore[index]
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": errors + (int(non_2xx[1]) if non_2xx else 0),
        "requests": int(total[1]) if total else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--postgres", help="also run flask_callbot on this database")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="callbot-http-"))
    requests = folder / "requests.tsv"
    request_file(requests, 150_000)
    runs = [("floor", "floor", ""), ("peer", "peer", f"sqlite:///{folder / 'peer.sqlite3'}"),
            ("callbot", "callbot", f"sqlite:///{folder / 'callbot.sqlite3'}")]  # fmt: skip
    schema = None
    if args.postgres:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.postgres)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = sa.make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
        runs.append(("callbot-pg", "callbot", url.render_as_string(hide_password=False)))
    results = {}
    try:
        for label, app, database_url in runs:
            process, port = serve(app, database_url, args.workers, folder)
            try:
                results[label] = wrk(port, requests, args)
            finally:
                process.terminate()
                process.wait(30)
    finally:
        if schema:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    floor = results["floor"]["rps"]
    print(
        f"gunicorn {args.workers} sync workers, wrk {args.threads} threads x "
        f"{args.connections} connections x {args.seconds}s, loopback, unique signed requests"
    )
    print(f"{'':12}{'req/s':>10}{'x floor':>9}{'p50':>10}{'p99':>10}{'errors':>8}")
    for label, r in results.items():
        print(f"{label:12}{r['rps']:>10.0f}{r['rps'] / floor:>9.2f}{r['p50_ms']:>8.2f}ms"
              f"{r['p99_ms']:>8.2f}ms{r['errors']:>8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
