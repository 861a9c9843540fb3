"""structlog, configured once: JSON lines when not on a TTY, readable columns on one."""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
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


# syslog priorities (RFC 5424): under journald a line starting with "<N>" is stored at
# priority N (systemd's SyslogLevelPrefix=, on by default), so `journalctl -p warning` works.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_threshold = LEVELS["info"]  # `set_level` moves it; read on every line


def under_journald() -> bool:
    """stderr is the journal's stream: systemd says so with JOURNAL_STREAM=<dev>:<inode>."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        status = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


class LineWriter:
    """structlog's BytesLogger, except that info and debug lines wait in a buffer (written
    when it fills, by `flush_logs()` a few times a second, and at exit); warnings and errors
    are written at once. The buffer is wahookd's own: with PYTHONUNBUFFERED (common in
    containers) Python's stderr has none, and one write(2) per request was a measurable
    cost. Under journald each line starts with its syslog priority."""

    def __init__(self, stream: io.BufferedWriter, *, priorities: bool = False) -> None:
        self.stream = stream
        prefix = {name: f"<{number}>".encode() if priorities else b"" for name, number in PRIORITIES.items()}
        self.debug_prefix, self.info_prefix = prefix["debug"], prefix["info"]
        self.warning_prefix, self.error_prefix = prefix["warning"], prefix["error"]

    def info(self, message: bytes) -> None:
        self.stream.write(self.info_prefix + message + b"\n")

    msg = info

    def debug(self, message: bytes) -> None:
        self.stream.write(self.debug_prefix + message + b"\n")

    def warning(self, message: bytes) -> None:
        self.stream.write(self.warning_prefix + message + b"\n")
        self.stream.flush()

    warn = warning

    def error(self, message: bytes) -> None:
        self.stream.write(self.error_prefix + message + b"\n")
        self.stream.flush()

    err = critical = fatal = exception = failure = error


class PriorityFormatter(logging.Formatter):
    """Stdlib records (Tornado's) with the same syslog prefix as wahookd's own lines."""

    def format(self, record: logging.LogRecord) -> str:
        number = PRIORITIES.get(record.levelname.lower(), 6)
        return f"<{number}>{super().format(record)}"


def drop_below_level(_: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The level filter, as a processor so that a reload can move it (`set_level`):
    structlog caches each logger with the filter it was configured with."""
    if LEVELS.get(method, 50) < _threshold:
        raise structlog.DropEvent
    return event


def set_level(level: str) -> None:
    global _threshold
    _threshold = LEVELS[level]
    logging.getLogger().setLevel(max(logging.WARNING, LEVELS[level]))


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


# The JSON mode's writer, for `info_line`; None on a TTY (or before `configure_logging`).
_json_writer: LineWriter | None = None


def info_line(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """`logger.info(event, **fields)`, byte for byte as the processor chain writes it in JSON
    mode, without the chain: the access log's path, one line per request, where structlog's
    bound-logger machinery took ~3 times the line's own cost. `fields` is consumed."""
    writer = _json_writer
    if writer is None:
        logger.info(event, **fields)
        return
    if _threshold > LEVELS["info"]:
        return
    fields["event"] = event
    fields["level"] = "info"
    writer.info(_to_json(add_timestamp(None, "info", fields)))


def flush_logs() -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        if _stream is not None:
            _stream.flush()


def configure_logging(level: str = "info", *, json_output: bool | None = None) -> None:
    global _stream, _text, _json_writer
    if json_output is None:
        json_output = not sys.stderr.isatty()
    processors: list[structlog.types.Processor] = [
        drop_below_level,
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
        journald = under_journald()
        writer = _json_writer = LineWriter(_stream, priorities=journald)
        factory: Any = lambda *_: writer  # noqa: E731 - structlog wants a factory
        handler_stream = _text
    else:
        _json_writer = None
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.PrintLoggerFactory(sys.stderr)
        journald = False
    set_level(level)
    structlog.configure(
        processors=processors,
        # Debug calls pass this filter; `drop_below_level` decides, so a reload can change it.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Tornado's own loggers (e.g. "Malformed HTTP message") go through the same stream.
    handler = logging.StreamHandler(handler_stream)
    formatter_class = PriorityFormatter if journald else logging.Formatter
    handler.setFormatter(formatter_class("%(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, LEVELS[level]))
