"""wahookd-rabbitmq: a sink that publishes each event to a RabbitMQ exchange.

Registered through the ``wahookd`` entry-point group (see pyproject.toml); wahookd calls
`wahookd_register_sinks` and builds `RabbitMQSink` for every ``plugin = "rabbitmq"`` table.

Messages are persistent and published with publisher confirms: an event is delivered when
the broker has confirmed it (routed to every bound queue and, for durable queues, written
to disk). ``message_id`` is the event id, by which consumers drop the repeats that
wahookd's at-least-once delivery makes after a crash: RabbitMQ itself keeps no memory of
ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, Literal

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from wahookd import hookimpl
from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.events import dump_json, parse_event_template, template_word
from wahookd.hookspecs import SinkContext, SinkSpec
from wahookd.settings import Secret, resolve_secret_files

__version__ = "0.1.0"

# -- routing key templates ------------------------------------------------------------

WORD_CHARS = 64  # a field's value is cut to this many characters (fewer if 255 needs it)
MAX_KEY_BYTES = 255  # AMQP 0-9-1: a routing key is a short string


class RoutingKeyTemplate:
    """``wa.{source}.{kind}``: literal text and event fields. Each field's value becomes one
    topic word: characters other than ``A-Z a-z 0-9 _ -`` become ``_`` (so
    ``messages.upsert`` is one word, ``messages_upsert``), an empty or missing value ``_``."""

    def __init__(self, text: str) -> None:
        parts = parse_event_template(text, "a routing key")
        for literal, _ in parts:
            if re.search(r"[\s*#]", literal) or not literal.isascii():
                raise ValueError("a routing key template is ASCII with no spaces and no * or # wildcards")
        self.parts = parts
        fields = sum(1 for _, field in parts if field)
        room = MAX_KEY_BYTES - sum(len(literal) for literal, _ in parts)
        if room < fields:
            raise ValueError(
                f"the routing key's literal text leaves no room: AMQP allows {MAX_KEY_BYTES} bytes"
            )
        # Each value is cut so that the whole key always fits.
        self.word_chars = min(WORD_CHARS, room // fields) if fields else 0

    def render(self, event: dict[str, Any]) -> str:
        cut = self.word_chars
        return "".join(
            literal + (word(event.get(field), cut) if field else "") for literal, field in self.parts
        )


def word(value: Any, cut: int = WORD_CHARS) -> str:
    return template_word(value, cut)


# -- options -------------------------------------------------------------------------

EXCHANGE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{0,255}$")


class RabbitMQOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Secret = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="amqp:// or amqps:// URL with user, password and vhost (%2F is /)",
    )
    exchange: str = Field("wahookd", description='the exchange; "" is the default exchange')
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = Field(
        "topic", description="the exchange's type, when the sink declares it"
    )
    routing_key: str = Field(
        "wa.{source}.{kind}", description="routing key template over event fields, e.g. wa.{source}.{kind}"
    )
    declare: bool = Field(True, description="declare the exchange (durable) if it does not exist")
    mandatory: bool = Field(
        True, description="an event no queue is bound for is retried, not dropped by the broker"
    )
    timeout: float = Field(5.0, gt=0, description="seconds for connecting and for the broker's confirm")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret_files(data, ("url",), info)

    @field_validator("exchange")
    @classmethod
    def _exchange_name(cls, value: str) -> str:
        if not EXCHANGE_NAME.match(value):
            raise ValueError("an exchange name is letters, digits, - _ . and :")
        return value

    @field_validator("routing_key")
    @classmethod
    def _routing_key(cls, value: str) -> str:
        RoutingKeyTemplate(value)
        return value


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


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(
            "rabbitmq",
            RabbitMQOptions,
            RabbitMQSink,
            "publish events to a RabbitMQ exchange: persistent, publisher confirms, message_id = event id",
        )
    ]
