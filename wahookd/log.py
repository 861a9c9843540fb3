"""structlog, configured once: JSON lines when not on a TTY, readable columns on one."""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

BUFFER_BYTES = 64 * 1024
# Stderr, buffered (see `LineWriter`), and a text view of it for stdlib logging; made once
# and kept: a TextIOWrapper that is collected closes the buffer under it.
_stream: io.BufferedWriter | None = None
_text: io.TextIOWrapper | None = None


def _to_json(value: object, **_: object) -> bytes:
    return orjson.dumps(value, default=repr)


class LineWriter:
    """structlog's BytesLogger, except that info and debug lines wait in a buffer (written
    when it fills, by `flush_logs()` a few times a second, and at exit); warnings and errors
    are written at once. The buffer is wahookd's own: with PYTHONUNBUFFERED (common in
    containers) Python's stderr has none, and one write(2) per request was a measurable
    cost."""

    def __init__(self, stream: io.BufferedWriter) -> None:
        self.stream = stream

    def info(self, message: bytes) -> None:
        self.stream.write(message + b"\n")

    debug = msg = info

    def warning(self, message: bytes) -> None:
        self.stream.write(message + b"\n")
        self.stream.flush()

    warn = error = err = critical = fatal = exception = failure = warning


def add_timestamp(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`timestamp`, as structlog's `TimeStamper(fmt="iso", utc=True)` writes it, with the
    date and time formatted once a second instead of on every line."""
    global _clock
    now = time.time()
    second, formatted = _clock
    if int(now) != second:
        second = int(now)
        formatted = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _clock = (second, formatted)  # one assignment: other threads see both or neither
    event["timestamp"] = f"{formatted}.{int((now - second) * 1_000_000):06d}Z"
    return event


_clock: tuple[int, str] = (-1, "")


def flush_logs() -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        if _stream is not None:
            _stream.flush()


def configure_logging(level: str = "info", *, json_output: bool | None = None) -> None:
    global _stream, _text
    if json_output is None:
        json_output = not sys.stderr.isatty()
    processors: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        add_timestamp,
        structlog.processors.format_exc_info,
    ]
    handler_stream: Any = sys.stderr
    # The request line is written for every request: orjson straight to bytes, as
    # structlog's performance notes advise, keeps it to a few microseconds.
    if json_output:
        processors.append(structlog.processors.JSONRenderer(serializer=_to_json))
        if _stream is None or _text is None:
            _stream = io.BufferedWriter(io.FileIO(sys.stderr.fileno(), "wb", closefd=False), BUFFER_BYTES)
            # Stdlib log records (Tornado's), tracebacks and the CLI's error line go through
            # the same buffer, which each of their lines flushes: lines keep their order.
            _text = io.TextIOWrapper(
                _stream, encoding="utf-8", errors="backslashreplace", line_buffering=True
            )
            if sys.stderr is sys.__stderr__:  # not a test's capture
                sys.stderr = _text
            atexit.register(flush_logs)
        writer = LineWriter(_stream)
        factory: Any = lambda *_: writer  # noqa: E731 - structlog wants a factory
        handler_stream = _text
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
    logging.basicConfig(level=logging.WARNING, stream=handler_stream, format="%(name)s %(message)s")
