"""Helpers for people who write wahookd plugins (public API, kept stable).

- `make_event(**overrides)` builds a valid SPEC §4 event; `make_status(...)` a status event.
- `CaptureSink` records what it is given and can be told to fail its first N deliveries.
- `make_context(...)` builds the `SinkContext` wahookd would pass to a sink factory, and
  `build_sink(spec, options, ...)` validates options with the spec's model and builds the
  sink the way the daemon does; `run_sink(...)` drives start → deliver* → flush → close.
- `SinkConformance` is the conformance suite (SPEC §6): subclass it in a test module, set
  `plugin`, define `options(tmp_path)` and `read_back()`, and pytest checks every delivery
  promise against the real target (see `wahookd.conformance`). `TcpProxy` stands between a
  sink and a network service so `break_target()` can cut it.

Example::

    from wahookd.testing import make_event, run_sink
    from my_plugin import wahookd_register_sinks

    def test_my_sink_delivers(tmp_path):
        [spec] = wahookd_register_sinks()
        asyncio.run(run_sink(spec, {"channel": "#ops"}, [make_event()], state_dir=tmp_path))
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wahookd.errors import ConfigError, DeliveryError, PermanentDeliveryError
from wahookd.events import now_rfc3339
from wahookd.hookspecs import Sink, SinkContext, SinkSpec, hookimpl
from wahookd.lifecycle import Failure, SinkHandle
from wahookd.settings import describe_errors

if TYPE_CHECKING:
    from wahookd.conformance import SinkConformance

__all__ = [
    "CAPTURE_SPEC",
    "CaptureOptions",
    "CapturePlugin",
    "CaptureSink",
    "SinkConformance",
    "TcpProxy",
    "build_sink",
    "imported_at_start",
    "make_context",
    "make_event",
    "make_status",
    "raise_failure",
    "run_sink",
]

_counter = itertools.count(1)


def __getattr__(name: str) -> Any:
    # The suite imports pytest; loaded on first use, so `wahookd.testing` itself does not.
    if name == "SinkConformance":
        from wahookd.conformance import SinkConformance

        return SinkConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_event(**overrides: Any) -> dict[str, Any]:
    """A valid inbound text message event; keyword arguments replace fields.

    Use ``from_=...`` for the ``from`` field (a Python keyword). Each call gets a new id
    unless ``id`` is given.
    """
    number = next(_counter)
    message_id = overrides.pop("message_id", f"3EB0{uuid.uuid4().hex[:16].upper()}")
    event: dict[str, Any] = {
        "id": f"test:{message_id}",
        "source": "test",
        "provider": "wasender",
        "kind": "message",
        "event": "messages.upsert",
        "message_id": message_id,
        "chat_id": "15550000001@s.whatsapp.net",
        "from": "15550000001",
        "to": "15550000002",
        "from_me": False,
        "sender_name": "Test Sender",
        "type": "text",
        "text": f"test message {number}",
        "media": None,
        "status": None,
        "error": None,
        "ref_message_id": None,
        "reply_to": None,
        "from_lid": None,
        "from_user_id": None,
        "poll": None,
        "call": None,
        "referral": None,
        "timestamp": now_rfc3339(),
        "received_at": now_rfc3339(),
        "raw": {"key": {"id": message_id}, "message": {"conversation": f"test message {number}"}},
    }
    if "from_" in overrides:
        overrides["from"] = overrides.pop("from_")
    unknown = set(overrides) - set(event)
    if unknown:
        raise TypeError(f"make_event() got fields not in the event schema: {sorted(unknown)}")
    event.update(overrides)
    return event


def make_status(message_id: str, status: str, **overrides: Any) -> dict[str, Any]:
    """A `kind=status` event for an outbound message; its id is message id + status."""
    fields: dict[str, Any] = {
        "id": f"test:{message_id}:{status}",
        "kind": "status",
        "event": "messages.update",
        "message_id": message_id,
        "from": "15550000002",
        "to": "15550000001",
        "from_me": True,
        "sender_name": None,
        "type": None,
        "text": None,
        "status": status,
        "error": {"code": 131026, "message": "undeliverable"} if status == "failed" else None,
        "raw": {"key": {"id": message_id}, "update": {"status": status}},
    }
    fields.update(overrides)
    return make_event(**fields)


def make_context(
    state_dir: Path, name: str = "test", *, durable: bool = False, log: Any = None
) -> SinkContext:
    """The `SinkContext` wahookd passes to a sink factory."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    return SinkContext(
        name=name,
        state_dir=Path(state_dir),
        durable=durable,
        log=log or structlog.get_logger("wahookd.sink").bind(sink=name),
    )


def build_sink(
    spec: SinkSpec,
    options: Mapping[str, Any] | None = None,
    *,
    state_dir: Path,
    name: str = "test",
    durable: bool = False,
) -> Sink:
    """Validate `options` with the spec's model and call its factory, as the daemon does.

    Invalid options raise `ConfigError` with the lines the daemon would print.
    """
    try:
        validated = spec.options.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, prefix=("sinks", name))) from None
    return spec.factory(validated, make_context(state_dir, name, durable=durable))


