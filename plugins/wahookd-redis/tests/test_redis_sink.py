"""The Redis stream sink against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import redis
import wahookd_redis

from wahookd.errors import DeliveryError
from wahookd.plugins import collect, get_plugin_manager
from wahookd.testing import build_sink, imported_at_start, make_event, run_sink

REDIS_URL = os.environ.get("WAHOOKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
[SPEC] = wahookd_redis.wahookd_register_sinks()


@pytest.fixture
def stream() -> Iterator[str]:
    """A stream name of this test's own; it and its seen-keys are deleted afterwards."""
    name = f"wahookd-test:{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = [name, *client.scan_iter(match=f"{name}:seen:*")]
    client.delete(*keys)
    client.close()


def entries(stream: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [fields for _, fields in client.xrange(stream)]
    finally:
        client.close()


def deliver(tmp_path: Path, events: list[dict[str, Any]], **options: Any) -> None:
    asyncio.run(run_sink(SPEC, {"url": REDIS_URL, **options}, events, state_dir=tmp_path))


def test_each_event_becomes_one_stream_entry_with_the_event_as_json(tmp_path: Path, stream: str) -> None:
    events = [make_event(text="olá"), make_event(kind="status", type=None, status="read")]
    deliver(tmp_path, events, stream=stream)
    got = entries(stream)
    assert [entry["id"] for entry in got] == [event["id"] for event in events]
    assert got[0]["kind"] == "message"
    assert got[0]["type"] == "text"
    assert got[1]["kind"] == "status"
    assert got[1]["type"] == ""
    assert json.loads(got[0]["event"]) == events[0]


def test_a_repeated_event_adds_nothing_also_from_a_new_sink_instance(tmp_path: Path, stream: str) -> None:
    first, second = make_event(), make_event()
    deliver(tmp_path, [first, first], stream=stream)
    deliver(tmp_path, [first, second], stream=stream)  # a restart repeats what came before
    assert [entry["id"] for entry in entries(stream)] == [first["id"], second["id"]]


def test_concurrent_repeats_of_one_event_add_it_once(tmp_path: Path, stream: str) -> None:
    event = make_event()

    async def scenario() -> None:
        sink = build_sink(SPEC, {"url": REDIS_URL, "stream": stream}, state_dir=tmp_path)
        await asyncio.gather(*(sink.deliver(event) for _ in range(20)))
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert len(entries(stream)) == 1


def test_seen_keys_expire_after_dedupe_ttl(tmp_path: Path, stream: str) -> None:
    event = make_event()
    deliver(tmp_path, [event], stream=stream, dedupe_ttl=3600)
    client = redis.Redis.from_url(REDIS_URL)
    ttl = client.ttl(f"{stream}:seen:{event['id']}")
    client.close()
    assert 3500 < ttl <= 3600


def test_maxlen_trims_the_stream(tmp_path: Path, stream: str) -> None:
    deliver(tmp_path, [make_event() for _ in range(300)], stream=stream, maxlen=100)
    # XADD MAXLEN ~ trims whole radix-tree nodes (100 entries by default), so "about" 100.
    assert 100 <= len(entries(stream)) < 300


def test_redis_down_is_a_retryable_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        sink = build_sink(SPEC, {"url": f"redis://127.0.0.1:{port}/0", "timeout": 1}, state_dir=tmp_path)
        with pytest.raises(DeliveryError, match="redis"):
            await sink.deliver(make_event())
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_url_may_come_from_a_file(tmp_path: Path, stream: str) -> None:
    (tmp_path / "redis-url").write_text(REDIS_URL + "\n")
    asyncio.run(
        run_sink(
            SPEC,
            {"url_file": str(tmp_path / "redis-url"), "stream": stream},
            [make_event()],
            state_dir=tmp_path,
        )
    )
    assert len(entries(stream)) == 1


def test_installed_distribution_registers_the_sink_through_its_entry_point() -> None:
    [entry] = [ep for ep in entry_points(group="wahookd") if ep.name == "redis"]
    assert entry.value == "wahookd_redis"
    assert entry.dist is not None
    assert entry.dist.name == "wahookd-redis"
    registry = collect(get_plugin_manager())
    assert registry.sinks["redis"].factory is wahookd_redis.build_sink
    assert registry.sink_owners["redis"] == "redis"
    assert "redis" not in collect(get_plugin_manager(load_entrypoints=False)).sinks


def test_numbers_reach_the_stream_as_the_provider_wrote_them(tmp_path: Path, stream: str) -> None:
    # Issue 10: 1e400 became null (or Infinity, which is not JSON), big integers floats.
    from wahookd.events import load_json

    numbers = '{"big":123456789012345678901234567890,"huge":1e400,"negative":-1e400,'
    numbers += '"precise":0.1000000000000000055511151231257827}'
    event = make_event(raw=load_json(f'{{"amounts":{numbers}}}'))
    deliver(tmp_path, [event], stream=stream)
    [entry] = entries(stream)
    assert f'"raw":{{"amounts":{numbers}}}' in entry["event"]
    json.loads(entry["event"], parse_constant=pytest.fail)  # valid JSON


def test_the_client_library_is_imported_only_for_a_configured_sink() -> None:
    """wahookd imports every installed plugin at start: redis (its memory, its import time)
    must load only when a sink table uses the plugin."""
    assert not imported_at_start("redis")
