"""wahookd-redis: a sink that appends each event to a Redis stream, once per event id.

Registered through the ``wahookd`` entry-point group (see pyproject.toml); wahookd calls
`wahookd_register_sinks` and builds `RedisStreamSink` for every ``plugin = "redis"`` table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, model_validator

from wahookd import hookimpl
from wahookd.hookspecs import SinkContext, SinkSpec
from wahookd.settings import resolve_secret_files

__version__ = "0.1.0"


class RedisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="redis:// or rediss:// URL")
    stream: str = Field("wahookd:events", min_length=1, description="the stream key")
    maxlen: int = Field(0, ge=0, description="trim to about this many entries; 0 keeps all")
    dedupe_ttl: int = Field(7 * 86400, gt=0, description="seconds an event id is remembered against repeats")
    timeout: float = Field(5.0, gt=0, description="seconds for one Redis command")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret_files(data, ("url",), info)


def build_sink(options: RedisOptions, context: SinkContext) -> Any:
    """The sink for one table. Its client library is imported here, not with the plugin:
    wahookd imports every installed plugin at start."""
    from wahookd_redis.sink import RedisStreamSink

    return RedisStreamSink(options, context)


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(
            "redis",
            RedisOptions,
            build_sink,
            "append events to a Redis stream (XADD), once per event id",
        )
    ]
