"""The RabbitMQ sink against the real broker on 127.0.0.1:5672 (guest/guest)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
import wahookd_rabbitmq

from wahookd.errors import ConfigError, DeliveryError
from wahookd.plugins import collect, get_plugin_manager
from wahookd.testing import build_sink, imported_at_start, make_event, make_status, run_sink

AMQP_URL = os.environ.get("WAHOOKD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
[SPEC] = wahookd_rabbitmq.wahookd_register_sinks()


@dataclass
class Target:
    """An exchange and a durable queue bound to it (``#``), both of this test's own."""

    exchange: str
    queue: str

    def options(self, **more: Any) -> dict[str, Any]:
        return {"url": AMQP_URL, "exchange": self.exchange, **more}

    def bind(self) -> None:
        async def bind() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.declare_exchange(
                    self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                queue = await channel.declare_queue(self.queue, durable=True)
                await queue.bind(exchange, "#")

        asyncio.run(bind())

    def read_back(self) -> list[aio_pika.IncomingMessage]:
        """Every message in the queue, as a consumer gets it (acknowledged)."""

        async def read() -> list[aio_pika.IncomingMessage]:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(self.queue, durable=True)
                found = []
                while (message := await queue.get(fail=False, timeout=5)) is not None:
                    await message.ack()
                    found.append(message)
                return found

        return asyncio.run(read())

    def delete(self) -> None:
        async def delete() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.queue)
                await channel.exchange_delete(self.exchange)

        asyncio.run(delete())


@pytest.fixture
def target() -> Iterator[Target]:
    tag = uuid.uuid4().hex[:10]
    made = Target(f"wahookd-test-{tag}", f"wahookd-test-{tag}")
    made.bind()
    yield made
    made.delete()


def deliver(tmp_path: Path, events: list[dict[str, Any]], options: dict[str, Any]) -> None:
    asyncio.run(run_sink(SPEC, options, events, state_dir=tmp_path))


def test_each_event_is_one_persistent_message_with_the_event_id_as_message_id(
    tmp_path: Path, target: Target
) -> None:
    events = [
        make_event(text="olá 👋 مرحبا — ünïcödé", sender_name="Zoë 🚀"),
        make_status("3EB0STATUS1", "read"),
        make_event(event="messages.upsert", kind="system", type=None, text=None),
    ]
    deliver(tmp_path, events, target.options(routing_key="wa.{source}.{kind}.{type}.{event}"))
    got = target.read_back()
    assert [json.loads(message.body) for message in got] == events  # field for field
    assert [message.message_id for message in got] == [event["id"] for event in events]
    assert {message.delivery_mode for message in got} == {aio_pika.DeliveryMode.PERSISTENT}
    assert {message.content_type for message in got} == {"application/json"}
    assert [message.routing_key for message in got] == [
        "wa.test.message.text.messages_upsert",
        "wa.test.status._.messages_update",
        "wa.test.system._.messages_upsert",
    ]
    assert got[1].headers == {
        "source": "test",
        "provider": "wasender",
        "kind": "status",
        "event": "messages.update",
        "status": "read",
    }


def test_a_3_mb_event_arrives_whole(tmp_path: Path, target: Target) -> None:
    text = ("çava 👍 " * 400_000)[: 1536 * 1024]
    event = make_event(text=text, raw={"message": {"conversation": text}})
    deliver(tmp_path, [event], target.options())
    [message] = target.read_back()
    assert len(message.body) > 3 * 1024 * 1024
    assert json.loads(message.body) == event


def test_repeats_carry_the_same_message_id_so_consumers_drop_them(tmp_path: Path, target: Target) -> None:
    # RabbitMQ keeps no memory of ids: a repeat is a second message, and a consumer that
    # dedupes by message_id (as the README says it should) sees each event once.
    first, second = make_event(), make_event()
    deliver(tmp_path, [first, first], target.options())
    deliver(tmp_path, [first, second], target.options())  # a restart repeats what came before
    got = target.read_back()
    assert len(got) == 4
    seen: dict[str, dict[str, Any]] = {}
    for message in got:
        seen.setdefault(str(message.message_id), json.loads(message.body))
    assert list(seen) == [first["id"], second["id"]]
    assert seen[first["id"]] == first


def test_concurrent_deliveries_each_wait_for_their_own_confirm(tmp_path: Path, target: Target) -> None:
    events = [make_event() for _ in range(50)]

    async def scenario() -> None:
        sink = build_sink(SPEC, target.options(), state_dir=tmp_path)
        await sink.start()  # type: ignore[attr-defined]
        await asyncio.gather(*(sink.deliver(event) for event in events))
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert sorted(str(message.message_id) for message in target.read_back()) == sorted(
        e["id"] for e in events
    )


def test_an_event_no_queue_is_bound_for_is_retried_unless_mandatory_is_off(tmp_path: Path) -> None:
    exchange = f"wahookd-test-unbound-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        sink = build_sink(SPEC, {"url": AMQP_URL, "exchange": exchange}, state_dir=tmp_path)
        await sink.start()  # type: ignore[attr-defined]
        for _ in range(2):  # the channel stays usable: the same answer again
            with pytest.raises(DeliveryError, match=r"no queue is bound .* \(unroutable"):
                await sink.deliver(make_event())
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    loose = {"url": AMQP_URL, "exchange": exchange, "mandatory": False}
    deliver(tmp_path, [make_event()], loose)  # the broker drops it, as asked
    Target(exchange, f"{exchange}-none").delete()


def test_declare_makes_a_durable_exchange_of_the_type_asked(tmp_path: Path) -> None:
    name = f"wahookd-test-declared-{uuid.uuid4().hex[:8]}"
    deliver(tmp_path, [], {"url": AMQP_URL, "exchange": name, "exchange_type": "fanout"})

    async def redeclare(durable: bool, kind: aio_pika.ExchangeType) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(name, kind, durable=durable)

    asyncio.run(redeclare(True, aio_pika.ExchangeType.FANOUT))  # equivalent: accepted
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="durable"):
        asyncio.run(redeclare(False, aio_pika.ExchangeType.FANOUT))
    Target(name, f"{name}-none").delete()


