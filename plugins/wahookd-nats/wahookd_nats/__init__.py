"""wahookd-nats: a sink that publishes each event to NATS JetStream, once per event id.

Registered through the ``wahookd`` entry-point group (see pyproject.toml); wahookd calls
`wahookd_register_sinks` and builds `JetStreamSink` for every ``plugin = "nats"`` table.

An event is delivered when JetStream has stored it and acknowledged the publish. Each
publish carries ``Nats-Msg-Id: <event id>``, so the repeats that wahookd's at-least-once
delivery makes after a crash are dropped by the stream itself (within its duplicate window).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from wahookd import hookimpl
from wahookd.events import parse_event_template, template_word
from wahookd.hookspecs import SinkContext, SinkSpec
from wahookd.settings import Secret, resolve_secret_files

__version__ = "0.1.0"

# -- subject templates ----------------------------------------------------------------

TOKEN_CHARS = 64  # a field's value is cut to this many characters in a subject
FIELD_MARK = "\x00"


class SubjectTemplate:
    """``wa.{source}.{kind}``: literal text and event fields. Each field's value becomes one
    valid subject token: characters other than ``A-Z a-z 0-9 _ -`` become ``_`` (so
    ``messages.upsert`` is one token, ``messages_upsert``), an empty or missing value ``_``."""

    def __init__(self, text: str) -> None:
        parts = parse_event_template(text, "a subject")
        self.parts = parts
        marked = self.render_with(lambda _field: FIELD_MARK)
        for token in marked.split("."):
            literal = token.replace(FIELD_MARK, "")
            if not token or re.search(r"[\s*>]", literal) or not literal.isascii():
                raise ValueError(
                    f"{text!r} is not a valid subject: tokens are separated by single dots, "
                    "with no spaces, no * or > wildcards, ASCII only"
                )
        # What a stream created for these subjects captures: a token with a field is `*`.
        self.pattern = ".".join("*" if FIELD_MARK in token else token for token in marked.split("."))

    def render_with(self, value: Any) -> str:
        return "".join(literal + (value(field) if field is not None else "") for literal, field in self.parts)

    def render(self, event: dict[str, Any]) -> str:
        return self.render_with(lambda field: token(event.get(field)))


def token(value: Any) -> str:
    return template_word(value, TOKEN_CHARS)


# -- options -------------------------------------------------------------------------

STREAM_NAME = re.compile(r"^[^\s.*>/\\]{1,255}$")


class NatsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Secret = Field(
        SecretStr("nats://127.0.0.1:4222"),
        description="nats:// or tls:// URL (user:password@ or token@ if needed); several comma-separated",
    )
    stream: str = Field("WAHOOKD", description="the JetStream stream the subjects belong to")
    subject: str = Field(
        "wa.{source}.{kind}", description="subject template over event fields, e.g. wa.{source}.{kind}"
    )
    create_stream: bool = Field(False, description="create the stream (file storage) if it does not exist")
    duplicate_window: float = Field(
        120.0,
        gt=0,
        description="seconds a created stream remembers Nats-Msg-Id for dedupe (JetStream: 2 min)",
    )
    timeout: float = Field(5.0, gt=0, description="seconds for connecting and for the server's ack")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret_files(data, ("url",), info)

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        if not STREAM_NAME.match(value):
            raise ValueError("a stream name has no spaces, dots, *, >, / or \\")
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        SubjectTemplate(value)
        return value

    @property
    def servers(self) -> list[str]:
        return [part.strip() for part in self.url.get_secret_value().split(",") if part.strip()]


def build_sink(options: NatsOptions, context: SinkContext) -> Any:
    """The sink for one table. Its client library is imported here, not with the plugin:
    wahookd imports every installed plugin at start."""
    from wahookd_nats.sink import JetStreamSink

    return JetStreamSink(options, context)


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(
            "nats",
            NatsOptions,
            build_sink,
            "publish events to NATS JetStream (Nats-Msg-Id = event id), delivered on the server's ack",
        )
    ]
