"""Reading and checking the app's ``CALLBOT_*`` configuration once, at registration."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .signing import ALGORITHMS, is_well_formed_uuid

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Every key with its default; ``None`` marks a required key.
DEFAULTS: Mapping[str, Any] = {
    "CALLBOT_SECRET_KEY": None,
    "CALLBOT_UUID": None,
    "CALLBOT_DATABASE_URL": None,  # an SQLite file in app.instance_path
    "CALLBOT_ENGINE_OPTIONS": {},
    "CALLBOT_SQLITE_SYNCHRONOUS": "NORMAL",
    "CALLBOT_MAX_CONTENT_LENGTH": 1024 * 1024,
    "CALLBOT_MAX_AGE": 300,
    "CALLBOT_MAX_FUTURE_SKEW": 60,
    "CALLBOT_SIGN_ALGORITHMS": ("MD5", "SHA256"),
    "CALLBOT_PROCESSING_TIMEOUT": 60,
    "CALLBOT_DISPATCH": "inline",
    "CALLBOT_CELERY_MAX_RETRIES": 8,
    "CALLBOT_CELERY_RETRY_BACKOFF": 2,
    "CALLBOT_CELERY_RETRY_BACKOFF_MAX": 600,
    "CALLBOT_CELERY_QUEUE": None,
    "CALLBOT_METRICS": False,
    "CALLBOT_METRICS_REGISTRY": None,  # None: a registry of the app's own
}
DISPATCH_MODES = ("inline", "celery")
#: What to install when ``CALLBOT_METRICS`` is on but prometheus_client is missing.
METRICS_EXTRA_HINT = "pip install 'flask-callbot[metrics]'"
#: What to install when Celery dispatch or ``flask callbot sweep`` is used without Celery.
CELERY_EXTRA_HINT = "pip install 'flask-callbot[celery]'"


@dataclass(frozen=True, slots=True)
class Settings:
    secret_keys: tuple[str, ...]
    uuid: str
    database_url: str
    #: No ``CALLBOT_DATABASE_URL``: the SQLite file in ``app.instance_path``.
    database_url_is_default: bool
    engine_options: Mapping[str, Any]
    sqlite_synchronous: str
    max_content_length: int
    max_age: int
    max_future_skew: int
    sign_algorithms: tuple[str, ...]
    processing_timeout: int
    dispatch: str
    celery_max_retries: int
    celery_retry_backoff: int
    celery_retry_backoff_max: int
    celery_queue: str | None
    metrics: bool = False
    #: ``CALLBOT_METRICS_REGISTRY`` when metrics are on; ``None``: a registry of the app's own.
    metrics_registry: CollectorRegistry | None = None

    @property
    def queued(self) -> bool:
        """Whether deliveries are processed by Celery workers rather than in the request."""
        return self.dispatch == "celery"


def load_settings(config: Mapping[str, Any], instance_path: str) -> Settings:
    """Check every key and fail with a message naming the key; fill in defaults."""
    get = {key: config.get(key, default) for key, default in DEFAULTS.items()}
    database_url_is_default = not get["CALLBOT_DATABASE_URL"]
    database_url = get["CALLBOT_DATABASE_URL"] or "sqlite:///" + os.path.join(
        instance_path, "callbot.sqlite3"
    )
    if not isinstance(database_url, str):
        raise ConfigurationError("CALLBOT_DATABASE_URL must be an SQLAlchemy URL string")
    dispatch = get["CALLBOT_DISPATCH"]
    if dispatch not in DISPATCH_MODES:
        raise ConfigurationError('CALLBOT_DISPATCH must be "inline" or "celery"')
    queue = get["CALLBOT_CELERY_QUEUE"]
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ConfigurationError("CALLBOT_CELERY_QUEUE must be a queue name or None")
    engine_options = get["CALLBOT_ENGINE_OPTIONS"]
    if not isinstance(engine_options, Mapping):
        raise ConfigurationError("CALLBOT_ENGINE_OPTIONS must be a dict of create_engine options")
    metrics = _flag(get, "CALLBOT_METRICS")
    return Settings(
        secret_keys=_secret_keys(get["CALLBOT_SECRET_KEY"]),
        uuid=_uuid(get["CALLBOT_UUID"]),
        database_url=database_url,
        database_url_is_default=database_url_is_default,
        engine_options=dict(engine_options),
        sqlite_synchronous=_sqlite_synchronous(get["CALLBOT_SQLITE_SYNCHRONOUS"]),
        max_content_length=_positive_int(get, "CALLBOT_MAX_CONTENT_LENGTH"),
        max_age=_positive_int(get, "CALLBOT_MAX_AGE"),
        max_future_skew=_positive_int(get, "CALLBOT_MAX_FUTURE_SKEW", allow_zero=True),
        sign_algorithms=_algorithms(get["CALLBOT_SIGN_ALGORITHMS"]),
        processing_timeout=_positive_int(get, "CALLBOT_PROCESSING_TIMEOUT"),
        dispatch=dispatch,
        celery_max_retries=_positive_int(get, "CALLBOT_CELERY_MAX_RETRIES", allow_zero=True),
        celery_retry_backoff=_positive_int(get, "CALLBOT_CELERY_RETRY_BACKOFF"),
        celery_retry_backoff_max=_positive_int(get, "CALLBOT_CELERY_RETRY_BACKOFF_MAX"),
        celery_queue=queue,
        metrics=metrics,
        metrics_registry=_metrics_registry(get["CALLBOT_METRICS_REGISTRY"]) if metrics else None,
    )


def _flag(get: Mapping[str, Any], key: str) -> bool:
    value = get[key]
    if not isinstance(value, bool):
        raise ConfigurationError(f"{key} must be True or False")
    return value


def _secret_keys(value: Any) -> tuple[str, ...]:
    keys = [value] if isinstance(value, str) else value
    if not keys or not isinstance(keys, list | tuple):
        raise ConfigurationError(
            "CALLBOT_SECRET_KEY is required: the secret key from the NXCloud console "
            "(a string, or a list of strings while rotating keys)"
        )
    if not all(isinstance(key, str) and key for key in keys):
        raise ConfigurationError("CALLBOT_SECRET_KEY must hold only non-empty strings")
    return tuple(keys)


def _uuid(value: Any) -> str:
    if not value or not isinstance(value, str):
        raise ConfigurationError(
            "CALLBOT_UUID is required: the account uuid shown in the NXCloud console"
        )
    if not is_well_formed_uuid(value):
        raise ConfigurationError("CALLBOT_UUID must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _positive_int(get: Mapping[str, Any], key: str, *, allow_zero: bool = False) -> int:
    value = get[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigurationError(f"{key} must be a {kind} int")
    return value


def _algorithms(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names:
        raise ConfigurationError("CALLBOT_SIGN_ALGORITHMS must name MD5, SHA256 or both")
    upper = tuple(str(name).upper() for name in names)
    unknown = [name for name in upper if name not in ALGORITHMS]
    if unknown:
        raise ConfigurationError(
            f"CALLBOT_SIGN_ALGORITHMS: unknown {', '.join(unknown)}; use MD5 and/or SHA256"
        )
    return upper


def _sqlite_synchronous(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in ("NORMAL", "FULL", "EXTRA"):
        raise ConfigurationError('CALLBOT_SQLITE_SYNCHRONOUS must be "NORMAL", "FULL" or "EXTRA"')
    return value.upper()


def _metrics_registry(value: Any) -> CollectorRegistry | None:
    """Checked only when metrics are on: prometheus_client is imported only then."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise ConfigurationError(
            f"CALLBOT_METRICS needs prometheus_client: {METRICS_EXTRA_HINT}"
        ) from None
    if value is not None and not isinstance(value, CollectorRegistry):
        raise ConfigurationError(
            "CALLBOT_METRICS_REGISTRY must be a prometheus_client CollectorRegistry or None"
        )
    return value
