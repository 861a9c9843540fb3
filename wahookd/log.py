"""structlog, configured once: JSON lines when not on a TTY, readable columns on one."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog


def _to_json(value: object, **_: object) -> bytes:
    return orjson.dumps(value, default=repr)


class LineWriter:
    """structlog's BytesLogger, except that info and debug lines wait in the stream's buffer
    (written when it fills, by `flush_logs()` a few times a second, and at exit); warnings
    and errors are written at once. One write(2) per request was a measurable cost."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def info(self, message: bytes) -> None:
        self.stream.write(message + b"\n")

    debug = msg = info

    def warning(self, message: bytes) -> None:
        self.stream.write(message + b"\n")
        self.stream.flush()

    warn = error = err = critical = fatal = exception = failure = warning


def flush_logs() -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        sys.stderr.buffer.flush()


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
        writer = LineWriter(sys.stderr.buffer)
        factory: Any = lambda *_: writer  # noqa: E731 - structlog wants a factory
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
