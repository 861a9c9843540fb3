"""The intake path, `POST /webhooks/{source}` (and Meta's `GET` handshake).

It is a lean `HTTPMessageDelegate` on Tornado's HTTP/1 server rather than a RequestHandler:
measured on the benchmark machine, RequestHandler's machinery (header objects, output
transforms, flush bookkeeping) costs about 40% of a webhook's CPU budget, more than all of
wahookd's own work. Everything else (/healthz, /readyz, /metrics) stays a RequestHandler.

The order of checks is SPEC §1's: rate limit, then source, address and content type, then the
body (size, time), then the signature on the raw bytes, then parse, then the durable commit,
and only then the answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from typing import Any
from urllib.parse import unquote

import structlog
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from wahookd.errors import JournalError, ParseError
from wahookd.events import Event, dump_json
from wahookd.handlers import AppState
from wahookd.log import info_line
from wahookd.providers import InboundRequest, Provider
from wahookd.ratelimit import client_ip, is_trusted
from wahookd.settings import SourceSettings

log = structlog.get_logger("wahookd.http")
PREFIX = "/webhooks/"
NO_HEADERS = httputil.HTTPHeaders()  # never written to


LINGER_SECONDS = 2.0  # how long a connection closed after an early answer still drains


class Rejected(Exception):
    """Answer the request with this status and `{"error": reason}`."""

    def __init__(
        self, status: int, reason: str, retry_after: int | None = None, allow: str | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers: dict[str, str] = {}
        if retry_after:
            self.headers["Retry-After"] = str(retry_after)
        if allow:
            self.headers["Allow"] = allow


_lingering: set[asyncio.Task[None]] = set()


def answer_and_close(
    connection: httputil.HTTPConnection,
    status: int,
    headers: dict[str, str],
    body: bytes,
    *,
    head: bool = False,
) -> None:
    """Answer a request decided on its headers alone (404, 413, 415, 429, 431, ...) and close
    the connection the way RFC 9112 §9.6 asks: the answer says `Connection: close`, our side
    is shut for writing, and what the client is still sending is read and dropped for a
    moment before the socket closes. Closing with unread data makes the kernel send a reset,
    which can destroy the answer before the client reads it (a 413 for a 3 MiB upload).

    Only from `headers_received`: `detach()` takes the stream away from Tornado there."""
    assert isinstance(connection, HTTP1Connection)
    stream = connection.detach()
    reason = httputil.responses.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    data = "\r\n".join(lines).encode("latin-1") + (b"" if head else body)
    task = asyncio.get_running_loop().create_task(_linger(stream, data), name="linger")
    _lingering.add(task)
    task.add_done_callback(_lingering.discard)


async def _linger(stream: IOStream, data: bytes) -> None:
    try:
        await stream.write(data)
        if not isinstance(stream, SSLIOStream):  # TLS has its own close_notify
            stream.socket.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_SECONDS):
            while True:
                await stream.read_bytes(READ_DISCARD_BYTES, partial=True)
    except (StreamClosedError, OSError, TimeoutError):
        pass
    finally:
        stream.close()


READ_DISCARD_BYTES = 64 * 1024


class IntakeFactory(httputil.HTTPServerConnectionDelegate):
    """The routing target for `/webhooks/...`: one `WebhookRequest` per request.

    It also cuts off slow bodies: one timer sweeps every request that is still receiving,
    instead of a timer per request (a timer set and cancelled for every webhook was a
    measurable cost), so a body times out within `body_timeout` plus a quarter of it.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.sweeping = False

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return WebhookRequest(self, request_conn)

    def watch_bodies(self) -> None:
        if not self.sweeping:
            self.sweeping = True
            asyncio.get_running_loop().call_later(self.sweep_seconds(), self.sweep)

    def sweep_seconds(self) -> float:
        return min(1.0, self.state.settings.server.body_timeout / 4)

    def sweep(self) -> None:
        now = time.perf_counter()
        receiving = False
        for request in list(self.state.inflight):
            if request.body_deadline is None:
                continue
            if request.body_deadline > now:
                receiving = True
                continue
            try:
                request.body_too_slow()
            except Exception:  # one request's failure must not stop the sweeping
                log.exception("request_failed", source=request.label)
        self.sweeping = receiving
        if receiving:
            asyncio.get_running_loop().call_later(self.sweep_seconds(), self.sweep)


