"""The nats sink itself: imported only when a sink table names `plugin = "nats"`, so
that nats-py is not loaded into every wahookd that merely has this plugin installed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.events import dump_json
from wahookd.hookspecs import SinkContext
from wahookd_nats import NatsOptions, SubjectTemplate

# -- the sink ------------------------------------------------------------------------

# Worth a retry: the server is down, slow, restarting, or the stream is not there yet.
TRANSIENT = (nats.errors.Error, OSError, TimeoutError)
JS_MESSAGE_TOO_LARGE = 10054  # JetStream err_code: over the stream's max_msg_size


class JetStreamSink:
    """Publishes each event to ``subject`` (rendered from the event) in ``stream``, with
    ``Nats-Msg-Id`` = event id; delivered when the server has acked. Safe for concurrent
    `deliver` calls (one connection, many publishes in flight)."""

    def __init__(self, options: NatsOptions, context: SinkContext) -> None:
        self.options = options
        self.name = context.name
        self.log = context.log
        self.subject = SubjectTemplate(options.subject)
        self.client: Client | None = None
        self.jetstream: JetStreamContext | None = None
        self.connecting = asyncio.Lock()

    async def start(self) -> None:
        await self.connect()

    async def connect(self) -> tuple[Client, JetStreamContext]:
        """The connection, made (again) when there is none: nats-py's own reconnection is
        off, so that a publish to a server that went away fails now instead of waiting in
        a buffer; wahookd's retry is the reconnection."""
        async with self.connecting:
            if self.client is not None and self.jetstream is not None and self.client.is_connected:
                return self.client, self.jetstream
            await self.drop()
            timeout = self.options.timeout
            try:
                async with asyncio.timeout(timeout * 2):
                    client = await nats.connect(
                        self.options.servers,
                        name=f"wahookd sink {self.name}",
                        connect_timeout=timeout,
                        allow_reconnect=False,
                        # The first connection tries each server twice, 0.1 s apart, then fails.
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.1,
                        error_cb=self.on_error,
                    )
            except TRANSIENT as exc:
                raise DeliveryError(f"nats: cannot connect: {exc or type(exc).__name__}") from None
            jetstream = client.jetstream(timeout=timeout)
            try:
                if self.options.create_stream:
                    await self.ensure_stream(jetstream)
            except TRANSIENT as exc:
                await client.close()
                raise DeliveryError(f"nats: cannot create stream {self.options.stream}: {exc}") from None
            self.client, self.jetstream = client, jetstream
            return client, jetstream

    async def ensure_stream(self, jetstream: JetStreamContext) -> None:
        name = self.options.stream
        try:
            await jetstream.stream_info(name)
            return  # an existing stream is the operator's: never changed here
        except nats.js.errors.NotFoundError:
            pass
        config = StreamConfig(
            name=name,
            subjects=[self.subject.pattern],
            storage=StorageType.FILE,
            duplicate_window=self.options.duplicate_window,
        )
        try:
            await jetstream.add_stream(config)
        except nats.js.errors.BadRequestError:
            await jetstream.stream_info(name)  # another node created it meanwhile: fine
        self.log.info("nats_stream_created", stream=name, subjects=config.subjects)

    async def on_error(self, exc: Exception) -> None:
        # nats-py reports here what also fails the publish (refused connections, a closed
        # socket); the delivery worker logs those with the attempt, so only a trace here.
        self.log.debug("nats_client_error", error=str(exc) or type(exc).__name__)

    async def deliver(self, event: dict[str, Any]) -> None:
        client, jetstream = await self.connect()
        event_id = str(event["id"])
        subject = self.subject.render(event)
        # dump_json: every number as the provider sent it (1e400, integers past 64 bits)
        payload = dump_json(event)
        if len(payload) > client.max_payload:
            raise PermanentDeliveryError(self.too_large(len(payload), client.max_payload))
        headers = {"Nats-Msg-Id": event_id, "Content-Type": "application/json"}
        try:
            ack = await jetstream.publish(
                subject, payload, timeout=self.options.timeout, stream=self.options.stream, headers=headers
            )
        except nats.errors.MaxPayloadError:  # the headers tipped it over
            raise PermanentDeliveryError(self.too_large(len(payload), client.max_payload)) from None
        except nats.js.errors.APIError as exc:
            if exc.err_code == JS_MESSAGE_TOO_LARGE:
                raise PermanentDeliveryError(
                    f"nats: stream {self.options.stream}: {exc.description}"
                ) from None
            raise DeliveryError(f"nats: stream {self.options.stream}: {exc.description or exc}") from None
        except nats.js.errors.NoStreamResponseError:
            raise DeliveryError(
                f"nats: no stream answers for {subject}: create stream {self.options.stream} "
                f"with subjects {self.subject.pattern}, or set create_stream = true"
            ) from None
        except TRANSIENT as exc:
            raise DeliveryError(f"nats: {exc or type(exc).__name__}") from None
        if ack.duplicate:
            self.log.debug("nats_event_repeated", stream=ack.stream, seq=ack.seq)

    def too_large(self, size: int, limit: int) -> str:
        return (
            f"nats: the event is {size} bytes, over the server's max_payload of {limit}: raise "
            "max_payload in nats-server.conf (at most 64 MB; wahookd's bodies go up to "
            "server.max_body_bytes), then wahookd replay --dead"
        )

    async def drop(self) -> None:
        client, self.client, self.jetstream = self.client, None, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(*TRANSIENT):  # it is gone either way
                await client.close()

    async def close(self) -> None:
        async with self.connecting:
            await self.drop()
