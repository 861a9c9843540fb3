"""`make_app(state)`: the HTTP routes. `/webhooks/...` goes to the lean intake delegate
(`wahookd.intake`), everything else to a Tornado application."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any

import structlog
import tornado.web
from tornado import httputil

from wahookd.handlers import (
    AppState,
    BaseHandler,
    HealthHandler,
    MetricsHandler,
    ReadyHandler,
)
from wahookd.intake import PREFIX, IntakeFactory, answer_and_close

log = structlog.get_logger("wahookd.http")
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
# A connection that waits `server.idle_timeout` for a request's headers (idle keep-alive,
# or a client that trickles them) is closed, by a sweep every few seconds rather than by
# Tornado's header timeout, which sets and cancels a timer for every request.
IDLE_SWEEP_SECONDS = 5.0


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason="not found")


def _quiet(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log is replaced by the webhook handler's one line per request."""


def make_app(state: AppState, *, with_metrics: bool = True) -> Router:
    routes: list[Any] = [
        (r"/healthz", HealthHandler, {"state": state}),
        (r"/readyz", ReadyHandler, {"state": state}),
    ]
    if with_metrics:
        routes.append((r"/metrics", MetricsHandler, {"state": state}))
    application = tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        log_function=_quiet,
        xsrf_cookies=False,
    )
    return Router(IntakeFactory(state), application)


def oversized(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> tuple[int, str] | None:
    """414 past 8 KiB of URL, 431 past 64 KiB of headers (SPEC §2): answered, where Tornado's
    own limit drops the connection without a word (it is set higher, see `daemon`)."""
    if len(start_line.path) > MAX_URL_BYTES:
        return 414, "URI too long"
    size = len(start_line.path)
    for name, value in headers.get_all():
        size += len(name) + len(value) + 4
    if size > MAX_HEADER_BYTES:
        return 431, "request header fields too large"
    return None


class Router(httputil.HTTPServerConnectionDelegate):
    """`/webhooks/...` to the intake, the rest to the application, decided on the path
    prefix alone (Tornado's RuleRouter builds a whole request object just to route)."""

    def __init__(self, intake: IntakeFactory, application: tornado.web.Application) -> None:
        self.intake = intake
        self.application = application
        # Connections waiting for a request's headers, and since when (Tornado asks for a
        # delegate as it starts to read the next request).
        self.waiting: dict[object, float] = {}
        self.sweeping = False

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        self.waiting[server_conn] = time.monotonic()
        if not self.sweeping:
            self.sweeping = True
            self.sweep_later()
        return _Dispatch(self, server_conn, request_conn)

    def sweep_later(self) -> None:
        seconds = min(IDLE_SWEEP_SECONDS, self.intake.state.settings.server.idle_timeout / 4)
        asyncio.get_running_loop().call_later(seconds, self.sweep)

    def sweep(self) -> None:
        """Close the connections that have waited `server.idle_timeout` for headers."""
        deadline = time.monotonic() - self.intake.state.settings.server.idle_timeout
        for server_conn, since in list(self.waiting.items()):
            if since < deadline:
                del self.waiting[server_conn]
                server_conn.stream.close()  # type: ignore[attr-defined]
        self.sweeping = bool(self.waiting)
        if self.sweeping:
            self.sweep_later()


class _Dispatch(httputil.HTTPMessageDelegate):
    def __init__(self, router: Router, server_conn: object, request_conn: httputil.HTTPConnection) -> None:
        self.router = router
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.delegate: httputil.HTTPMessageDelegate | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.router.waiting.pop(self.server_conn, None)
        refusal = oversized(start_line, headers)
        if refusal is not None:
            self.refuse(start_line, *refusal)
            return None
        path = start_line.path.split("?", 1)[0]
        webhook = path.startswith(PREFIX) and path.rstrip("/").count("/") == 2  # /webhooks/{source}
        target = self.router.intake if webhook else self.router.application
        self.delegate = target.start_request(self.server_conn, self.request_conn)
        return self.delegate.headers_received(start_line, headers)

    def refuse(self, start_line: httputil.RequestStartLine, status: int, reason: str) -> None:
        body = json.dumps({"error": reason}).encode()
        head = start_line.method == "HEAD"
        answer_and_close(self.request_conn, status, {"Content-Type": "application/json"}, body, head=head)
        state = self.router.intake.state
        metrics = state.metrics
        metrics.child(metrics.http_requests, "unknown", str(status)).inc()
        metrics.rejected.labels("unknown", reason.replace(" ", "_")).inc()
        if state.settings.server.access_log:
            log.info("request", method=start_line.method[:16], source="unknown", status=status)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        assert self.delegate is not None
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        assert self.delegate is not None
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.router.waiting.pop(self.server_conn, None)
        if self.delegate is not None:
            self.delegate.on_connection_close()


def make_metrics_app(state: AppState) -> tornado.web.Application:
    """`/metrics` alone, for `server.metrics_listen`."""
    return tornado.web.Application(
        [(r"/metrics", MetricsHandler, {"state": state})],
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        log_function=_quiet,
    )
