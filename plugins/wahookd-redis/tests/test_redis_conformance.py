"""wahookd-redis passes the conformance suite (SPEC §6) against the real Redis on
127.0.0.1:6379, reached through a `TcpProxy` so the suite can cut it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from wahookd.events import load_json
from wahookd.testing import SinkConformance, TcpProxy

REDIS_URL = os.environ.get("WAHOOKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS = urlsplit(REDIS_URL)


class TestRedisSinkConformance(SinkConformance):
    plugin = "redis"
    concurrency = 16

    @pytest.fixture(autouse=True)
    def _delete_stream(self) -> Iterator[None]:
        yield
        if hasattr(self, "stream"):
            client = redis.Redis.from_url(REDIS_URL)
            client.delete(self.stream, *client.scan_iter(match=f"{self.stream}:seen:*"))
            client.close()

    def options(self, tmp_path: Path) -> dict[str, Any]:
        self.stream = f"wahookd-conformance:{uuid.uuid4().hex[:12]}"
        self.proxy = TcpProxy(REDIS.hostname or "127.0.0.1", REDIS.port or 6379)
        url = REDIS._replace(netloc=f"127.0.0.1:{self.proxy.port}").geturl()
        return {"url": url, "stream": self.stream, "timeout": 5}

    def read_back(self) -> list[dict[str, Any]]:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return [load_json(fields[b"event"]) for _, fields in client.xrange(self.stream)]
        finally:
            client.close()

    def break_target(self) -> None:
        self.proxy.cut()

    def heal_target(self) -> None:
        self.proxy.restore()
