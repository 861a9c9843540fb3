"""Per-client-IP token buckets with bounded memory, optionally shared by every node.

With ``ratelimit.backend = "redis"`` (SPEC §11) the buckets live in Redis, so N nodes enforce
about one limit, but a request never waits for Redis: `RateLimiter.take` is called on the
event loop for every request before anything else (intake.py), and a round trip there would
cost more than the whole intake. So each node decides on its own copy of the bucket, exactly
as with ``backend = "memory"``, and a background task settles the copies against Redis in
batches: every few milliseconds it sends what each address consumed here since the last
settlement, one atomic script applies it to the shared bucket (refilled by Redis's clock, so
the nodes' clocks do not matter) and answers each bucket's level, which becomes this node's
copy again. A limit can be exceeded by what the other nodes let through in one settlement
interval plus a round trip, and that excess is a debt: the shared bucket goes below zero and
refills from there, so over any longer window N nodes together let `burst + rate * t` through,
as one node does. An address costs one small key in Redis, which expires once its bucket
would be full again.

When Redis cannot be reached the node goes on with its own buckets alone: logged once per
outage (and once when Redis answers again), and every request decided that way is counted in
``wahookd_ratelimit_fallback_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from wahookd.settings import RateLimitSettings

log = structlog.get_logger("wahookd.ratelimit")

# One settlement at most this often: another node's request can pass on a stale copy for that
# long plus a round trip, and what it lets through too many is a debt the shared bucket pays
# back. Its cost is per second, not per request (bench/ratelimit.py, a loaded 2-core machine):
# one settlement cycle is ~300 us of the loop's CPU, so at most ~3% of a core whatever the
# load. 5 ms doubled that for an excess of 3-5 instead of 4-5 requests on a burst of 20 over
# two nodes. A RESP client of our own was tried: 13 instead of 80-110 us per call in a tight
# loop, but 200 instead of 300 us per cycle on the loop, where the wakeups dominate; so the
# standard client stays.
SETTLE_SECONDS = 0.01
SETTLE_TIMEOUT = 0.5  # Redis slower than this counts as unreachable
PROBE_SECONDS = 1.0  # while unreachable, how often Redis is asked whether it is back
KEYS_PER_CALL = 500  # addresses settled by one script call (a script blocks Redis meanwhile)
KEY_PREFIX = "wahookd:ratelimit:"

# KEYS: one bucket per address. ARGV: rate per second, burst, then what each address consumed
# on the calling node since its last settlement. A bucket is "tokens stamp_ms"; a missing
# one is full. Consumption may take a bucket below zero (several nodes let requests through
# at once), down to -burst: the debt is paid back by refilling, so the long-run rate stays
# the limit. Each key expires when its bucket would be full again, which is the same as
# gone: the keys are bounded by the addresses seen in the last burst/rate seconds or so.
SETTLE_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local levels = {}
for i, key in ipairs(KEYS) do
    local tokens = burst
    local stored = redis.call('GET', key)
    if stored then
        local level, stamp = string.match(stored, '^(%S+) (%S+)$')
        level, stamp = tonumber(level), tonumber(stamp)
        if level and stamp then
            tokens = math.min(burst, level + math.max(0, now - stamp) * rate / 1000)
        end
    end
    tokens = math.max(-burst, tokens - tonumber(ARGV[i + 2]))
    local ttl = math.ceil((burst - tokens) / rate * 1000) + 1000
    redis.call('SET', key, string.format('%.3f %d', tokens, now), 'PX', ttl)
    levels[i] = string.format('%.3f', tokens)
end
-- One string, not an array: one reply element to parse (redis-py: 274 instead of 435 us
-- of CPU for 100 addresses).
return table.concat(levels, ' ')
"""


