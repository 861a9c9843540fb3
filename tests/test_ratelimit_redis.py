"""`ratelimit.backend = "redis"` (SPEC §11): buckets shared by every node, against the real
Redis on 127.0.0.1:6379 and, for outages, a redis-server of the test's own."""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from tests.conftest import FIXTURES, free_port, wasender_headers
from wahookd.errors import ConfigError
from wahookd.metrics import make_metrics
from wahookd.ratelimit import KEY_PREFIX, PROBE_SECONDS, RateLimiter
from wahookd.settings import RateLimitSettings, load_settings

REDIS_URL = os.environ.get("WAHOOKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def address() -> Iterator[str]:
    """A client address of this test's own (TEST-NET-2); its bucket key is deleted after."""
    raw = uuid.uuid4().bytes
    ip = f"198.51.{raw[0]}.{raw[1]}"
    yield ip
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(KEY_PREFIX + ip)
    client.close()


def shared(url: str = REDIS_URL, rate: float = 0.5, burst: int = 20, **kwargs: Any) -> RateLimiter:
    return RateLimiter(rate=rate, burst=burst, max_clients=1000, share_through=url, **kwargs)


async def spread(limiters: list[RateLimiter], address: str, requests: int, gap: float = 0.001) -> int:
    """`requests` requests from one address, turn by turn over the nodes; how many passed."""
    passed = 0
    for number in range(requests):
        if limiters[number % len(limiters)].take(address) == 0.0:
            passed += 1
        await asyncio.sleep(gap)
    return passed


def level(address: str) -> float:
    """The shared bucket's tokens as Redis last settled them."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return float(client.get(KEY_PREFIX + address).split()[0])
    finally:
        client.close()


def test_two_nodes_sharing_one_bucket_let_one_burst_through(address: str) -> None:
    async def scenario() -> tuple[int, int, list[float]]:
        nodes = [shared(), shared()]
        passed = await spread(nodes, address, 200)
        for node in nodes:
            await node.settled()
        waits = [node.take(address) for node in nodes]
        for node in nodes:
            node.close()
        alone = [RateLimiter(rate=0.5, burst=20, max_clients=1000) for _ in range(2)]
        return passed, await spread(alone, f"{address}-memory", 200), waits

    passed, passed_alone, waits = asyncio.run(scenario())
    # One bucket of 20; what the other node lets through within one settlement is the slack.
    assert 20 <= passed <= 27
    assert passed_alone == 40  # the same load on node-local buckets: one burst per node
    assert all(wait > 0 for wait in waits)  # both nodes now refuse the address
    # The slack is a debt the bucket pays back before anything more passes (0.5 a second
    # refilled meanwhile): over time the two nodes let through what one would.
    assert level(address) == pytest.approx(20 - passed, abs=0.5)


def test_a_node_that_never_saw_an_address_learns_its_bucket_from_redis(address: str) -> None:
    async def scenario() -> list[float]:
        first, second = shared(), shared()
        assert await spread([first], address, 20) == 20
        await first.settled()
        waits = [second.take(address)]  # a stale copy: a full bucket, which errs on serving
        await second.settled()
        waits += [second.take(address) for _ in range(5)]
        first.close()
        second.close()
        return waits

    waits = asyncio.run(scenario())
    assert waits[0] == 0.0
    assert all(wait > 0 for wait in waits[1:])


def test_a_bucket_key_expires_once_the_bucket_would_be_full_again(address: str) -> None:
    async def scenario() -> None:
        limiter = shared(rate=10, burst=50)
        await spread([limiter], address, 30, gap=0)
        await limiter.settled()
        limiter.close()

    asyncio.run(scenario())
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    tokens, _stamp = client.get(KEY_PREFIX + address).split()
    ttl_ms = client.pttl(KEY_PREFIX + address)
    client.close()
    assert 19 <= float(tokens) <= 21
    # 30 tokens short of full at 10 per second: 3 s, plus a second of margin.
    assert 3000 < ttl_ms <= 4000


def test_refused_requests_take_nothing_from_the_shared_bucket(address: str) -> None:
    async def scenario() -> None:
        limiter = shared(rate=0.01, burst=3)
        await spread([limiter], address, 50, gap=0)
        await limiter.settled()
        limiter.close()

    asyncio.run(scenario())
    assert level(address) == pytest.approx(0, abs=0.1)  # 3 taken, 47 refused: empty, no debt


class OwnRedis:
    """A redis-server of the test's own on a free port, to stop and start again."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(shutil.which("redis-server") or "redis-server", "--port", str(self.port)),
                *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64)[:1] in (b"+", b"-"):  # PONG, or NOAUTH: up either way
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_down_means_local_buckets_counted_and_logged_once_then_shared_again(
    own_redis: OwnRedis,
) -> None:
    metrics = make_metrics()
    fallback = metrics.ratelimit_fallback

    async def scenario() -> dict[str, Any]:
        first = shared(own_redis.url, rate=0.5, burst=10, fallback=fallback)
        second = shared(own_redis.url, rate=0.5, burst=10)
        found: dict[str, Any] = {}
        await spread([first], "192.0.2.1", 3)
        await first.settled()
        assert first.shared
        own_redis.stop()
        # The first settlement after the stop fails; from then on each node is alone.
        await spread([first], "192.0.2.1", 3)
        await first.settled()
        found["shared_while_down"] = first.shared
        before = fallback._value.get()
        # Alone, a node still limits: 10 - 6 = 4 tokens left for this address, then 429.
        found["passed_alone"] = await spread([first], "192.0.2.1", 10)
        found["counted"] = fallback._value.get() - before
        await asyncio.sleep(PROBE_SECONDS * 2.5)  # probes fail meanwhile: still one log line
        own_redis.start()  # on the same port, empty (it keeps nothing on disk)
        deadline = time.monotonic() + PROBE_SECONDS * 3
        while not first.shared and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        found["shared_again"] = first.shared
        # Shared again: a fresh address is one bucket across both nodes.
        found["passed_shared"] = await spread([first, second], "192.0.2.2", 60)
        first.close()
        second.close()
        return found

    with structlog.testing.capture_logs() as logs:
        found = asyncio.run(scenario())
    assert found["shared_while_down"] is False
    assert found["passed_alone"] == 4
    assert found["counted"] == 10
    assert found["shared_again"] is True
    assert 10 <= found["passed_shared"] <= 16  # one bucket of 10 (two would let 20 through)
    events = [entry["event"] for entry in logs if entry["event"].startswith("ratelimit_")]
    # Two limiters: each says once that it shares; `first` says once that Redis is gone, once
    # that it is back (second never settled during the outage, so it never noticed).
    assert events.count("ratelimit_shared_unreachable") == 1
    assert events.count("ratelimit_shared_again") == 1
    [down] = [entry for entry in logs if entry["event"] == "ratelimit_shared_unreachable"]
    assert down["log_level"] == "warning"
    assert str(own_redis.port) in down["error"] or down["error"]
    # The 10 above, and those of the 3 before them that came after the failed settlement.
    total = fallback._value.get()
    assert 10 <= total <= 13
    assert f"wahookd_ratelimit_fallback_total {total}" in exposition(metrics.registry)


