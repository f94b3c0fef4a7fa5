"""Reading and checking the app's ``CALLBOT_*`` configuration once, at registration."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy.engine import Engine

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
    "CALLBOT_ENGINE": None,  # the host's SQLAlchemy Engine, or a callable returning it
    "CALLBOT_MANAGE_SCHEMA": True,
    "CALLBOT_SQLITE_SYNCHRONOUS": "NORMAL",
    "CALLBOT_MAX_CONTENT_LENGTH": 1024 * 1024,
    "CALLBOT_BODY_TIMEOUT": 10,
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
    "CALLBOT_API_BASE_URL": "https://nxbot.nxcloud.com",
    "CALLBOT_API_UUID": None,  # None: CALLBOT_UUID
    "CALLBOT_API_SECRET_KEY": None,  # None: the first CALLBOT_SECRET_KEY
    "CALLBOT_API_ALGORITHM": "SHA256",
    "CALLBOT_API_TIMEOUT": 10,
    "CALLBOT_API_MAX_RETRIES": 3,
    "CALLBOT_API_RESPONSE_SIGNATURE": "verify-if-present",
    "CALLBOT_RECONCILE_LOOKBACK": 7 * 24 * 3600,
}
#: The keys that point the API client somewhere other than the defaults (``doctor`` pings the
#: vendor only when one of them is set).
API_KEYS = ("CALLBOT_API_BASE_URL", "CALLBOT_API_UUID", "CALLBOT_API_SECRET_KEY")
RESPONSE_SIGNATURE_MODES = ("verify-if-present", "require", "off")
DISPATCH_MODES = ("inline", "celery")
#: What to install when ``CALLBOT_METRICS`` is on but prometheus_client is missing.
METRICS_EXTRA_HINT = "pip install 'flask-callbot[metrics]'"
#: What to install when Celery dispatch or ``flask callbot sweep`` is used without Celery.
CELERY_EXTRA_HINT = "pip install 'flask-callbot[celery]'"


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """How to reach the vendor's API (reconciliation, ``doctor``'s ping)."""

    base_url: str
    uuid: str
    secret_key: str = field(repr=False)
    algorithm: str
    timeout: float
    max_retries: int
    response_signature: str
    #: Whether the app set any of :data:`API_KEYS` itself.
    configured: bool


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
    api: ApiSettings
    #: ``CALLBOT_RECONCILE_LOOKBACK``: seconds back a plain ``reconcile`` looks (tasks updated).
    reconcile_lookback: int
    metrics: bool = False
    #: Seconds to wait for more of a request's body before giving up on the client.
    body_timeout: float = 10
    #: ``CALLBOT_ENGINE``: the host's engine (or a callable called once, in the app's context,
    #: at registration) instead of one made from ``CALLBOT_DATABASE_URL``.
    engine: Engine | Callable[[], Engine] | None = None
    #: ``CALLBOT_MANAGE_SCHEMA``: first use creates or upgrades the tables (off: the host does).
    manage_schema: bool = True
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
    engine = _engine(get, config)
    secret_keys = _secret_keys(get["CALLBOT_SECRET_KEY"])
    uuid = _uuid(get["CALLBOT_UUID"])
    return Settings(
        secret_keys=secret_keys,
        uuid=uuid,
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
        api=_api(get, config, uuid, secret_keys[0]),
        reconcile_lookback=_positive_int(get, "CALLBOT_RECONCILE_LOOKBACK"),
        metrics=metrics,
        engine=engine,
        manage_schema=_flag(get, "CALLBOT_MANAGE_SCHEMA"),
        metrics_registry=_metrics_registry(get["CALLBOT_METRICS_REGISTRY"]) if metrics else None,
        body_timeout=_positive_number(get, "CALLBOT_BODY_TIMEOUT"),
    )


def _api(
    get: Mapping[str, Any], config: Mapping[str, Any], uuid: str, secret_key: str
) -> ApiSettings:
    base_url = get["CALLBOT_API_BASE_URL"]
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError("CALLBOT_API_BASE_URL must be an http(s) URL")
    api_uuid = get["CALLBOT_API_UUID"]
    if api_uuid is not None and (
        not isinstance(api_uuid, str) or not is_well_formed_uuid(api_uuid)
    ):
        raise ConfigurationError("CALLBOT_API_UUID must be 1-64 characters of A-Z a-z 0-9 _ -")
    api_key = get["CALLBOT_API_SECRET_KEY"]
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ConfigurationError("CALLBOT_API_SECRET_KEY must be a non-empty string")
    algorithm = get["CALLBOT_API_ALGORITHM"]
    if not isinstance(algorithm, str) or algorithm.upper() not in ALGORITHMS:
        raise ConfigurationError('CALLBOT_API_ALGORITHM must be "MD5" or "SHA256"')
    timeout = get["CALLBOT_API_TIMEOUT"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError("CALLBOT_API_TIMEOUT must be a positive number of seconds")
    signature = get["CALLBOT_API_RESPONSE_SIGNATURE"]
    if signature not in RESPONSE_SIGNATURE_MODES:
        raise ConfigurationError(
            "CALLBOT_API_RESPONSE_SIGNATURE must be one of " + ", ".join(RESPONSE_SIGNATURE_MODES)
        )
    return ApiSettings(
        base_url=base_url.rstrip("/"),
        uuid=api_uuid or uuid,
        secret_key=api_key or secret_key,
        algorithm=algorithm.upper(),
        timeout=float(timeout),
        max_retries=_positive_int(get, "CALLBOT_API_MAX_RETRIES", allow_zero=True),
        response_signature=signature,
        configured=any(config.get(key) is not None for key in API_KEYS),
    )


def _engine(get: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    engine = get["CALLBOT_ENGINE"]
    if engine is None:
        return None
    if not isinstance(engine, Engine) and not callable(engine):
        raise ConfigurationError(
            "CALLBOT_ENGINE must be an SQLAlchemy Engine or a callable returning one"
        )
    for key in ("CALLBOT_DATABASE_URL", "CALLBOT_ENGINE_OPTIONS"):
        if config.get(key):
            raise ConfigurationError(f"CALLBOT_ENGINE is set: {key} would be ignored, unset it")
    return engine


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


def _positive_number(get: Mapping[str, Any], key: str) -> float:
    value = get[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise ConfigurationError(f"{key} must be a positive number of seconds")
    return float(value)


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