class RateLimiter:
    """`rate` tokens per second, `burst` at most, for up to `max_clients` addresses.

    The least recently seen address is forgotten first; a forgotten address starts again
    with a full bucket, which errs on the side of serving. With `share_through` (a Redis
    URL) the buckets are settled against Redis in the background (see the module doc).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        share_through: str | None = None,
        fallback: Any = None,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._fallback = fallback  # a Counter: requests decided alone while Redis was away
        self._shared: SharedBuckets | None = None
        self._share(share_through)

    @classmethod
    def from_settings(cls, limits: RateLimitSettings, fallback: Any = None) -> RateLimiter:
        """The daemon's limiter; `fallback` counts `wahookd_ratelimit_fallback_total`."""
        return cls(
            limits.rate,
            limits.burst,
            limits.max_clients,
            share_through=limits.redis_url,
            fallback=fallback,
        )

    def reconfigure(self, limits: RateLimitSettings) -> None:
        """New limits (a reload); each client's bucket keeps its tokens, capped at `burst`.

        A new backend or Redis URL applies at once: the old connection is closed."""
        self.rate, self.burst, self.max_clients = limits.rate, float(limits.burst), limits.max_clients
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if limits.redis_url != (self._shared.url if self._shared else None):
            self._share(limits.redis_url)

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead, else the seconds until a token is free."""
        now = self.clock()
        tokens, stamp = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if self._shared is not None:
            self._shared.note(client, not wait)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def shared(self) -> bool:
        """True while the buckets are settled against Redis (not in a fallback)."""
        return self._shared is not None and self._shared.reachable

    def close(self) -> None:
        """Stop settling against Redis (the connection closes in the background)."""
        self._share(None)

    async def settled(self) -> None:
        """Wait until what was consumed so far has been settled (for tests and benchmarks)."""
        if self._shared is not None:
            await self._shared.settled()

    def _share(self, url: str | None) -> None:
        if self._shared is not None:
            self._shared.stop()
            self._shared = None
        if url is not None:
            self._shared = SharedBuckets(self, url, self._fallback)

    def settle(self, consumed: dict[str, int], levels: Sequence[float], since: dict[str, int]) -> None:
        """Redis's answer: each bucket's shared level, less what was let through here since
        the settlement was sent, is this node's copy again."""
        now = self.clock()
        buckets = self._buckets
        for client, level in zip(consumed, levels, strict=True):
            if client in buckets:  # not forgotten meanwhile (max_clients)
                buckets[client] = (min(self.burst, level - since.get(client, 0)), now)


