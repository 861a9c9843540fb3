"""wahookd-redis: a sink that appends each event to a Redis stream, once per event id.

Registered through the ``wahookd`` entry-point group (see pyproject.toml); wahookd calls
`wahookd_register_sinks` and builds `RedisStreamSink` for every ``plugin = "redis"`` table.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, model_validator
from redis.exceptions import RedisError

from wahookd import hookimpl
from wahookd.errors import DeliveryError
from wahookd.events import dump_json
from wahookd.hookspecs import SinkContext, SinkSpec
from wahookd.settings import resolve_secret_files

__version__ = "0.1.0"

# Atomic in Redis (scripts run without interleaving): add the entry only when the event id
# has not been seen, and remember the id with the entry's stream id. wahookd repeats events
# after a crash, so this is what makes the stream hold each event once.
# KEYS: stream, seen-key. ARGV: ttl seconds, maxlen (0 = no trim), then field/value pairs.
ADD_ONCE = """
local known = redis.call('GET', KEYS[2])
if known then
    return {0, known}
end
local entry
if tonumber(ARGV[2]) > 0 then
    entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
else
    entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
end
redis.call('SET', KEYS[2], entry, 'EX', ARGV[1])
return {1, entry}
"""


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


class RedisStreamSink:
    """XADDs each event once; safe for concurrent `deliver` calls (a pooled client)."""

    def __init__(self, options: RedisOptions, context: SinkContext) -> None:
        self.options = options
        self.log = context.log
        self.client = aioredis.from_url(
            options.url.get_secret_value(),
            socket_timeout=options.timeout,
            socket_connect_timeout=options.timeout,
        )
        self.add_once = self.client.register_script(ADD_ONCE)

    def seen_key(self, event_id: str) -> str:
        return f"{self.options.stream}:seen:{event_id}"

    async def deliver(self, event: dict[str, Any]) -> None:
        event_id = str(event["id"])
        fields = {
            "id": event_id,
            "source": event.get("source") or "",
            "kind": event.get("kind") or "",
            "type": event.get("type") or "",
            # dump_json: every number as the provider sent it (1e400, integers past 64 bits)
            "event": dump_json(event).decode(),
        }
        args: list[Any] = [self.options.dedupe_ttl, self.options.maxlen]
        for name, value in fields.items():
            args += [name, value]
        try:
            added, entry = await self.add_once(keys=[self.options.stream, self.seen_key(event_id)], args=args)
        except (RedisError, OSError) as exc:  # down, timed out, OOM: all worth a retry
            raise DeliveryError(f"redis: {exc}") from None
        if not added:
            self.log.debug("redis_event_repeated", event_id=event_id, entry=entry)

    async def close(self) -> None:
        await self.client.aclose()


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(
            "redis",
            RedisOptions,
            RedisStreamSink,
            "append events to a Redis stream (XADD), once per event id",
        )
    ]
