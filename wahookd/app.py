"""`make_app(state)`: the HTTP routes. `/webhooks/...` goes to the lean intake delegate
(`wahookd.intake`), everything else to a Tornado application."""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.routing import AnyMatches, PathMatches, Rule, RuleRouter

from wahookd.handlers import (
    AppState,
    BaseHandler,
    HealthHandler,
    MetricsHandler,
    ReadyHandler,
)
from wahookd.intake import PREFIX, IntakeFactory


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason="not found")


def _quiet(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log is replaced by the webhook handler's one line per request."""


def make_app(state: AppState, *, with_metrics: bool = True) -> RuleRouter:
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
    return RuleRouter(
        [
            Rule(PathMatches(PREFIX + r"[^/]+/?$"), IntakeFactory(state)),
            Rule(AnyMatches(), application),
        ]
    )


def make_metrics_app(state: AppState) -> tornado.web.Application:
    """`/metrics` alone, for `server.metrics_listen`."""
    return tornado.web.Application(
        [(r"/metrics", MetricsHandler, {"state": state})],
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        log_function=_quiet,
    )
