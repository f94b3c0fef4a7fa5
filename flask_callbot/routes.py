"""The callback routes, and where an app mounted them: shared by the blueprint and the tools.

Kept apart from ``blueprint.py`` so the testing helpers, the simulator and the CLI can name the
routes without importing the blueprint (which imports the CLI).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, current_app, has_request_context, url_for
from werkzeug.routing import Rule

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
    return _task_rule(app).rule[: -len(ROUTES[CallbackKind.TASK])]


def _task_rule(app: Flask) -> Rule:
    route = ROUTES[CallbackKind.TASK]
    rules = sorted(
        (
            rule
            for rule in app.url_map.iter_rules()
            if rule.endpoint.endswith(".task_callback")
            and rule.rule.endswith(route)
            and getattr(app.view_functions.get(rule.endpoint), "__module__", None) == _VIEW_MODULE
        ),
        key=lambda rule: rule.rule,
    )
    if not rules:
        raise ConfigurationError(
            "no flask_callbot routes on this app: register create_blueprint() first"
        )
    return rules[0]


#: The vendor's task-creation fields that take each callback URL.
CALLBACK_URL_FIELDS: Mapping[CallbackKind, str] = {
    CallbackKind.TASK: "taskCallbackUrl",
    CallbackKind.ORDER: "orderCallbackUrl",
    CallbackKind.CALL: "callCallbackUrl",
}


def callback_urls(app: Flask, base_url: str | None = None) -> dict[str, str]:
    """The three callback URLs of ``app``'s mounted blueprint, keyed by the vendor's field names
    (``taskCallbackUrl``, ``orderCallbackUrl``, ``callCallbackUrl``), to pass when creating a
    task or importing orders.

    :param app: an app with the blueprint registered.
    :param base_url: how the vendor reaches the app (``https://crm.example.com``); without it
        the app's own external URL is used, which needs ``SERVER_NAME`` (and
        ``PREFERRED_URL_SCHEME``) or a request context.

    .. versionadded:: 0.1.0
    """
    if base_url is None:
        task_url = _external_url(app, _task_rule(app).endpoint)
        base_url = task_url[: -len(ROUTES[CallbackKind.TASK])]
    else:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"{base_url!r} is not an http(s) URL")
        base_url = base_url.rstrip("/") + find_prefix(app)
    return {field: callback_url(base_url, kind) for kind, field in CALLBACK_URL_FIELDS.items()}


def _external_url(app: Flask, endpoint: str) -> str:
    """``endpoint``'s external URL: from the request being handled, else from SERVER_NAME."""
    if has_request_context() and current_app._get_current_object() is app:  # type: ignore[attr-defined]
        return url_for(endpoint, _external=True)
    with app.app_context():
        try:
            return url_for(endpoint, _external=True)
        except RuntimeError:
            raise ConfigurationError(
                "callback_urls needs base_url, or SERVER_NAME in the app's config"
            ) from None


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