async def run_sink(
    spec: SinkSpec,
    options: Mapping[str, Any] | None,
    events: Iterable[dict[str, Any]],
    *,
    state_dir: Path,
    name: str = "test",
) -> Sink:
    """Build the sink, start it, deliver `events` in order, flush and close; returns the sink."""
    sink = build_sink(spec, options, state_dir=state_dir, name=name)
    handle = SinkHandle(name, sink)  # drives the sink as the daemon's worker does
    raise_failure(await handle.start())
    try:
        for event in events:
            raise_failure(await handle.deliver(event))
        raise_failure(await handle.flush())
    finally:
        await handle.close()
    return sink


def imported_at_start(module: str) -> bool:
    """Whether `module` is imported when wahookd loads the installed plugins, as it does at
    every start, configured or not: a sink's client library should not be (docs/plugins.md).
    Asked of a fresh interpreter, since this one may have imported it already."""
    script = (
        "import sys; from wahookd.plugins import collect, get_plugin_manager; "
        f"collect(get_plugin_manager()); print({module!r} in sys.modules)"
    )
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return answer.stdout.strip() == "True"


def raise_failure(failure: Failure | None) -> None:
    """What the sink raised, raised again for the test to see."""
    if failure is not None:
        raise failure.exception or AssertionError(failure.error)


class CaptureOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fail_times: int = Field(0, ge=0, description="fail this many deliveries before succeeding")
    permanent: bool = Field(False, description="fail with PermanentDeliveryError instead")
    retry_after: float | None = Field(None, ge=0, description="retry_after on the failures")


class CaptureSink:
    """Records delivered events in `events`; fails its first `fail_times` deliveries.

    `attempts` counts every call, failed or not; `started`/`flushed`/`closed` tell which of
    the optional methods ran.
    """

    def __init__(self, options: CaptureOptions | None = None, context: SinkContext | None = None):
        self.options = options or CaptureOptions.model_validate({})
        self.context = context
        self.events: list[dict[str, Any]] = []
        self.attempts = 0
        self.failures_left = self.options.fail_times
        self.started = self.flushed = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def deliver(self, event: dict[str, Any]) -> None:
        self.attempts += 1
        if self.failures_left > 0:
            self.failures_left -= 1
            if self.options.permanent:
                raise PermanentDeliveryError(f"capture: told to fail ({event['id']})")
            raise DeliveryError(
                f"capture: told to fail ({event['id']})", retry_after=self.options.retry_after
            )
        self.events.append(event)

    async def flush(self) -> None:
        self.flushed = True

    async def close(self) -> None:
        self.closed = True

    @property
    def ids(self) -> list[str]:
        return [event["id"] for event in self.events]


CAPTURE_SPEC = SinkSpec("capture", CaptureOptions, CaptureSink, "record events (for tests)")


class CapturePlugin:
    """A plugin object that registers `CaptureSink` as sink ``capture``.

    ``manager.register(CapturePlugin())`` makes ``plugin = "capture"`` usable in tests.
    """

    @hookimpl
    def wahookd_register_sinks(self) -> list[SinkSpec]:
        return [CAPTURE_SPEC]


class TcpProxy:
    """A TCP relay from ``127.0.0.1:<port>`` to a real service, so a test can take the
    service away from a sink and give it back (`SinkConformance.break_target`)::

        def options(self, tmp_path):
            self.proxy = TcpProxy("127.0.0.1", 6379)
            return {"url": f"redis://127.0.0.1:{self.proxy.port}/0"}

        def break_target(self):
            self.proxy.cut()

        def heal_target(self):
            self.proxy.restore()

    `cut()` resets every open connection and refuses new ones, as a service that went
    down; `restore()` relays again. A proxy made during a conformance check is closed after
    it; elsewhere call `close()` (or use it as a context manager).
    """

    live: ClassVar[set[TcpProxy]] = set()  # proxies not closed yet

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = False
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        TcpProxy.live.add(self)
        threading.Thread(target=self._accept, name=f"tcp-proxy:{self.port}", daemon=True).start()

    def cut(self) -> None:
        """Reset every relayed connection and refuse new ones until `restore()`."""
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            self._reset(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        TcpProxy.live.discard(self)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        # SO_LINGER 0: close() sends RST, as a peer that crashed; shutdown() wakes the pump.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refuse = self._cut
            if refuse:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._cut:
                    self._reset(client)
                    self._reset(upstream)
                    continue
                self._sockets.update((client, upstream))
            done = threading.Semaphore(0)  # the second pump to finish closes the pair
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, done), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, done: threading.Semaphore) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        if done.acquire(blocking=False):
            with self._lock:
                self._sockets.difference_update((source, sink))
            source.close()
            sink.close()
        else:
            done.release()