def exposition(registry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_redis_unreachable_at_start_is_logged_once_and_requests_still_served() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> list[float]:
        limiter = shared(closed, rate=1, burst=2)
        await asyncio.sleep(0.1)  # the first check fails at once (connection refused)
        waits = [limiter.take("192.0.2.9") for _ in range(3)]
        assert not limiter.shared
        limiter.close()
        return waits

    with structlog.testing.capture_logs() as logs:
        waits = asyncio.run(scenario())
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 0
    assert [entry["event"] for entry in logs if entry["event"].startswith("ratelimit_")] == [
        "ratelimit_shared_unreachable"
    ]


def test_a_reload_switches_between_node_local_and_shared_buckets(address: str) -> None:
    local = RateLimitSettings(rate=0.5, burst=5)
    remote = RateLimitSettings(rate=0.5, burst=5, backend="redis", url=REDIS_URL)

    async def scenario() -> tuple[bool, bool, bool]:
        limiter = RateLimiter.from_settings(local)
        before = limiter.shared
        limiter.reconfigure(remote)
        await spread([limiter], address, 3)
        await limiter.settled()
        during = limiter.shared
        limiter.reconfigure(local)
        after = limiter.shared
        return before, during, after

    assert asyncio.run(scenario()) == (False, True, False)
    client = redis.Redis.from_url(REDIS_URL)
    assert client.exists(KEY_PREFIX + address)
    client.close()


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server that wants a password, also listening on a Unix socket."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    socket_path = tmp_path / "redis.sock"
    server = OwnRedis(tmp_path, "--requirepass", "pa:ss@w/rd", "--unixsocket", str(socket_path))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("redis://:pa%3Ass%40w%2Frd@127.0.0.1:{port}/2", 2),
        ("redis://default:pa%3Ass%40w%2Frd@127.0.0.1:{port}", 0),
        ("unix://{socket}?db=3&password=pa%3Ass%40w%2Frd", 3),
    ],
)
def test_a_password_a_database_and_a_unix_socket_as_in_the_url(
    locked_redis: OwnRedis, url: str, database: int
) -> None:
    url = url.format(port=locked_redis.port, socket=locked_redis.workdir / "redis.sock")

    async def scenario() -> bool:
        limiter = shared(url, rate=1, burst=5)
        await spread([limiter], "192.0.2.7", 2)
        await limiter.settled()
        sharing = limiter.shared
        limiter.close()
        return sharing

    assert asyncio.run(scenario()) is True
    client = redis.Redis(port=locked_redis.port, password="pa:ss@w/rd", db=database, decode_responses=True)
    assert float(client.get(KEY_PREFIX + "192.0.2.7").split()[0]) == pytest.approx(3, abs=0.1)
    client.close()


