"""One object owns a sink's lifecycle: start, deliver, flush, close, behind one guarded call.

The delivery worker, `wahookd replay` and `wahookd.testing` all drive a sink through a
`SinkHandle`, so the sink boundary is written once (as mitmproxy's `safecall`): what a sink
raises becomes a `Failure`, never an exception in wahookd. A `DeliveryError` or
`PermanentDeliveryError` is the sink speaking, logged by the caller as one line. Anything
else is a bug in the plugin (a `TypeError`, a `KeyError`): its traceback is logged once per
kind of failure, bound to `sink=<name>`, and every occurrence is counted in
`wahookd_sink_errors_total{sink,kind}`; it is still retried, since a flaky dependency
raises the same way.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import structlog

from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.hookspecs import Sink


class Failure(NamedTuple):
    """Why one call into a sink failed."""

    error: str
    retry_after: float | None = None  # the target's Retry-After, in seconds
    permanent: bool = False  # retrying cannot help: dead-letter now
    exception: Exception | None = None  # what the sink raised


class SinkHandle:
    def __init__(self, name: str, sink: Sink, *, errors: Any = None, log: Any = None) -> None:
        self.name = name
        self.sink = sink
        self.errors = errors  # wahookd_sink_errors_total, or None outside the daemon
        self.log = log or structlog.get_logger("wahookd.sink").bind(sink=name)
        self._seen: set[tuple[str, str]] = set()  # (method, exception type) tracebacks logged

    async def start(self) -> Failure | None:
        return await self._call("start")

    async def deliver(self, event: dict[str, Any]) -> Failure | None:
        return await self._call("deliver", event)

    async def flush(self) -> Failure | None:
        return await self._call("flush")

    async def close(self) -> Failure | None:
        return await self._call("close")

    async def _call(self, method: str, *args: Any) -> Failure | None:
        """The sink boundary: call `sink.<method>(*args)` (optional methods may be absent,
        and may be plain functions), and turn whatever it raises into a `Failure`."""
        function = getattr(self.sink, method, None)
        if function is None:
            if method == "deliver":
                return Failure("the sink has no deliver() method", permanent=True)
            return None
        try:
            result = function(*args)
            if inspect.isawaitable(result):
                await result
        except PermanentDeliveryError as exc:
            return Failure(str(exc) or type(exc).__name__, permanent=True, exception=exc)
        except DeliveryError as exc:
            return Failure(str(exc) or type(exc).__name__, exc.retry_after, exception=exc)
        except Exception as exc:  # the sink boundary: a plugin's bug must not stop wahookd
            kind = type(exc).__name__
            if self.errors is not None:
                self.errors.labels(self.name, kind).inc()
            if (method, kind) not in self._seen:
                self._seen.add((method, kind))
                self.log.error("sink_error", method=method, kind=kind, exc_info=exc)
            return Failure(f"{kind}: {exc}" if str(exc) else kind, exception=exc)
        return None
