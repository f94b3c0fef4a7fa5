"""The callback routes, and where an app mounted them: shared by the blueprint and the tools.

Kept apart from ``blueprint.py`` so the testing helpers, the simulator and the CLI can name the
routes without importing the blueprint (which imports the CLI).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from flask import Flask

from .errors import ConfigurationError
from .events import CallbackKind

#: The path of each callback under the blueprint's prefix, as the vendor's wiki names them.
ROUTES: Mapping[CallbackKind, str] = {
    CallbackKind.TASK: "/api/v3/taskCallback",
    CallbackKind.ORDER: "/api/v3/orderCallback",
    CallbackKind.CALL: "/api/v3/callCallback",
}

_VIEW_MODULE = "flask_callbot.blueprint"


def find_prefix(app: Flask) -> str:
    """The URL prefix the callback routes were registered under on ``app`` (``""`` for none).

    Looks for the ``<blueprint>.task_callback`` rule in ``app.url_map``; if the blueprint was
    mounted more than once, the first mount (by path) wins.
    """
    route = ROUTES[CallbackKind.TASK]
    prefixes = sorted(
        rule.rule[: -len(route)]
        for rule in app.url_map.iter_rules()
        if rule.endpoint.endswith(".task_callback")
        and rule.rule.endswith(route)
        and getattr(app.view_functions.get(rule.endpoint), "__module__", None) == _VIEW_MODULE
    )
    if not prefixes:
        raise ConfigurationError(
            "no flask_callbot routes on this app: register create_blueprint() first"
        )
    return prefixes[0]


def split_callback_url(url: str) -> tuple[str, CallbackKind | None]:
    """``(base URL, kind)`` for a base URL or a full callback URL (kind ``None`` for a base).

    ``http://h/hooks/api/v3/orderCallback`` → ``("http://h/hooks", ORDER)``;
    ``http://h/hooks/`` → ``("http://h/hooks", None)``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    for kind, route in ROUTES.items():
        if path.endswith(route):
            base = path[: -len(route)]
            return urlunsplit((parts.scheme, parts.netloc, base, "", "")), kind
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), None


def callback_url(base_url: str, kind: CallbackKind) -> str:
    """The URL of ``kind``'s route under ``base_url`` (a base URL, prefix included)."""
    return base_url.rstrip("/") + ROUTES[kind]
