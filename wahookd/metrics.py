"""Prometheus metrics (SPEC §8). Names are part of the contract; labels stay bounded."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)

from wahookd import __version__

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Metrics:
    """Every wahookd metric. `child(metric, *labels)` remembers labelled children: the
    label lookup costs more than the increment on the request path."""

    registry: CollectorRegistry
    http_requests: Counter
    request_duration: Histogram
    events: Counter
    duplicates: Counter
    rejected: Counter
    rate_limited: Counter
    ratelimit_fallback: Counter
    journal_commit: Histogram
    sink_backlog: Gauge
    sink_deliveries: Counter
    sink_delivery_seconds: Histogram
    dead_letters: Gauge
    media_downloads: Counter
    media_bytes: Counter
    dedupe_entries: Gauge
    reloads: Counter
    dedupe_capacity: Gauge
    session_up: Gauge
    sink_paused: Gauge
    sink_oldest_pending: Gauge
    sink_errors: Counter
    build_info: Info
    lease_held: Gauge | None = None
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


def make_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Define every metric against `registry` (a fresh one per test).

    Gauges that are a function of the state when scraped (`wahookd_ready`, staleness) are a
    collector the daemon registers (`ScrapeCollector` in `handlers`)."""
    # `_created` series double the exposition and nothing reads them (SPEC §8).
    disable_created_metrics()
    registry = registry if registry is not None else CollectorRegistry()
    ProcessCollector(registry=registry)
    build_info = Info("wahookd_build", "wahookd version", registry=registry)
    build_info.info({"version": __version__, "python": platform.python_version()})
    return Metrics(
        registry=registry,
        http_requests=Counter(
            "wahookd_http_requests",
            "HTTP requests by source and status code",
            ["source", "code"],
            registry=registry,
        ),
        request_duration=Histogram(
            "wahookd_request_duration_seconds",
            "Webhook request handling time",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        events=Counter("wahookd_events", "New events made durable", ["source", "kind"], registry=registry),
        duplicates=Counter(
            "wahookd_duplicates",
            "Events already seen (provider retries)",
            ["source"],
            registry=registry,
        ),
        rejected=Counter(
            "wahookd_rejected",
            "Requests refused, by reason",
            ["source", "reason"],
            registry=registry,
        ),
        rate_limited=Counter(
            "wahookd_rate_limited", "Requests refused by the per-IP rate limit", registry=registry
        ),
        ratelimit_fallback=Counter(
            "wahookd_ratelimit_fallback",
            "Requests whose rate limit this node decided alone because Redis was unreachable",
            registry=registry,
        ),
        journal_commit=Histogram(
            "wahookd_journal_commit_seconds",
            "Duration of one group commit (incl. fsync)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        sink_backlog=Gauge(
            "wahookd_sink_backlog",
            "Events ready but not yet delivered to the sink",
            ["sink"],
            registry=registry,
        ),
        sink_deliveries=Counter(
            "wahookd_sink_deliveries",
            "Delivery attempts by outcome (delivered, retry, dead)",
            ["sink", "outcome"],
            registry=registry,
        ),
        sink_delivery_seconds=Histogram(
            "wahookd_sink_delivery_seconds",
            "Duration of one delivery attempt",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        dead_letters=Gauge(
            "wahookd_dead_letters", "Events in the dead-letter store", ["sink"], registry=registry
        ),
        media_downloads=Counter(
            "wahookd_media_downloads",
            "Media downloads by outcome",
            ["source", "outcome"],
            registry=registry,
        ),
        media_bytes=Counter("wahookd_media_bytes", "Media bytes stored", registry=registry),
        dedupe_entries=Gauge("wahookd_dedupe_entries", "Entries in the dedupe index", registry=registry),
        reloads=Counter(
            "wahookd_reloads",
            "Configuration reloads (SIGHUP) by outcome: ok, error",
            ["outcome"],
            registry=registry,
        ),
        dedupe_capacity=Gauge(
            "wahookd_dedupe_capacity", "Entries the dedupe index keeps (dedupe.capacity)", registry=registry
        ),
        session_up=Gauge(
            "wahookd_session_up",
            "1 when the provider's last session/connection event said connected, else 0",
            ["source"],
            registry=registry,
        ),
        sink_paused=Gauge(
            "wahookd_sink_paused",
            "1 while the sink is paused (operator or circuit)",
            ["sink"],
            registry=registry,
        ),
        lease_held=Gauge(
            "wahookd_lease_held",
            "1 on the node that delivers the sink (state.backend = postgres: the lease holder)",
            ["sink"],
            registry=registry,
        ),
        sink_oldest_pending=Gauge(
            "wahookd_sink_oldest_pending_seconds",
            "Age of the oldest event waiting for the sink; 0 when caught up",
            ["sink"],
            registry=registry,
        ),
        sink_errors=Counter(
            "wahookd_sink_errors",
            "Unexpected exceptions raised by a sink plugin (bugs, not DeliveryError), by type",
            ["sink", "kind"],
            registry=registry,
        ),
        build_info=build_info,
    )
