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

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from wahookd import hookimpl
from wahookd.events import parse_event_template, template_word
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


def build_sink(options: RabbitMQOptions, context: SinkContext) -> Any:
    """The sink for one table. Its client library is imported here, not with the plugin:
    wahookd imports every installed plugin at start."""
    from wahookd_rabbitmq.sink import RabbitMQSink

    return RabbitMQSink(options, context)


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(
            "rabbitmq",
            RabbitMQOptions,
            build_sink,
            "publish events to a RabbitMQ exchange: persistent, publisher confirms, message_id = event id",
        )
    ]
