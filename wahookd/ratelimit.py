"""Per-client-IP token buckets with bounded memory."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address


class RateLimiter:
    """`rate` tokens per second, `burst` at most, for up to `max_clients` addresses.

    The least recently seen address is forgotten first; a forgotten address starts again
    with a full bucket, which errs on the side of serving.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def reconfigure(self, rate: float, burst: int, max_clients: int) -> None:
        """New limits (a reload); each client's bucket keeps its tokens, capped at `burst`."""
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        while len(self._buckets) > max_clients:
            self._buckets.popitem(last=False)

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead, else the seconds until a token is free."""
        now = self.clock()
        tokens, stamp = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


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
