"""Throughput and latency under gunicorn on loopback, driven by wrk: flask_callbot against the
contract limit, with the floor and the ORM peer for context.

    python benchmarks/bench_http.py [--workers 4] [--seconds 10] [--connections 32] [--rounds 3]
                                    [--postgres postgresql+psycopg://postgres@127.0.0.1/test]

Each receiver is served by gunicorn with the same number of sync workers and hit by wrk
(Debian's package) with pre-signed, unique task callbacks for the same time; the figures are
requests per second, p50 and p99 latency, and errors (socket errors and non-2xx replies). The
receivers take turns within each of ``--rounds`` rounds, each on a fresh database and warmed up
by 2 seconds of other requests (its first requests' imports and table creation are not
measured); a figure is the median of the rounds, and a ratio is the median of the rounds' ratios
to the contract limit on the same database. With ``--postgres`` the limit and flask_callbot also
run on that database (a fresh schema each), next to SQLite.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import statistics
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


def request_file(path: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
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


def wrk(
    port: int, requests: Path, args: argparse.Namespace, seconds: int | None = None
) -> dict[str, float]:
    seconds = args.seconds if seconds is None else seconds
    output = subprocess.run(  # noqa: S603 - wrk from the PATH, fixed arguments
        ["wrk",  # noqa: S607 "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s",
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
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--postgres", help="also run the limit and flask_callbot on this database")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="callbot-http-"))
    requests, warmup = folder / "requests.tsv", folder / "warmup.tsv"
    receivers = [("floor", "floor", "sqlite"), ("peer", "peer", "sqlite"),
                 ("limit", "limit", "sqlite"), ("callbot", "callbot", "sqlite")]  # fmt: skip
    if args.postgres:
        receivers += [("limit-pg", "limit", "pg"), ("callbot-pg", "callbot", "pg")]
        admin = sa.create_engine(args.postgres)
    schemas: list[str] = []

    def database(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{folder / f'{uuid.uuid4().hex[:8]}.sqlite3'}"
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        url = sa.make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in receivers}
    try:
        for _ in range(args.rounds):
            request_file(requests, 150_000)  # signed now: within the time window all round
            request_file(warmup, 20_000, seed=8)  # other requestIDs: no duplicate is measured
            for label, app, backend in receivers:
                process, port = serve(app, database(backend), args.workers, folder)
                try:
                    wrk(port, warmup, args, seconds=2)  # first requests: imports, tables, pool
                    results[label].append(wrk(port, requests, args))
                finally:
                    process.terminate()
                    process.wait(30)
    finally:
        if schemas:
            with admin.begin() as conn:
                for schema in schemas:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    print(
        f"gunicorn {args.workers} sync workers, wrk {args.threads} threads x "
        f"{args.connections} connections x {args.seconds}s, loopback, unique signed requests, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'':12}{'req/s':>10}{'x limit':>9}{'x floor':>9}{'p50':>10}{'p99':>10}{'errors':>8}"
          "   req/s by round")  # fmt: skip
    for label, runs in results.items():
        reference = results["limit-pg" if label.endswith("-pg") else "limit"]
        to_limit = statistics.median(
            r["rps"] / ref["rps"] for r, ref in zip(runs, reference, strict=True)
        )
        to_floor = statistics.median(
            r["rps"] / ref["rps"] for r, ref in zip(runs, results["floor"], strict=True)
        )
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        rounds = " ".join(f"{r['rps']:.0f}" for r in runs)
        print(f"{label:12}{rps:>10.0f}{to_limit:>9.2f}{to_floor:>9.2f}{p50:>8.2f}ms{p99:>8.2f}ms"
              f"{errors:>8.0f}   {rounds}")  # fmt: skip


if __name__ == "__main__":
    main()
