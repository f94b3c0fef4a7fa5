"""Per-app state, kept in ``app.extensions["callbot"]`` (never on module globals)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, current_app

from .config import Settings
from .errors import ConfigurationError
from .store import Store, StoreReader

if TYPE_CHECKING:
    from .metrics import Metrics

EXTENSION_KEY = "callbot"


@dataclass(slots=True)
class CallbotState:
    settings: Settings
    store: Store
    #: Seconds since the epoch; injectable so tests can move time.
    clock: Callable[[], float] = field(default=time.time)
    #: Celery dispatch: publishes a recorded delivery's processing (set by ``init_celery``).
    enqueue: Callable[[str], None] | None = None
    #: ``CALLBOT_METRICS``: the app's Prometheus metrics (set by ``init_metrics``).
    metrics: Metrics | None = None


def current_flask_app() -> Flask:
    """The app object behind ``current_app`` (signals are sent with it, not with the proxy)."""
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def get_state(app: Flask | None = None) -> CallbotState:
    """The callbot state of ``app`` (default: the current app); a clear error if the blueprint
    was never registered."""
    state = (app if app is not None else current_flask_app()).extensions.get(EXTENSION_KEY)
    if not isinstance(state, CallbotState):
        raise ConfigurationError(
            "flask_callbot is not set up on this app: register create_blueprint() first"
        )
    return state


def get_store(app: Flask | None = None) -> StoreReader:
    """The store of ``app`` (default: the current app), read-only: ask it about tasks, orders,
    deliveries. Writing is the pipeline's, the dispatchers' and the CLI's (``get_state``)."""
    return get_state(app).store.reader
