"""Optional Prometheus metrics: ``CALLBOT_METRICS = True`` and ``flask-callbot[metrics]``.

Each app gets its metrics in a ``CollectorRegistry`` of its own (or the one named by
``CALLBOT_METRICS_REGISTRY``), so several apps in one process never clash on metric names.
prometheus_client is imported only when metrics are enabled: registration imports this module
only then, and this module imports prometheus_client lazily.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from flask import Flask, Response

from .errors import CallbotError, ConfigurationError
from .state import get_state
from .store import Store

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger("flask_callbot")

#: Seconds between the vendor stamping a request (createTs, whole seconds) and its handling.
LAG_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Seconds the receiver spent on a request, from reading the body to the reply.
HANDLING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One app's metrics: deliveries by kind and outcome, lag and handling time, failures."""

    def __init__(
        self,
        store: Store,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        lease: int = 60,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "callbot_deliveries",
            "Callback requests handled, by callback kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.lag = Histogram(
            "callbot_delivery_lag_seconds",
            "Now minus the createTs header of authentic requests (clamped at 0).",
            ["kind"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.handling = Histogram(
            "callbot_handling_seconds",
            "Time spent handling a callback request, body read to reply.",
            ["kind"],
            buckets=HANDLING_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_FailedDeliveries(store))
        self.registry.register(_UnfinishedDeliveries(store, clock, lease))

    def observe(self, kind: str, outcome: str, *, latency: float, lag: float | None) -> None:
        """Account for one request (called once per request by the pipeline)."""
        self.deliveries.labels(kind=kind, outcome=outcome).inc()
        self.handling.labels(kind=kind).observe(latency)
        if lag is not None:
            self.lag.labels(kind=kind).observe(max(lag, 0.0))


class _FailedDeliveries:
    """``callbot_failed_deliveries``: counted in the store at each scrape, so it is right for
    every process sharing the store and drops as soon as a replay succeeds."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily("callbot_failed_deliveries", _FAILED_HELP)]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            count = self.store.count_failed()
        except CallbotError:  # the store is down: leave the gauge out, keep the rest of a scrape
            logger.warning("callbot: metrics: could not count failed deliveries")
            return
        yield GaugeMetricFamily("callbot_failed_deliveries", _FAILED_HELP, value=count)


_FAILED_HELP = "Deliveries whose receivers raised, kept as failed (replay them)."


class _UnfinishedDeliveries:
    """Deliveries whose outcome is not written: ``callbot_abandoned_deliveries`` counted in the
    store (held past the processing timeout: their worker died, or could not write the outcome),
    and ``callbot_unwritten_outcomes``, the outcomes this process owes the store right now (it
    is the one to watch while the store is down, when the store cannot be counted)."""

    def __init__(self, store: Store, clock: Callable[[], float], lease: int) -> None:
        self.store, self.clock, self.lease = store, clock, lease

    def describe(self) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily("callbot_abandoned_deliveries", _ABANDONED_HELP),
            GaugeMetricFamily("callbot_unwritten_outcomes", _UNWRITTEN_HELP),
        ]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        owed = len(self.store.owed)
        yield GaugeMetricFamily("callbot_unwritten_outcomes", _UNWRITTEN_HELP, value=owed)
        try:
            count = self.store.count_abandoned(now=self.clock(), lease=self.lease)
        except CallbotError:
            logger.warning("callbot: metrics: could not count abandoned deliveries")
            return
        yield GaugeMetricFamily("callbot_abandoned_deliveries", _ABANDONED_HELP, value=count)


_ABANDONED_HELP = (
    "Deliveries held past CALLBOT_PROCESSING_TIMEOUT: the worker died, or could not write the "
    "outcome (replay them)."
)
_UNWRITTEN_HELP = "Outcomes this process could not write to the store yet (retried each second)."


def build_metrics(
    store: Store,
    registry: CollectorRegistry | None = None,
    *,
    clock: Callable[[], float] = time.time,
    lease: int = 60,
) -> Metrics:
    """An app's metrics, made at registration when ``CALLBOT_METRICS`` is true: on ``registry``
    (``CALLBOT_METRICS_REGISTRY``), or on a registry of their own. ``clock`` and ``lease`` (the
    processing timeout) tell which deliveries are abandoned."""
    try:
        return Metrics(store, registry, clock=clock, lease=lease)
    except ValueError as exc:  # "Duplicated timeseries": a second app on one registry
        raise ConfigurationError(
            f"CALLBOT_METRICS_REGISTRY already holds flask_callbot's metrics ({exc}); give "
            "each app its own registry (the default)"
        ) from None


def get_registry(app: Flask | None = None) -> CollectorRegistry:
    """The registry holding ``app``'s metrics (default: the current app's)."""
    metrics = get_state(app).metrics
    if not isinstance(metrics, Metrics):
        raise ConfigurationError("metrics are off: set CALLBOT_METRICS = True")
    return metrics.registry


def metrics_view() -> Response:
    """A Flask view serving the current app's metrics in Prometheus' text format.

    Mount it yourself, where only your scraper can reach it:
    ``app.add_url_rule("/metrics", view_func=metrics_view)``.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(get_registry()), content_type=CONTENT_TYPE_LATEST)