def test_a_wrong_password_is_an_outage_logged_without_the_password(locked_redis: OwnRedis) -> None:
    async def scenario() -> bool:
        limiter = shared(f"redis://:not-it-hunter2@127.0.0.1:{locked_redis.port}/0")
        await asyncio.sleep(0.2)
        assert limiter.take("192.0.2.8") == 0.0  # served on the node's own bucket
        sharing = limiter.shared
        limiter.close()
        return sharing

    with structlog.testing.capture_logs() as logs:
        assert asyncio.run(scenario()) is False
    [down] = [entry for entry in logs if entry["event"] == "ratelimit_shared_unreachable"]
    assert "WRONGPASS" in down["error"] or "invalid" in down["error"]
    assert "hunter2" not in repr(logs)


# -- configuration ---------------------------------------------------------------------


def test_backend_redis_needs_a_url(tmp_path: Path) -> None:
    path = tmp_path / "wahookd.toml"
    path.write_text('[ratelimit]\nbackend = "redis"\n')
    with pytest.raises(ConfigError, match=r"ratelimit.*needs url"):
        load_settings(path)


def test_the_url_may_come_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    (tmp_path / "redis-url").write_text("redis://:hunter2@10.0.0.5:6379/0\n")
    path = tmp_path / "wahookd.toml"
    path.write_text('[ratelimit]\nbackend = "redis"\nurl_file = "redis-url"\n')
    settings, _ = load_settings(path)
    assert settings.ratelimit.redis_url == "redis://:hunter2@10.0.0.5:6379/0"
    assert "hunter2" not in repr(settings.ratelimit)
    (tmp_path / "redis-url").write_text("http://:hunter2@10.0.0.5/\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "redis://" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_memory_backend_ignores_a_url() -> None:
    assert RateLimitSettings(url="redis://127.0.0.1/0").redis_url is None


# -- two daemons -----------------------------------------------------------------------


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/webhooks/shop", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status, answer.getheader("Retry-After")
    finally:
        conn.close()


def test_two_daemons_with_redis_buckets_answer_429_after_one_shared_burst(
    daemon_factory: Any, tmp_path: Path, address: str
) -> None:
    config = f"""
        [ratelimit]
        rate = 0.1
        burst = 10
        backend = "redis"
        url = "{REDIS_URL}"

        [sources.shop]
        provider = "wasender"
        secret = "s3cret"
        """
    daemons = []
    for name in ("node1", "node2"):
        (tmp_path / name).mkdir()
        daemons.append(daemon_factory(config, workdir=tmp_path / name).start())
    assert daemons[0].state_dir != daemons[1].state_dir
    body = (FIXTURES / "wasender" / "messages-received-text.json").read_bytes()
    # The daemons see 127.0.0.1, a trusted proxy by default: the client is this address.
    headers = {**wasender_headers("s3cret"), "X-Forwarded-For": address}
    answers = []
    for number in range(40):
        answers.append(post(daemons[number % 2].port, body, headers))
        # Slower than one settlement (10 ms): each node knows what the other let through,
        # but for its very first request, made on a full copy of the bucket.
        time.sleep(0.015)
    codes = [code for code, _ in answers]
    assert set(codes) == {200, 429}
    assert 10 <= codes.count(200) <= 12  # one burst of 10 across both nodes, not 20
    assert codes[-10:] == [429] * 10  # and after it both refuse
    assert all(int(retry) >= 1 for code, retry in answers if code == 429 and retry)
    for daemon in daemons:
        assert daemon.stop() == 0
        assert '"ratelimit_shared"' in daemon.log()
