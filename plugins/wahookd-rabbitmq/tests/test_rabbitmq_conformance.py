"""wahookd-rabbitmq against the conformance suite (SPEC §6): the local RabbitMQ on
127.0.0.1:5672 through a `TcpProxy` (so the suite can cut it), an exchange and queue per check.

RabbitMQ keeps no memory of message ids, so a repeat wahookd makes (after a crash, a replay)
is a second message in the queue; the plugin sets ``message_id`` to the event id for the
consumer to drop it. read_back() is that consumer: it keeps one event per message_id and
checks that each message_id is its event's id. So "stored once in effect" here means "once
for a consumer that dedupes by message_id"; the last test shows the queue itself holds the
repeat.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from wahookd.events import load_json
from wahookd.testing import SinkConformance, TcpProxy, make_event, run_sink

AMQP_URL = os.environ.get("WAHOOKD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
AMQP = urlsplit(AMQP_URL)


async def bind(exchange: str, queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await (await channel.declare_queue(queue, durable=True)).bind(declared, "#")


async def drain(queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The messages waiting in `queue`, taken (acknowledged) as a consumer takes them."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True)
        found = []
        while (message := await declared.get(fail=False, timeout=5)) is not None:
            await message.ack()
            found.append(message)
        return found


async def delete(exchange: str, queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(exchange)


class TestRabbitMQConformance(SinkConformance):
    plugin = "rabbitmq"
    concurrency = 16

    @pytest.fixture(autouse=True)
    def _delete_target(self) -> Iterator[None]:
        yield
        if hasattr(self, "queue"):
            asyncio.run(delete(self.exchange, self.queue))
            assert self.mismatched == []  # message_id is always the event id

    def options(self, tmp_path: Path) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:10]
        self.exchange = self.queue = f"wahookd-conformance-{tag}"
        self.consumed: dict[str, dict[str, Any]] = {}  # message_id -> event
        self.mismatched: list[str] = []
        asyncio.run(bind(self.exchange, self.queue))
        self.proxy = TcpProxy(AMQP.hostname or "127.0.0.1", AMQP.port or 5672)
        url = AMQP._replace(netloc=f"{AMQP.username}:{AMQP.password}@127.0.0.1:{self.proxy.port}").geturl()
        return {"url": url, "exchange": self.exchange, "routing_key": "wa.{source}.{kind}"}

    def read_back(self) -> list[dict[str, Any]]:
        for message in asyncio.run(drain(self.queue)):
            event = load_json(message.body)
            if message.message_id != event.get("id"):
                self.mismatched.append(str(message.message_id))
            self.consumed[str(message.message_id)] = event  # a repeat replaces, as consumers do
        return list(self.consumed.values())

    def break_target(self) -> None:
        self.proxy.cut()

    def heal_target(self) -> None:
        self.proxy.restore()


def test_the_queue_itself_holds_a_repeat_under_the_same_message_id(tmp_path: Path) -> None:
    import wahookd_rabbitmq

    [spec] = wahookd_rabbitmq.wahookd_register_sinks()
    tag = uuid.uuid4().hex[:10]
    exchange = queue = f"wahookd-conformance-{tag}"
    asyncio.run(bind(exchange, queue))
    try:
        event = make_event()
        for _ in range(2):  # delivered, then again after a restart
            asyncio.run(run_sink(spec, {"url": AMQP_URL, "exchange": exchange}, [event], state_dir=tmp_path))
        messages = asyncio.run(drain(queue))
        assert [message.message_id for message in messages] == [event["id"], event["id"]]
    finally:
        asyncio.run(delete(exchange, queue))
