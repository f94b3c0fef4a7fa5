"""The blueprint: three thin views over :func:`flask_callbot.pipeline.handle`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

from flask import Blueprint, Flask, Response, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy.engine import Engine
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from . import pipeline
from .cli import create_group
from .config import CELERY_EXTRA_HINT, Settings, load_settings
from .errors import ConfigurationError, IncompleteBody, PayloadTooLarge, StoreUnavailable
from .events import CallbackKind
from .routes import ROUTES
from .state import EXTENSION_KEY, CallbotState, current_flask_app, get_state
from .store import Store

logger = logging.getLogger("flask_callbot")


def create_blueprint(*, name: str = "callbot", clock: Callable[[], float] = time.time) -> Blueprint:
    """A new blueprint mounting the callback routes; register it on the app to set up the receiver.

    Registration reads the app's ``CALLBOT_*`` config and fails at once, naming the key, if it is
    incomplete.

    :param name: the blueprint's name.
    :param clock: returns unix seconds; tests inject one to move time.
    :raises ConfigurationError: at registration, naming the missing or wrong key.

    .. versionadded:: 0.1.0
    """
    blueprint = Blueprint(name, __name__, cli_group="callbot")
    blueprint.cli = create_group()

    def setup(state: BlueprintSetupState) -> None:
        _init_app(cast(Flask, state.app), clock)

    blueprint.record_once(setup)
    for kind, rule in ROUTES.items():
        blueprint.add_url_rule(
            rule, endpoint=f"{kind.value}_callback", view_func=_view(kind), methods=["POST"]
        )
    return blueprint


def _init_app(app: Flask, clock: Callable[[], float]) -> None:
    """Build the app's state whole (metrics and Celery dispatch decided here), then keep it."""
    if EXTENSION_KEY in app.extensions:
        raise ConfigurationError("flask_callbot is already set up on this app")
    settings = load_settings(app.config, app.instance_path)
    engine = _host_engine(app, settings.engine)
    enqueue = _celery_dispatcher(app, settings) if settings.queued else None
    if settings.database_url_is_default and engine is None:
        os.makedirs(app.instance_path, exist_ok=True)
    store = Store(
        settings.database_url if engine is None else engine.url.render_as_string(False),
        settings.engine_options,
        sqlite_synchronous=settings.sqlite_synchronous,
        engine=engine,
        manage_schema=settings.manage_schema,
    )
    if not settings.manage_schema:
        _report_schema(store)
    metrics = None
    if settings.metrics:
        from .metrics import build_metrics  # imports prometheus_client: only when asked for

        metrics = build_metrics(
            store, settings.metrics_registry, clock=clock, lease=settings.processing_timeout
        )
    app.extensions[EXTENSION_KEY] = CallbotState(
        settings=settings, store=store, clock=clock, metrics=metrics, enqueue=enqueue
    )


def _host_engine(app: Flask, source: Engine | Callable[[], Engine] | None) -> Engine | None:
    """``CALLBOT_ENGINE``: the engine itself, or what its callable returns in the app's context
    (``lambda: db.engine`` with Flask-SQLAlchemy)."""
    if source is None or isinstance(source, Engine):
        return source
    with app.app_context():
        engine = source()
    if not isinstance(engine, Engine):
        raise ConfigurationError(f"CALLBOT_ENGINE returned {type(engine).__name__}, not an Engine")
    return engine


def _report_schema(store: Store) -> None:
    """``CALLBOT_MANAGE_SCHEMA`` off: say at once if the tables are missing or behind, without
    failing (the host's ``flask db upgrade`` registers this app too, to fix just that)."""
    try:
        problem = store.schema_problem()
    except StoreUnavailable as exc:
        logger.warning("flask_callbot: the store's schema could not be checked: %s", exc.message)
        return
    if problem:
        logger.warning("flask_callbot: %s", problem)


def _celery_dispatcher(app: Flask, settings: Settings) -> Callable[[str], None]:
    """Celery dispatch binds its Celery app now: without one, every callback would be answered
    503 until someone noticed, so registration refuses instead."""
    if "celery" not in app.extensions:
        raise ConfigurationError(
            'CALLBOT_DISPATCH is "celery" but no Celery app is bound: put it in '
            'app.extensions["celery"] before registering the blueprint (the Flask docs\' '
            'celery_init_app), or set CALLBOT_DISPATCH to "inline"'
        )
    try:
        from .celery_dispatch import register_tasks
    except ImportError:
        raise ConfigurationError(
            f'CALLBOT_DISPATCH "celery" needs Celery: {CELERY_EXTRA_HINT}'
        ) from None
    return register_tasks(app, settings)


def _view(kind: CallbackKind) -> Callable[[], Response]:
    def receive() -> Response:
        app = current_flask_app()
        settings = get_state(app).settings
        read = partial(_read_body, settings.max_content_length, settings.body_timeout)
        response = _respond(pipeline.handle(app, kind, read, request.headers))
        if request.environ.get(_INCOMPLETE):  # the rest of the body may still come: close
            response.headers["Connection"] = "close"
        return response

    receive.__name__ = f"{kind.value}_callback"
    return receive


def _read_body(limit: int, timeout: float) -> bytes:
    """The body, read once and capped.

    Werkzeug refuses a declared Content-Length over its limit unread; a body streamed without
    one (chunked) it silently cuts at the limit. So the cap given to Werkzeug is one byte more
    than ours: a body that fills it is over our limit, never a truncated body taken as whole.
    A client that disconnects, or sends nothing more for ``timeout`` seconds, ends the read: an
    :class:`IncompleteBody`, which frees the worker instead of holding it for the client.
    """
    request.max_content_length = limit + 1
    try:
        with _socket_timeout(request.environ, timeout):
            body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        body = None
    except (ClientDisconnected, OSError) as exc:  # OSError: TimeoutError, a reset
        request.environ[_INCOMPLETE] = True
        raise IncompleteBody(
            "the body did not arrive whole: the client disconnected or stopped sending"
        ) from exc
    if body is None or len(body) > limit:
        raise PayloadTooLarge("body is larger than CALLBOT_MAX_CONTENT_LENGTH")
    return body


#: Where WSGI servers put the client's socket: gunicorn, Werkzeug's development server.
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
#: Set in the environ when the body did not arrive whole.
_INCOMPLETE = "callbot.incomplete_body"


@contextmanager
def _socket_timeout(environ: dict[str, Any], timeout: float) -> Iterator[None]:
    """While reading the body, a receive that waits ``timeout`` seconds for data fails, when the
    server exposes the client's socket (as gunicorn bounds its own reads); otherwise nothing."""
    sock = next((environ[key] for key in _SOCKET_KEYS if key in environ), None)
    if not isinstance(sock, socket.socket):
        yield
        return
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)


def _respond(reply: pipeline.Reply) -> Response:
    return Response(
        json.dumps(reply.as_dict()), status=reply.http_status, mimetype="application/json"
    )
