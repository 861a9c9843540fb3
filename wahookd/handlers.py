"""HTTP handlers (SPEC §2). Errors are `HTTPError`s rendered as `{"error": "<reason>"}`."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado.web import HTTPError

from wahookd.errors import JournalError, ParseError
from wahookd.events import dump_json
from wahookd.journal import Journal
from wahookd.metrics import Metrics
from wahookd.providers import InboundRequest, Provider
from wahookd.ratelimit import RateLimiter, TrustCache, client_ip, is_trusted
from wahookd.rejected import RejectedStore
from wahookd.settings import Settings, SourceSettings

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

    def __post_init__(self) -> None:
        self.trusted_peer = TrustCache(self.settings.server.trusted_proxies)


class BaseHandler(tornado.web.RequestHandler):
    state: AppState
    retry_after: int | None = None

    def initialize(self, state: AppState) -> None:
        self.state = state

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a stack trace or a secret: the reason is ours, chosen where we raise.
        self.set_header("Content-Type", "application/json")
        if self.retry_after is not None:  # send_error() cleared the headers set before
            self.set_header("Retry-After", str(self.retry_after))
        self.finish(json.dumps({"error": self._reason}))

    def compute_etag(self) -> None:
        return None


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


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.state.metrics.dedupe_entries.set(self.state.journal.dedupe_entries)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.state.metrics.registry))


@tornado.web.stream_request_body
class WebhookHandler(BaseHandler):
    """`POST /webhooks/{source}`: the intake path; `GET` answers Meta's handshake."""

    source_name: str
    source: SourceSettings | None
    provider: Provider | None

    def initialize(self, state: AppState) -> None:
        # Set here, not in prepare(): Tornado may answer (e.g. a path that is not UTF-8)
        # without calling prepare(), and on_finish() still runs.
        super().initialize(state)
        self.started = time.perf_counter()
        self.label = "unknown"  # metrics label: a configured source name, never the URL's text
        self.outcome: dict[str, Any] = {}
        self.chunks: list[bytes] = []
        self.received = 0
        self.body_timer: asyncio.TimerHandle | None = None
        self.client = self.request.remote_ip or ""

    def prepare(self) -> None:
        self.state.inflight.add(self)
        state = self.state
        settings = state.settings
        peer = self.request.remote_ip or ""
        self.peer_trusted = state.trusted_peer(peer)
        forwarded = self.request.headers.get("X-Forwarded-For") if self.peer_trusted else None
        self.client = client_ip(peer, forwarded, settings.server.trusted_proxies) if forwarded else peer
        # The rate limit comes before anything that costs CPU (SPEC §1).
        wait = state.limiter.take(self.client)
        if wait:
            state.metrics.rate_limited.inc()
            self.retry_after = max(1, math.ceil(wait))
            raise HTTPError(429, reason="rate limited")
        name = self.path_kwargs["source"]
        source = self.source = settings.sources.get(name)
        if source is None:
            raise self.rejection(404, "unknown source")
        self.source_name = self.label = name
        provider = self.provider = state.providers.get(source.provider)
        if provider is None:  # check-config prevents this; a plugin may vanish
            raise self.rejection(503, "provider not installed")
        if source.allow_ips and not is_trusted(self.client, source.allow_ips):
            raise self.rejection(401, "address not allowed")
        if self.request.method != "POST":
            return
        content_type = self.content_type()
        # A missing Content-Type is let through to the provider's parser; a wrong one is not.
        if content_type and content_type not in provider.content_types:
            self.reject(415, "unsupported content type")
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > settings.server.max_body_bytes:
            self.reject(413, "body too large")
        # A slow client gets `body_timeout` for its body. (Tornado's own body_timeout wraps
        # every body read in gen.with_timeout, a measurable cost on this path.)
        self.body_timer = asyncio.get_running_loop().call_later(
            settings.server.body_timeout, self.body_too_slow
        )

    def body_too_slow(self) -> None:
        self.cut_off(408, "request body too slow")

    def cut_off(self, status: int, reason: str) -> None:
        """Answer before the body is complete; Tornado then closes the connection."""
        if self._finished:
            return
        self.state.metrics.rejected.labels(self.label, reason.replace(" ", "_")).inc()
        self.chunks.clear()
        self.send_error(status, reason=reason)

    def content_type(self) -> str:
        return self.request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def reject(self, status: int, reason: str) -> None:
        raise self.rejection(status, reason)

    def rejection(self, status: int, reason: str) -> HTTPError:
        """Count the refusal and build the error to raise."""
        self.state.metrics.rejected.labels(self.label, reason.replace(" ", "_")).inc()
        return HTTPError(status, reason=reason)

    def data_received(self, chunk: bytes) -> None:
        if self._finished:  # answered already (413, 408): drop the rest
            return
        self.received += len(chunk)
        if self.received > self.state.settings.server.max_body_bytes:
            self.cut_off(413, "body too large")  # chunked bodies declare no length up front
        else:
            self.chunks.append(chunk)

    def inbound(self, body: bytes) -> InboundRequest:
        assert self.provider is not None
        return InboundRequest(
            method=self.request.method or "POST",
            url=self.public_url() if self.provider.signs_url else "",
            headers=self.request.headers,
            body=body,
            content_type=self.content_type(),
            query=self.request.query_arguments,
            client_ip=self.client,
        )

    def public_url(self) -> str:
        """The URL the provider called, as it signed it (Twilio): behind a trusted proxy,
        rebuilt from `X-Forwarded-Proto`/`-Host`; a configured `public_url` wins."""
        request = self.request
        assert self.source is not None
        if self.source.public_url:
            base = self.source.public_url
            if "?" not in base and request.query:
                return f"{base}?{request.query}"
            return base
        scheme, host = request.protocol, request.host
        if self.peer_trusted:
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{scheme}://{host}{request.uri}"

    async def get(self, source: str) -> None:
        assert self.provider is not None
        assert self.source is not None
        challenge = self.provider.handshake(self.inbound(b""), self.source)
        if challenge is None:
            self.reject(403, "verification failed")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(challenge)

    async def post(self, source: str) -> None:
        assert self.provider is not None
        assert self.source is not None
        state = self.state
        if self.body_timer is not None:
            self.body_timer.cancel()
        if self._finished:  # cut off while the body arrived
            return
        if state.draining:
            self.retry_after = 5
            self.reject(503, "shutting down")
        body = b"".join(self.chunks)
        request = self.inbound(body)
        if self.source.verify != "none" and not self.provider.verify(request, self.source):
            self.reject(401, "invalid signature")
        try:
            events = self.provider.parse(request, self.source_name, self.source)
        except ParseError as exc:
            await state.rejected.save(self.source_name, body, str(exc))
            self.outcome["parse_error"] = str(exc)[:200]
            self.reject(400, "unparseable body")
        for event in events:
            # Unique across sources: two of a team's numbers messaging each other see the
            # same provider message id, and every sink must still get both events.
            event.id = f"{self.source_name}:{event.id}"
        try:
            new, duplicates = await state.journal.commit(events)
        except JournalError:
            # Never a 200 for an event that is not durable, never a 4xx for our own fault.
            self.retry_after = 5
            self.reject(503, "cannot store event")
        metrics = state.metrics
        for event in new:
            metrics.child(metrics.events, self.source_name, event.kind).inc()
        if duplicates:
            metrics.child(metrics.duplicates, self.source_name).inc(duplicates)
        self.outcome = {"accepted": len(new), "duplicates": duplicates}
        reply = self.provider.reply(len(new), duplicates)
        if reply is not None:
            self.set_header("Content-Type", reply.content_type)
            self.finish(reply.body)
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(dump_json(self.outcome))

    def on_connection_close(self) -> None:
        self.state.inflight.discard(self)
        if self.body_timer is not None:
            self.body_timer.cancel()

    def on_finish(self) -> None:
        self.state.inflight.discard(self)
        elapsed = time.perf_counter() - self.started
        status = self.get_status()
        metrics = self.state.metrics
        metrics.child(metrics.http_requests, self.label, str(status)).inc()
        metrics.child(metrics.request_duration, self.label).observe(elapsed)
        # One canonical line per request.
        log.info(
            "request",
            method=self.request.method,
            source=self.label,
            status=status,
            client=self.client,
            ms=round(elapsed * 1000, 2),
            **self.outcome,
        )
