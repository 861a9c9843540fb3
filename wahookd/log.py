"""structlog, configured once: JSON lines when not on a TTY, readable columns on one."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def _to_json(value: object, **_: object) -> str:
    # orjson: the request line is written for every request, so it must be cheap.
    return orjson.dumps(value, default=repr).decode()


def configure_logging(level: str = "info", *, json_output: bool | None = None) -> None:
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_to_json)
        if json_output
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Tornado's own loggers (e.g. "Malformed HTTP message") go through the same output.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
