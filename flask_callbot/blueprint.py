"""The blueprint: three thin views over :func:`flask_callbot.pipeline.handle`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from typing import cast

from flask import Blueprint, Flask, Response, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import RequestEntityTooLarge

from . import pipeline
from .cli import create_group
from .config import CELERY_EXTRA_HINT, Settings, load_settings
from .errors import ConfigurationError, PayloadTooLarge
from .events import CallbackKind
from .routes import ROUTES
from .state import EXTENSION_KEY, CallbotState, current_flask_app, get_state
from .store import Store


def create_blueprint(*, name: str = "callbot", clock: Callable[[], float] = time.time) -> Blueprint:
    """A new blueprint mounting the callback routes; register it on the app to set up the receiver.

    Registration reads the app's ``CALLBOT_*`` config and fails at once, naming the key, if it is
    incomplete. ``clock`` returns unix seconds; tests inject one to move time.
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
    enqueue = _celery_dispatcher(app, settings) if settings.queued else None
    if settings.database_url_is_default:
        os.makedirs(app.instance_path, exist_ok=True)
    store = Store(
        settings.database_url,
        settings.engine_options,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    metrics = None
    if settings.metrics:
        from .metrics import build_metrics  # imports prometheus_client: only when asked for

        metrics = build_metrics(store, settings.metrics_registry)
    app.extensions[EXTENSION_KEY] = CallbotState(
        settings=settings, store=store, clock=clock, metrics=metrics, enqueue=enqueue
    )


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
        limit = get_state(app).settings.max_content_length
        return _respond(pipeline.handle(app, kind, partial(_read_body, limit), request.headers))

    receive.__name__ = f"{kind.value}_callback"
    return receive


def _read_body(limit: int) -> bytes:
    """The body, read once and capped.

    Werkzeug refuses a declared Content-Length over its limit unread; a body streamed without
    one (chunked) it silently cuts at the limit. So the cap given to Werkzeug is one byte more
    than ours: a body that fills it is over our limit, never a truncated body taken as whole.
    """
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        body = None
    if body is None or len(body) > limit:
        raise PayloadTooLarge("body is larger than CALLBOT_MAX_CONTENT_LENGTH")
    return body


def _respond(reply: pipeline.Reply) -> Response:
    return Response(
        json.dumps(reply.as_dict()), status=reply.http_status, mimetype="application/json"
    )
