"""Per-IP token buckets and the client address behind trusted proxies."""

from __future__ import annotations

from ipaddress import ip_network

from wahookd.ratelimit import RateLimiter, client_ip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_beyond_the_bucket_must_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, max_clients=10, clock=clock)
    assert [limiter.take("1.2.3.4") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("1.2.3.4")
    assert 0.4 < wait <= 0.5
    assert limiter.take("5.6.7.8") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.take("1.2.3.4") == 0.0


def test_memory_is_bounded_by_max_clients() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_clients=100, clock=Clock())
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


TRUSTED = [ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8")]


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    assert client_ip("127.0.0.1", "203.0.113.9", TRUSTED) == "203.0.113.9"
    assert client_ip("198.51.100.1", "203.0.113.9", TRUSTED) == "198.51.100.1"


def test_a_spoofed_leftmost_address_is_ignored() -> None:
    # The client wrote "1.1.1.1"; our proxies appended the real client and themselves.
    header = "1.1.1.1, 203.0.113.9, 10.0.0.5"
    assert client_ip("127.0.0.1", header, TRUSTED) == "203.0.113.9"


def test_garbage_in_forwarded_for_falls_back_to_the_peer() -> None:
    assert client_ip("127.0.0.1", "not-an-ip", TRUSTED) == "127.0.0.1"
    assert client_ip("127.0.0.1", "", TRUSTED) == "127.0.0.1"
