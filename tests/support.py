"""Shared test helpers: credentials, a settable clock, drifting payloads, servers and links."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [])
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
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