class WebhookRequest(httputil.HTTPMessageDelegate):
    def __init__(self, intake: IntakeFactory, connection: httputil.HTTPConnection) -> None:
        self.intake = intake
        self.state = intake.state
        self.connection = connection
        self.started = time.perf_counter()
        self.label = "unknown"  # metrics label: a configured source name, never the URL's text
        self.outcome: dict[str, Any] = {}
        self.chunks: list[bytes] = []
        self.received = 0
        self.answered = False
        self.body_deadline: float | None = None  # while the body is being received
        self.waiting = False  # for the journal (or the rejected store); `inflight` keeps us
        self.in_headers = False  # deciding on the headers alone: the body is still unread
        self.too_large = False  # a chunked body passed max_body_bytes: 413 once it is read
        self.body_read = False  # Tornado read the whole request: the connection can go on
        self.saving: asyncio.Task[None] | None = None
        context = getattr(connection, "context", None)
        self.peer = getattr(context, "remote_ip", "") or ""
        self.scheme = getattr(context, "protocol", "http") or "http"
        self.client = self.peer
        self.method = ""
        self.uri = ""
        self.headers = NO_HEADERS  # until headers_received
        self.peer_trusted = False
        self.source_name = ""
        self.source: SourceSettings | None = None
        self.provider: Provider | None = None

    # -- HTTPMessageDelegate -----------------------------------------------------

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.method, self.uri, self.headers = start_line.method, start_line.path, headers
        self.state.inflight.add(self)
        self.in_headers = True
        try:
            self.check_headers()
        except Rejected as rejected:
            self.reject(rejected)
            return
        finally:
            self.in_headers = False
        if self.method == "POST":
            # A slow client gets `body_timeout` for its body, then a 408.
            self.body_deadline = self.started + self.state.settings.server.body_timeout
            self.intake.watch_bodies()

    def data_received(self, chunk: bytes) -> None:
        if self.answered or self.too_large:  # answered (408) or refused: drop the rest
            return
        self.received += len(chunk)
        if self.received > self.state.settings.server.max_body_bytes:
            # A chunked body declares no length: read the rest (Tornado caps it) and answer
            # 413 then, on a connection that stays usable.
            self.too_large = True
            self.chunks.clear()
        else:
            self.chunks.append(chunk)

    def finish(self) -> None:
        self.body_deadline = None
        self.body_read = True
        if self.answered:
            return
        if self.too_large:
            self.reject(Rejected(413, "body too large"))
            return
        # Everything up to the journal runs here, synchronously; the answer follows from the
        # journal's future (`committed`). No task per request: that machinery was a
        # measurable share of the budget.
        try:
            if self.method in ("GET", "HEAD"):
                self.handshake()
            else:
                self.accept()
        except Rejected as rejected:
            self.reject(rejected)
        except Exception:
            self.failed()

    def on_connection_close(self) -> None:
        self.body_deadline = None
        if not self.waiting:  # nothing in progress: nobody will finish this request
            self.state.inflight.discard(self)

    # -- the checks ----------------------------------------------------------------

    def check_headers(self) -> None:
        state = self.state
        settings = state.settings
        self.peer_trusted = state.trusted_peer(self.peer)
        forwarded = self.headers.get("X-Forwarded-For") if self.peer_trusted else None
        if forwarded:
            self.client = client_ip(self.peer, forwarded, settings.server.trusted_proxies)
        # The source is a dict lookup, so 429s and 404s can name it; the rate limit still
        # comes before anything that costs CPU (SPEC §1).
        path = self.uri.split("?", 1)[0]
        try:
            name = unquote(path[len(PREFIX) :].rstrip("/"), errors="strict")
        except UnicodeDecodeError:
            name = None
        source = self.source = settings.sources.get(name) if name is not None else None
        if source is not None:
            self.source_name = self.label = name or ""
        wait = state.limiter.take(self.client)
        if wait:
            state.metrics.rate_limited.inc()
            raise Rejected(429, "rate limited", retry_after=max(1, math.ceil(wait)))
        if name is None:
            raise Rejected(400, "bad request")
        if source is None:
            # The metric label stays "unknown" (bounded); the log line says what was asked.
            self.outcome["path_source"] = name[:64].encode("unicode_escape").decode("ascii")
            raise Rejected(404, "unknown source")
        provider = self.provider = state.providers.get(source.provider)
        if provider is None:  # check-config prevents this; a plugin may vanish
            raise Rejected(503, "provider not installed")
        if source.allow_ips and not is_trusted(self.client, source.allow_ips):
            raise Rejected(401, "address not allowed")
        if self.method in ("GET", "HEAD") and provider.has_handshake:
            return
        if self.method != "POST":
            allow = "GET, HEAD, POST" if provider.has_handshake else "POST"
            raise Rejected(405, "method not allowed", allow=allow)
        content_type = self.content_type()
        # A missing Content-Type is let through to the provider's parser; a wrong one is not.
        if content_type and content_type not in provider.content_types:
            raise Rejected(415, "unsupported content type")
        declared = self.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > settings.server.max_body_bytes:
            raise Rejected(413, "body too large")

    def body_too_slow(self) -> None:
        self.body_deadline = None
        if not self.answered:
            self.reject(Rejected(408, "request body too slow"))

    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    # -- the answer ----------------------------------------------------------------

    def failed(self) -> None:
        """A bug: answer 500 (never a stack trace) and keep the traceback in the log."""
        log.exception("request_failed", source=self.label)
        self.reject(Rejected(500, "internal error"))

    def handshake(self) -> None:
        assert self.provider is not None
        assert self.source is not None
        challenge = self.provider.handshake(self.inbound(b""), self.source)
        if challenge is None:
            raise Rejected(403, "verification failed")
        self.respond(200, "text/plain; charset=utf-8", challenge.encode())

    def accept(self) -> None:
        assert self.provider is not None
        assert self.source is not None
        state = self.state
        if state.draining:
            raise Rejected(503, "shutting down", retry_after=5)
        body = b"".join(self.chunks)
        request = self.inbound(body)
        if self.source.verify != "none" and not self.provider.verify(request, self.source):
            raise Rejected(401, "invalid signature")
        try:
            events = self.provider.parse(request, self.source_name, self.source)
        except ParseError as exc:
            self.outcome["parse_error"] = str(exc)[:200]
            self.waiting = True
            self.saving = asyncio.get_running_loop().create_task(
                self.keep_rejected(body, str(exc)), name="keep-rejected"
            )
            return
        for event in events:
            # Unique across sources: two of a team's numbers messaging each other see the
            # same provider message id, and every sink must still get both events.
            event.id = f"{self.source_name}:{event.id}"
        try:
            state.journal.submit_then(events, self.committed)
        except JournalError:  # closed under us: as any other failure to store, a 503
            raise Rejected(503, "cannot store event", retry_after=5) from None
        self.waiting = True

    async def keep_rejected(self, body: bytes, reason: str) -> None:
        try:
            await self.state.rejected.save(self.source_name, body, reason, settings=self.source)
        finally:
            self.reject(Rejected(400, "unparseable body"))

    def committed(self, result: tuple[list[Event], int] | None, error: BaseException | None) -> None:
        try:
            self.answer_committed(result, error)
        except Rejected as rejected:
            self.reject(rejected)
        except Exception:
            self.failed()

    def answer_committed(self, result: tuple[list[Event], int] | None, error: BaseException | None) -> None:
        assert self.provider is not None
        if isinstance(error, JournalError):
            # Never a 200 for an event that is not durable, never a 4xx for our own fault.
            raise Rejected(503, "cannot store event", retry_after=5)
        if error is not None:
            raise error
        assert result is not None
        new, duplicates = result
        state = self.state
        metrics = state.metrics
        for event in new:
            metrics.child(metrics.events, self.source_name, event.kind).inc()
            if event.kind == "system":
                up = self.provider.session_up(event)
                if up is not None:
                    metrics.session_up.labels(self.source_name).set(1 if up else 0)
        if new:
            state.last_event[self.source_name] = time.time()
        if duplicates:
            metrics.child(metrics.duplicates, self.source_name).inc(duplicates)
        self.outcome = {"accepted": len(new), "duplicates": duplicates}
        reply = self.provider.reply(len(new), duplicates)
        if reply is not None:
            self.respond(200, reply.content_type, reply.body)
        else:
            self.respond(200, "application/json", dump_json(self.outcome))

    def inbound(self, body: bytes) -> InboundRequest:
        assert self.provider is not None
        query = self.uri.split("?", 1)[1] if "?" in self.uri else ""
        return InboundRequest(
            method=self.method,
            url=self.public_url(query) if self.provider.signs_url else "",
            headers=self.headers,
            body=body,
            content_type=self.content_type(),
            query=httputil.parse_qs_bytes(query, keep_blank_values=True) if query else {},
            client_ip=self.client,
        )

    def public_url(self, query: str) -> str:
        """The URL the provider called, as it signed it (Twilio): behind a trusted proxy,
        rebuilt from `X-Forwarded-Proto`/`-Host`; a configured `public_url` wins."""
        assert self.source is not None
        if self.source.public_url:
            base = self.source.public_url
            return f"{base}?{query}" if "?" not in base and query else base
        scheme, host = self.scheme, self.headers.get("Host", "")
        if self.peer_trusted:
            scheme = self.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = self.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{scheme}://{host}{self.uri}"

    def reject(self, rejected: Rejected) -> None:
        if rejected.status not in (429,):
            self.state.metrics.rejected.labels(self.label, rejected.reason.replace(" ", "_")).inc()
        self.chunks.clear()
        # Never a stack trace or a secret: the reason is ours, chosen where we raise.
        body = json.dumps({"error": rejected.reason}).encode()
        if self.in_headers and not self.answered:
            self.answered = True
            headers = {"Content-Type": "application/json", **rejected.headers}
            answer_and_close(self.connection, rejected.status, headers, body, head=self.method == "HEAD")
            self.done(rejected.status)
            return
        self.respond(rejected.status, "application/json", body, rejected.headers, reason=rejected.reason)

    def respond(
        self,
        status: int,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        if self.answered:
            return
        self.answered = True
        headers = httputil.HTTPHeaders(
            {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}
        )
        if not self.body_read:
            # Answered mid-body (408): Tornado closes the connection after this answer.
            headers["Connection"] = "close"
        if self.method == "HEAD":
            body = b""
        start_line = httputil.ResponseStartLine(
            "HTTP/1.1", status, reason or httputil.responses.get(status, "Unknown")
        )
        try:
            self.connection.write_headers(start_line, headers, body)
            # Answered before the whole body arrived (413, 408): Tornado closes the
            # connection after this response instead of reading the rest.
            self.connection.finish()
        except StreamClosedError:
            pass  # the client went away; the event (if any) is durable all the same
        self.done(status)

    def done(self, status: int) -> None:
        self.waiting = False
        self.state.inflight.discard(self)
        elapsed = time.perf_counter() - self.started
        metrics = self.state.metrics
        metrics.child(metrics.http_requests, self.label, str(status)).inc()
        metrics.child(metrics.request_duration, self.label).observe(elapsed)
        if not self.state.settings.server.access_log:
            return
        # One canonical line per request.
        fields = {
            "method": self.method,
            "source": self.label,
            "status": status,
            "client": self.client,
            "ms": round(elapsed * 1000, 2),
        }
        info_line(log, "request", fields | self.outcome)
