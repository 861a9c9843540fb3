"""structlog, configured once: JSON lines when not on a TTY, readable columns on one."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def _to_json(value: object, **_: object) -> bytes:
    return orjson.dumps(value, default=repr)


def configure_logging(level: str = "info", *, json_output: bool | None = None) -> None:
    if json_output is None:
        json_output = not sys.stderr.isatty()
    processors: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    # The request line is written for every request: orjson straight to bytes, as
    # structlog's performance notes advise, keeps it to a few microseconds.
    if json_output:
        processors.append(structlog.processors.JSONRenderer(serializer=_to_json))
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Tornado's own loggers (e.g. "Malformed HTTP message") go through the same stream.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
