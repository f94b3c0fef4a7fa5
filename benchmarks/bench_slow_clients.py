"""Honest deliveries while hostile clients hold connections: gunicorn sync workers against the
threaded configuration shipped in ``deploy/gunicorn.conf.py``.

    python benchmarks/bench_slow_clients.py [--seconds 10] [--stalled 8] [--idle 500]

Each server (the test suite's served app, SQLite, 4 workers) is measured in four phases of the
same length: no attack; ``--stalled`` clients sending their headers and part of the body, then
nothing; ``--idle`` connections sending nothing; both. Four honest clients post signed, unique
task callbacks throughout, each request given 5 s; the figures are the share answered 200, the
throughput and the latency of those answered.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import (  # noqa: E402
    SECRET,
    UUID,
    Loiterers,
    free_port,
    honest_load,
    nginx_in_front,
)

SYNC = ["--workers", "4", "--timeout", "30"]
SERVERS = {
    "sync (gunicorn -w 4)": SYNC,
    "deploy/gunicorn.conf.py (gthread)": ["--config", str(ROOT / "deploy" / "gunicorn.conf.py")],
}


def serve(args: list[str], folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (folder / "markers").mkdir(exist_ok=True)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        CALLBOT_SECRET_KEY=SECRET,
        CALLBOT_UUID=UUID,
        SERVED_DATABASE_URL=f"sqlite:///{folder / f'callbot-{port}.sqlite3'}",
        SERVED_SIGNAL_LOG=str(folder / "signals.jsonl"),
        SERVED_MARKERS=str(folder / "markers"),
    )
    log = (folder / f"gunicorn-{port}.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "gunicorn", *args, "--bind", f"127.0.0.1:{port}",
         "--chdir", str(ROOT / "tests"), "--log-level", "warning", "served_app:create_app()"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("gunicorn did not start") from None
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--stalled", type=int, default=8)
    parser.add_argument("--idle", type=int, default=500)
    options = parser.parse_args()
    phases = {
        "no attack": {},
        f"{options.stalled} stalled bodies": {"stalled": options.stalled},
        f"{options.idle} idle connections": {"idle": options.idle},
        "both": {"stalled": options.stalled, "idle": options.idle},
    }
    print("| server | phase | answered 200 | req/s | p50 | p99 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        servers = [(name, args, False) for name, args in SERVERS.items()]
        if shutil.which("nginx"):
            servers.append(("deploy/nginx.conf, then sync (gunicorn -w 4)", SYNC, True))
        for name, args, proxied in servers:
            process, port = serve(args, Path(folder))
            try:
                with contextlib.ExitStack() as stack:
                    if proxied:
                        port = stack.enter_context(nginx_in_front(port, Path(folder)))
                    run_phases(name, port, phases, options.seconds)
            finally:
                process.terminate()
                process.wait(30)


def run_phases(name: str, port: int, phases: dict[str, dict[str, int]], seconds: float) -> None:
    """The phases against one server, a table row each."""
    honest_load(port, seconds=1)  # warm up
    for phase, attack in phases.items():
        with Loiterers(port, **attack):
            time.sleep(1 if attack else 0)  # let the attack take hold
            result = honest_load(port, seconds=seconds)
        print(
            f"| {name} | {phase} | {result.success:.1%} ({result.ok}/{result.sent}) "
            f"| {result.ok / result.seconds:.0f} | {result.percentile(0.5) * 1000:.0f} ms | "
            f"{result.percentile(0.99) * 1000:.0f} ms |",
            flush=True,
        )
        time.sleep(2)  # let the server shed the attack's connections


if __name__ == "__main__":
    main()
