"""The rabbitmq sink itself: imported only when a sink table names `plugin = "rabbitmq"`, so
that aio-pika is not loaded into every wahookd that merely has this plugin installed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.events import dump_json
from wahookd.hookspecs import SinkContext
from wahookd_rabbitmq import RabbitMQOptions, RoutingKeyTemplate

# -- the sink ------------------------------------------------------------------------

# Worth a retry: the broker is down, blocked, refusing us for now, or the exchange or a
# queue for the key is not there yet.
TRANSIENT = (aiormq.exceptions.AMQPError, OSError, TimeoutError)


class RabbitMQSink:
    """Publishes each event as a persistent message to ``exchange`` with the routing key
    rendered from the event; delivered on the broker's confirm. Safe for concurrent
    `deliver` calls (one channel, many publishes awaiting their confirms)."""

    def __init__(self, options: RabbitMQOptions, context: SinkContext) -> None:
        self.options = options
        self.name = context.name
        self.log = context.log
        self.routing_key = RoutingKeyTemplate(options.routing_key)
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None
        self.connecting = asyncio.Lock()

    async def start(self) -> None:
        await self.connect()

    async def connect(self) -> AbstractExchange:
        """The exchange on an open channel, connecting (again) when there is none. A plain
        connection, not aio-pika's robust one: a publish to a broker that went away fails
        now, and wahookd's retry is the reconnection."""
        async with self.connecting:
            if (
                self.exchange is not None
                and self.channel is not None
                and not self.channel.is_closed
                and self.connection is not None
                and not self.connection.is_closed
            ):
                return self.exchange
            await self.drop()
            options = self.options
            try:
                async with asyncio.timeout(options.timeout * 2):
                    connection = self.connection = await aio_pika.connect(
                        options.url.get_secret_value(),
                        timeout=options.timeout,
                        client_properties={"connection_name": f"wahookd sink {self.name}"},
                    )
                    channel = self.channel = await connection.channel(publisher_confirms=True)
                    if not options.exchange:
                        exchange = channel.default_exchange
                    elif options.declare and not options.exchange.startswith("amq."):
                        exchange = await channel.declare_exchange(
                            options.exchange, aio_pika.ExchangeType(options.exchange_type), durable=True
                        )
                    else:
                        exchange = await channel.get_exchange(options.exchange, ensure=True)
            except TRANSIENT as exc:
                await self.drop()
                raise DeliveryError(f"rabbitmq: {describe(exc)}") from None
            self.exchange = exchange
            return exchange

    async def deliver(self, event: dict[str, Any]) -> None:
        exchange = await self.connect()
        routing_key = self.routing_key.render(event)
        message = aio_pika.Message(
            # dump_json: every number as the provider sent it (1e400, integers past 64 bits)
            dump_json(event),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(event["id"]),
            type=str(event.get("kind") or ""),
            app_id="wahookd",
            # For a headers exchange, and for consumers that route without parsing.
            headers={
                name: str(event[name])
                for name in ("source", "provider", "kind", "type", "event", "status")
                if event.get(name) is not None
            },
        )
        try:
            confirmation = await exchange.publish(
                message, routing_key, mandatory=self.options.mandatory, timeout=self.options.timeout
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # The broker closes the channel on a message over its max_message_size.
            if "message size" in str(exc):
                raise PermanentDeliveryError(f"rabbitmq: {describe(exc)}") from None
            raise DeliveryError(f"rabbitmq: {describe(exc)}") from None
        except TRANSIENT as exc:
            raise DeliveryError(f"rabbitmq: {describe(exc)}") from None
        if isinstance(confirmation, DeliveredMessage):  # Basic.Return: no queue took it
            raise DeliveryError(
                f"rabbitmq: no queue is bound to exchange {self.options.exchange!r} for routing key "
                f"{routing_key!r} (unroutable; bind one, or set mandatory = false to let it drop)"
            )
        if not isinstance(confirmation, Basic.Ack):
            raise DeliveryError(f"rabbitmq: the broker did not confirm the message ({confirmation!r})")

    async def drop(self) -> None:
        connection, self.connection, self.channel, self.exchange = self.connection, None, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*TRANSIENT):  # it is gone either way
                await connection.close()

    async def close(self) -> None:
        async with self.connecting:
            await self.drop()


def describe(exc: BaseException) -> str:
    """One line; aiormq's errors are tuples (code, text) whose repr is noisy."""
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    return text or type(exc).__name__
