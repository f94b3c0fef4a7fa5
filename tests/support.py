"""Shared test helpers: credentials, a settable clock, drifting payloads, servers and links."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from flask_callbot import testing
from flask_callbot.testing import CallbotClient, SentSignal

SECRET = "u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr"
UUID = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR"
NOW = 1_800_000_000
POSTGRES_URL = os.environ.get("CALLBOT_TEST_POSTGRES_URL")


class Clock:
    """A settable clock for the timestamp window and the processing lease."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def order_call_payload(**overrides: Any) -> dict[str, Any]:
    """A realistic order/call callback with the vendor's drift: a string callbackType, a digit
    string intentLevel, unknown fields at every level, a ``recordDetail`` list."""
    payload = testing.call_payload(callbackType="2", newTopLevelField={"since": "2026"})
    detail = payload["callInfoDetail"]
    detail["newCallField"] = 1
    detail["intents"][0]["newIntentField"] = "x"
    detail["intents"][1]["intentLevel"] = "2"
    detail["sms"][0]["newSmsField"] = True
    detail["agent"]["newAgentField"] = None
    detail["params"][1]["newParamField"] = 0
    detail["recordDetail"] = [{"role": "bot", "text": "您好"}]
    payload.update(overrides)
    return payload


def payload_for(kind: str, **overrides: Any) -> dict[str, Any]:
    return testing.task_payload(**overrides) if kind == "task" else order_call_payload(**overrides)


class Sender(CallbotClient):
    """A :class:`~flask_callbot.testing.CallbotClient` signing as the test account (unless told
    otherwise) by the test's clock."""

    def __init__(
        self,
        client: FlaskClient,
        clock: Callable[[], float],
        *,
        secret_key: str = SECRET,
        uuid: str = UUID,
        prefix: str = "",
    ) -> None:
        super().__init__(client, secret_key=secret_key, uuid=uuid, prefix=prefix, clock=clock)


def names(sent: list[SentSignal]) -> list[str]:
    return [signal.name for signal in sent]


def assert_reply(response: TestResponse, http_status: int, ret_code: int) -> dict[str, Any]:
    assert response.status_code == http_status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["retCode"] == ret_code, body
    assert isinstance(body["retMsg"], str)
    assert len(body["responseID"]) == 32
    assert set(body) == {"retCode", "retMsg", "responseID"}
    return body


def stored_count(app: Any, table: str = "callbot_deliveries") -> int:
    """Rows in one of the store's tables, read straight from the database."""
    store = app.extensions["callbot"].store
    store.create_schema()  # tables appear on first use; a test may have stored nothing yet
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


class postgres_schema:
    """A fresh PostgreSQL schema; the URL it yields puts it first on the search path."""

    def __enter__(self) -> str:
        assert POSTGRES_URL
        self.name = f"callbot_test_{uuid.uuid4().hex[:12]}"
        self.admin = sa.create_engine(POSTGRES_URL, poolclass=sa.pool.NullPool)
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.name}"'))
        url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={self.name}"})
        return url.render_as_string(hide_password=False)

    def __exit__(self, *exc_info: object) -> None:
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self.admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CuttableLink:
    """A TCP relay to PostgreSQL that the test can cut (refusing and dropping connections)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        # shutdown() before close(): a bare close() does not wake a thread blocked in
        # accept() or select() on Linux, and the socket would keep working.
        with self.lock:
            for sock in [*self.sockets, *([self.listener] if self.listener else [])]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.listener = None
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        # A selector (epoll), not select.select(): late in a long run the process's descriptors
        # pass 1,024, which select() refuses, and the relay would drop every connection.
        selector = selectors.DefaultSelector()
        try:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            a.close()
            b.close()


@contextmanager
def serve(wsgi_app: Any) -> Iterator[str]:
    """Serve ``wsgi_app`` over real HTTP on a free loopback port; yields its base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Loiterers:
    """Hostile clients that hold a server's connections without finishing a request, kept up
    from one thread until stopped: ``stalled`` send their headers and part of the body, then
    nothing; ``idle`` connect and send nothing. Dropped connections are opened again at once."""

    def __init__(self, port: int, *, stalled: int = 0, idle: int = 0) -> None:
        self.port = port
        self.wanted = {"stalled": stalled, "idle": idle}
        self.sockets: dict[socket.socket, str] = {}
        self.reopened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="loiterers", daemon=True)

    def __enter__(self) -> Loiterers:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.sockets:
            sock.close()

    def _open(self, role: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            if role == "stalled":
                head = (
                    "POST /api/v3/taskCallback HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
                )
                sock.sendall(head.encode() + b'{"taskID": "' + b"x" * 100)
            sock.setblocking(False)
        except OSError:
            return
        self.sockets[sock] = role

    def _run(self) -> None:
        while not self.stop.is_set():
            for role, wanted in self.wanted.items():
                for _ in range(wanted - sum(r == role for r in self.sockets.values())):
                    if self.stop.is_set():
                        return
                    self._open(role)
            ready = select.select(list(self.sockets), [], [], 0.05)[0] if self.sockets else []
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:  # the server gave up on it: come back
                    del self.sockets[sock]
                    sock.close()
                    self.reopened += 1


@dataclass
class LoadResult:
    """What honest clients saw: how many requests got 200, of how many, and how fast."""

    ok: int
    sent: int
    latencies: list[float]
    seconds: float

    @property
    def success(self) -> float:
        return self.ok / self.sent if self.sent else 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0

    def line(self) -> str:
        return (
            f"{self.ok}/{self.sent} answered 200 ({self.success:.1%}), "
            f"{self.ok / self.seconds:.0f}/s, p50 {self.percentile(0.5) * 1000:.0f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.0f} ms"
        )


def honest_load(port: int, *, seconds: float, clients: int = 4, timeout: float = 5) -> LoadResult:
    """``clients`` threads posting signed, unique task callbacks for ``seconds``, each request
    given ``timeout`` seconds (a vendor that waits longer is rare)."""
    ok, sent, latencies = [0], [0], []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            body = json.dumps(testing.task_payload(taskID=f"T{uuid.uuid4().hex[:6]}")).encode()
            headers = testing.sign_headers(
                body, secret_key=SECRET, uuid=UUID, create_ts=int(time.time())
            )
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                conn.request("POST", "/api/v3/taskCallback", body=body, headers=headers)
                status = conn.getresponse().status
            except OSError:
                status = 0
            finally:
                conn.close()
            with lock:
                sent[0] += 1
                if status == 200:
                    ok[0] += 1
                    latencies.append(time.monotonic() - started)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(ok[0], sent[0], latencies, time.monotonic() - started)


ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str, timeout: float = 120) -> str:
    """Run ``script`` in a fresh interpreter (this one's), from the project's root, with
    ``args``; its standard output (a failure raises, with its standard error)."""
    result = subprocess.run(  # noqa: S603 - our own interpreter, our own script
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=timeout,
    )
    return result.stdout


@contextmanager
def nginx_in_front(upstream: int, folder: Path) -> Iterator[int]:
    """nginx with the shipped ``deploy/nginx.conf``, on a free port, passing to ``upstream``;
    yields its port."""
    port = free_port()
    prefix = folder / f"nginx-{port}"
    (prefix / "logs").mkdir(parents=True)
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    config = config.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
    (prefix / "nginx.conf").write_text(config)
    nginx = ["nginx", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")]
    subprocess.run(nginx, check=True, capture_output=True)  # noqa: S603 - fixed arguments
    try:
        yield port
    finally:
        subprocess.run([*nginx, "-s", "stop"], check=False, capture_output=True)  # noqa: S603
