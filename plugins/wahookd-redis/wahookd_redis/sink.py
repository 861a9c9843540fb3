"""The redis sink itself: imported only when a sink table names `plugin = "redis"`, so
that the Redis client is not loaded into every wahookd that merely has this plugin installed."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wahookd.errors import DeliveryError
from wahookd.events import dump_json
from wahookd.hookspecs import SinkContext
from wahookd_redis import RedisOptions

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