class SharedBuckets:
    """One limiter's settlement with Redis: what was consumed here, sent in batches by one
    background task, and whether Redis answers."""

    def __init__(self, limiter: RateLimiter, url: str, fallback: Any = None) -> None:
        import redis.asyncio as aioredis  # the optional dependency: pip install 'wahookd[redis]'
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.limiter = limiter
        self.url = url
        self.fallback = fallback
        # One retry at once, on a new connection: after Redis restarts, the pooled one is
        # dead and the first command on it fails. More retries are the settlement loop's
        # (a request never waits for any of them).
        self.client = aioredis.from_url(
            url,
            socket_timeout=SETTLE_TIMEOUT,
            socket_connect_timeout=SETTLE_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
            # One settlement is in flight at a time: no pool to take a connection from and
            # give it back to for every call (measured: 71 instead of 101 us CPU per call).
            single_connection_client=True,
        )
        self.script = self.client.register_script(SETTLE_SCRIPT)
        self.consumed: dict[str, int] = {}  # since the settlement in flight was sent
        self.reachable = True
        self.announced = False  # "ratelimit_shared" is logged once, at the first answer
        self.decided_alone = 0  # requests in the current outage
        self.down_since = 0.0
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        self.start()

    def start(self) -> None:
        """The settlement task, on the running loop; without one (a limiter built outside
        the daemon), the first request on a loop starts it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # Referenced here until `stop`, and named, as TaskSet does for the daemon's tasks.
        self.task = loop.create_task(self.run(), name="ratelimit-settle")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()  # its `finally` closes the connection
        # else nothing ever connected: the client holds no socket

    def note(self, client: str, allowed: bool) -> None:
        """One request's decision; on the request path, so only dict work."""
        if self.task is None:
            self.start()
        if not self.reachable:
            self.decided_alone += 1
            if self.fallback is not None:
                self.fallback.inc()
            return
        if not allowed:  # a refused request takes no token anywhere
            return
        consumed = self.consumed
        count = consumed.get(client)
        if count is not None:
            consumed[client] = count + 1
        elif len(consumed) < self.limiter.max_clients:
            consumed[client] = 1
            if not self.wake.is_set():
                self.wake.set()
                self.idle.clear()

    async def settled(self) -> None:
        await self.idle.wait()

    async def run(self) -> None:
        try:
            await self.check()
            while True:
                if not self.reachable:
                    await asyncio.sleep(PROBE_SECONDS)
                    await self.check()
                    continue
                if not self.consumed:
                    self.idle.set()
                    await self.wake.wait()
                self.wake.clear()
                consumed, self.consumed = self.consumed, {}
                try:
                    levels = await self.send(consumed)
                    self.limiter.settle(consumed, levels, self.consumed)
                except Exception as exc:  # Redis down, timed out, refusing: all mean "alone"
                    self.lost(exc)
                    continue
                await asyncio.sleep(SETTLE_SECONDS)  # what comes meanwhile is the next batch
        finally:
            self.idle.set()
            await self.client.aclose()

    async def send(self, consumed: dict[str, int]) -> list[float]:
        limiter = self.limiter
        clients = list(consumed)
        levels: list[float] = []
        async with asyncio.timeout(SETTLE_TIMEOUT):
            for start in range(0, len(clients), KEYS_PER_CALL):
                part = clients[start : start + KEYS_PER_CALL]
                keys = [KEY_PREFIX + client for client in part]
                args = [repr(limiter.rate), repr(limiter.burst), *(consumed[client] for client in part)]
                answer = await self.script(keys=keys, args=args)
                levels.extend(map(float, answer.split()))
        return levels

    async def check(self) -> None:
        """Ask Redis whether it answers; say so when that changes."""
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await self.client.ping()
        except Exception as exc:  # the same "unreachable" as in run()
            if self.reachable:
                self.lost(exc)
            return
        if not self.reachable:
            log.info(
                "ratelimit_shared_again",
                backend="redis",
                outage_seconds=round(time.monotonic() - self.down_since, 1),
                decided_alone=self.decided_alone,
            )
        elif not self.announced:
            log.info("ratelimit_shared", backend="redis")
        self.reachable = self.announced = True

    def lost(self, exc: BaseException) -> None:
        self.reachable = False
        self.consumed.clear()
        self.decided_alone = 0
        self.down_since = time.monotonic()
        self.idle.set()
        log.warning(
            "ratelimit_shared_unreachable",
            backend="redis",
            error=str(exc) or type(exc).__name__,
            hint="each node limits with its own buckets until Redis answers again",
        )


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[IPv4Network | IPv6Network]) -> str:
    """The client's address: `X-Forwarded-For` is believed only from trusted proxies.

    Walk the chain from the right and stop at the first address that is not a trusted
    proxy: everything left of it could have been written by the client itself.
    """
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        if not is_trusted(hop, trusted):
            return hop if _valid(hop) else peer
    return peer


def is_trusted(address: str, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in trusted)


class TrustCache:
    """`is_trusted` for peer addresses, remembered: parsing an address on every request
    costs more than the rest of the rate limit. Bounded like the limiter itself."""

    def __init__(self, trusted: Sequence[IPv4Network | IPv6Network], size: int = 10_000) -> None:
        self.trusted = trusted
        self.size = size
        self._known: dict[str, bool] = {}

    def __call__(self, address: str) -> bool:
        known = self._known.get(address)
        if known is None:
            if len(self._known) >= self.size:
                self._known.clear()
            known = self._known[address] = is_trusted(address, self.trusted)
        return known


def _valid(address: str) -> bool:
    try:
        ip_address(address)
    except ValueError:
        return False
    return True
