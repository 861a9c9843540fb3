"""The RequestHandlers (/healthz, /readyz, /metrics) and the state every request path shares.

Errors are `HTTPError`s rendered as `{"error": "<reason>"}`; the webhook path is `intake`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from tornado.web import HTTPError

from wahookd.journal import Journal
from wahookd.metrics import Metrics
from wahookd.providers import Provider
from wahookd.ratelimit import RateLimiter, TrustCache
from wahookd.rejected import RejectedStore
from wahookd.settings import Settings

log = structlog.get_logger("wahookd.http")
PROBE_SECONDS = 1.0  # /readyz answers within this even when the journal hangs


@dataclass
class AppState:
    """What the handlers share: built once by the daemon (or a test)."""

    settings: Settings
    providers: dict[str, Provider]
    journal: Journal
    metrics: Metrics
    limiter: RateLimiter
    rejected: RejectedStore
    draining: bool = False
    inflight: set[Any] = field(default_factory=set)  # webhook requests being handled
    trusted_peer: TrustCache = field(init=False)
    started: float = field(default_factory=time.time)
    last_event: dict[str, float] = field(default_factory=dict)  # source -> when last made durable

    def __post_init__(self) -> None:
        self.trusted_peer = TrustCache(self.settings.server.trusted_proxies)


class ScrapeCollector:
    """The gauges computed when /metrics is scraped (SPEC §8): `wahookd_ready` (1 exactly when
    /readyz would answer 200), and per source the time of its last durable event and
    whether `stale_after` has passed since then (or since the start, when none came yet)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.state
        ready = GaugeMetricFamily("wahookd_ready", "1 when /readyz answers 200")
        ready.add_metric([], 0.0 if state.draining or not state.journal.healthy else 1.0)
        last = GaugeMetricFamily(
            "wahookd_source_last_event_timestamp_seconds",
            "When the source's last event was made durable (Unix time)",
            labels=["source"],
        )
        stale = GaugeMetricFamily(
            "wahookd_source_stale", "1 when stale_after has passed without an event", labels=["source"]
        )
        now = time.time()
        for name, source in state.settings.sources.items():
            seen = state.last_event.get(name)
            if seen is not None:
                last.add_metric([name], seen)
            if source.stale_after is not None:
                since = state.started if seen is None else seen
                stale.add_metric([name], 1.0 if now - since > source.stale_after else 0.0)
        yield ready
        yield last
        yield stale


class BaseHandler(tornado.web.RequestHandler):
    state: AppState

    def initialize(self, state: AppState) -> None:
        self.state = state

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a stack trace or a secret: the reason is ours, chosen where we raise.
        self.set_header("Content-Type", "application/json")
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.finish(json.dumps({"error": self._reason}))

    def compute_etag(self) -> None:
        return None

    def allowed_methods(self) -> list[str]:
        base = tornado.web.RequestHandler
        return [
            m
            for m in ("GET", "HEAD", "POST")
            if getattr(type(self), m.lower()) is not getattr(base, m.lower())
        ]


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write({"status": "ok"})

    def head(self) -> None:
        self.set_status(200)


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        if self.state.draining:
            raise HTTPError(503, reason="draining")
        journal = self.state.journal
        if not journal.healthy:
            try:
                writable = await asyncio.wait_for(asyncio.shield(journal.probe()), PROBE_SECONDS)
            except TimeoutError:
                writable = False
            if not writable:
                raise HTTPError(503, reason="journal not writable")
        self.write({"status": "ready"})

    head = get


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.state.metrics.dedupe_entries.set(self.state.journal.dedupe_entries)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.state.metrics.registry))

    head = get