def test_without_declare_a_missing_exchange_is_a_retryable_error(tmp_path: Path) -> None:
    options = {"url": AMQP_URL, "exchange": f"wahookd-test-missing-{uuid.uuid4().hex[:8]}", "declare": False}

    async def scenario() -> None:
        sink = build_sink(SPEC, options, state_dir=tmp_path)
        with pytest.raises(DeliveryError, match="NOT_FOUND"):
            await sink.start()  # type: ignore[attr-defined]
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_broker_that_is_unreachable_is_a_retryable_error(tmp_path: Path) -> None:
    options = {"url": f"amqp://guest:guest@127.0.0.1:{free_port()}/", "timeout": 1}

    async def scenario() -> float:
        sink = build_sink(SPEC, options, state_dir=tmp_path)
        began = time.monotonic()
        with pytest.raises(DeliveryError, match="rabbitmq"):
            await sink.start()  # type: ignore[attr-defined]
        with pytest.raises(DeliveryError, match="rabbitmq"):
            await sink.deliver(make_event())
        await sink.close()  # type: ignore[attr-defined]
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 3


def test_wrong_credentials_are_a_retryable_error_that_shows_no_password(tmp_path: Path) -> None:
    options = {"url": "amqp://guest:hunter2-wrong@127.0.0.1:5672/", "timeout": 2}

    async def scenario() -> str:
        sink = build_sink(SPEC, options, state_dir=tmp_path)
        with pytest.raises(DeliveryError) as failed:
            await sink.deliver(make_event())
        await sink.close()  # type: ignore[attr-defined]
        return str(failed.value)

    message = asyncio.run(scenario())
    assert "ACCESS_REFUSED" in message
    assert "hunter2" not in message


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        [shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_a_connection_the_broker_closes_is_made_again_on_the_next_delivery(
    tmp_path: Path, target: Target
) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    name = f"wahookd-test-{uuid.uuid4().hex[:8]}"
    first, second = make_event(), make_event()

    async def scenario() -> list[str]:
        sink = build_sink(SPEC, target.options(), state_dir=tmp_path, name=name)
        await sink.start()  # type: ignore[attr-defined]
        await sink.deliver(first)
        # Only this sink's connection, found by its name: others use this broker too.
        listing = await asyncio.to_thread(rabbitmqctl, "list_connections", "pid", "client_properties")
        [pid] = [line.split()[0] for line in listing.splitlines() if f"wahookd sink {name}" in line]
        await asyncio.to_thread(rabbitmqctl, "close_connection", pid, "test")
        await asyncio.sleep(0.5)
        failures = []
        for _ in range(2):  # at most one failed attempt, then delivered on a new connection
            try:
                await sink.deliver(second)
                break
            except DeliveryError as exc:
                failures.append(str(exc))
        await sink.close()  # type: ignore[attr-defined]
        return failures

    failures = asyncio.run(scenario())
    assert len(failures) <= 1
    assert [message.message_id for message in target.read_back()] == [first["id"], second["id"]]


def test_the_url_may_come_from_a_file(tmp_path: Path, target: Target) -> None:
    (tmp_path / "amqp-url").write_text(AMQP_URL + "\n")
    deliver(tmp_path, [make_event()], {"url_file": str(tmp_path / "amqp-url"), "exchange": target.exchange})
    assert len(target.read_back()) == 1


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"routing_key": "wa.{raw}"}, "sinks.test.routing_key"),
        ({"routing_key": "wa.#.{kind}"}, "wildcards"),
        ({"routing_key": "wa.{kind!s}"}, "no format specs"),
        ({"routing_key": "x" * 254 + ".{id}.{kind}"}, "AMQP allows 255"),
        ({"exchange": "has spaces"}, "sinks.test.exchange"),
        ({"exchange_type": "x-delayed"}, "sinks.test.exchange_type"),
        ({"exchanges": "typo"}, "sinks.test.exchanges"),
    ],
)
def test_options_are_checked_and_errors_name_the_key(
    tmp_path: Path, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        build_sink(SPEC, options, state_dir=tmp_path)


def test_installed_distribution_registers_the_sink_through_its_entry_point() -> None:
    [entry] = [ep for ep in entry_points(group="wahookd") if ep.name == "rabbitmq"]
    assert entry.value == "wahookd_rabbitmq"
    assert entry.dist is not None
    assert entry.dist.name == "wahookd-rabbitmq"
    registry = collect(get_plugin_manager())
    assert registry.sinks["rabbitmq"].factory is wahookd_rabbitmq.build_sink


def test_a_routing_key_always_fits_in_255_bytes() -> None:
    template = wahookd_rabbitmq.RoutingKeyTemplate(
        "w." + ".".join("{" + name + "}" for name in ("id", "chat_id", "from_lid", "event", "message_id"))
    )
    long = "x" * 500
    key = template.render({"id": long, "chat_id": long, "from_lid": long, "event": long, "message_id": long})
    assert len(key.encode()) <= 255
    assert key.count(".") == 5


def test_the_client_library_is_imported_only_for_a_configured_sink() -> None:
    """wahookd imports every installed plugin at start: aio_pika (its memory, its import time)
    must load only when a sink table uses the plugin."""
    assert not imported_at_start("aio_pika")
