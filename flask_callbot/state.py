"""Per-app state, kept in ``app.extensions["callbot"]`` (never on module globals).

Registration builds it whole (settings, store, clock, metrics, Celery dispatcher) and it never
changes after, with one exception: :func:`bind_dispatcher`, for a host that binds another
Celery app after registering the blueprint (``init_celery``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from flask import Flask, current_app

from .config import Settings
from .errors import ConfigurationError
from .store import Store, StoreReader

EXTENSION_KEY = "callbot"


class RequestObserver(Protocol):
    """What the pipeline needs of the metrics (:class:`flask_callbot.metrics.Metrics`)."""

    def observe(self, kind: str, outcome: str, *, latency: float, lag: float | None) -> None: ...


@dataclass(frozen=True, slots=True)
class CallbotState:
    settings: Settings
    store: Store
    #: Seconds since the epoch; injectable so tests can move time.
    clock: Callable[[], float] = field(default=time.time)
    #: Celery dispatch: publishes a recorded delivery's processing (see ``init_celery``).
    enqueue: Callable[[str], None] | None = None
    #: ``CALLBOT_METRICS``: the app's Prometheus metrics.
    metrics: RequestObserver | None = None


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


def bind_dispatcher(app: Flask, enqueue: Callable[[str], None]) -> None:
    """Give a registered app its Celery dispatcher: the one change to the state after
    registration (``init_celery`` binding another Celery app). The state is
    replaced, not mutated: a request already running keeps the one it started with."""
    app.extensions[EXTENSION_KEY] = dataclasses.replace(get_state(app), enqueue=enqueue)


def get_store(app: Flask | None = None) -> StoreReader:
    """The store of ``app``, read-only: ask it about tasks, orders, deliveries. Writing is the
    pipeline's, the dispatchers' and the CLI's (``get_state``).

    :param app: an app with the blueprint registered; default: the current app.

    .. versionadded:: 0.1.0
    """
    return get_state(app).store.reader
