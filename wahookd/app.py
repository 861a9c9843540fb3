"""`make_app(state)`: the Tornado application."""

from __future__ import annotations

from typing import Any

import tornado.web

from wahookd.handlers import (
    AppState,
    BaseHandler,
    HealthHandler,
    MetricsHandler,
    ReadyHandler,
    WebhookHandler,
)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason="not found")


def _quiet(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log is replaced by the webhook handler's one line per request."""


def make_app(state: AppState, *, with_metrics: bool = True) -> tornado.web.Application:
    routes: list[Any] = [
        (r"/webhooks/(?P<source>[^/]+)/?", WebhookHandler, {"state": state}),
        (r"/healthz", HealthHandler, {"state": state}),
        (r"/readyz", ReadyHandler, {"state": state}),
    ]
    if with_metrics:
        routes.append((r"/metrics", MetricsHandler, {"state": state}))
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        log_function=_quiet,
        xsrf_cookies=False,
    )


def make_metrics_app(state: AppState) -> tornado.web.Application:
    """`/metrics` alone, for `server.metrics_listen`."""
    return tornado.web.Application(
        [(r"/metrics", MetricsHandler, {"state": state})],
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        log_function=_quiet,
    )
