"""The JetStream sink against the real NATS server on 127.0.0.1:4222 and, where a test must
stop the server or raise its max_payload, a nats-server of the test's own."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import nats
import pytest
import wahookd_nats
from nats.js.api import StorageType

from wahookd.errors import ConfigError, DeliveryError, PermanentDeliveryError
from wahookd.plugins import collect, get_plugin_manager
from wahookd.testing import build_sink, imported_at_start, make_event, make_status, run_sink

NATS_URL = os.environ.get("WAHOOKD_TEST_NATS_URL", "nats://127.0.0.1:4222")
[SPEC] = wahookd_nats.wahookd_register_sinks()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Target:
    """A stream and subject prefix of this test's own (streams may not share subjects)."""

    url: str
    stream: str
    prefix: str

    def options(self, **more: Any) -> dict[str, Any]:
        return {
            "url": self.url,
            "stream": self.stream,
            "subject": f"{self.prefix}.{{source}}.{{kind}}",
            "create_stream": True,
            **more,
        }

    def read_back(self) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        """(subject, headers, event) of every message in the stream, through a pull consumer."""
        return asyncio.run(self._read())

    async def _read(self) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        client = await nats.connect(self.url)
        try:
            jetstream = client.jetstream()
            info = await jetstream.stream_info(self.stream)
            count = info.state.messages
            if not count:
                return []
            consumer = await jetstream.pull_subscribe(f"{self.prefix}.>", stream=self.stream)
            found: list[Any] = []
            while len(found) < count:
                found.extend(await consumer.fetch(count - len(found), timeout=5))
            for message in found:
                await message.ack()
            await consumer.unsubscribe()
            return [(m.subject, dict(m.headers or {}), json.loads(m.data)) for m in found]
        finally:
            await client.close()

    def stored(self) -> int:
        async def count() -> int:
            client = await nats.connect(self.url)
            try:
                return (await client.jetstream().stream_info(self.stream)).state.messages
            finally:
                await client.close()

        return asyncio.run(count())


def delete_stream(url: str, stream: str) -> None:
    async def delete() -> None:
        client = await nats.connect(url)
        try:
            await client.jetstream().delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await client.close()

    asyncio.run(delete())


def new_target(url: str) -> Target:
    tag = uuid.uuid4().hex[:10]
    return Target(url, f"WAHOOKD_TEST_{tag}", f"t{tag}")


@pytest.fixture
def target() -> Iterator[Target]:
    made = new_target(NATS_URL)
    yield made
    delete_stream(made.url, made.stream)


def deliver(tmp_path: Path, events: list[dict[str, Any]], options: dict[str, Any]) -> None:
    asyncio.run(run_sink(SPEC, options, events, state_dir=tmp_path))


def test_each_event_is_stored_once_as_the_spec_event_with_its_id_as_msg_id(
    tmp_path: Path, target: Target
) -> None:
    events = [
        make_event(text="olá 👋 مرحبا — ünïcödé", sender_name="Zoë 🚀"),
        make_status("3EB0STATUS1", "read"),
        make_event(kind="system", event="session.status", type=None, text=None),
    ]
    deliver(tmp_path, events, target.options())
    got = target.read_back()
    assert [event for _, _, event in got] == events  # field for field, unicode included
    assert [headers["Nats-Msg-Id"] for _, headers, _ in got] == [event["id"] for event in events]
    assert {headers["Content-Type"] for _, headers, _ in got} == {"application/json"}
    assert [subject for subject, _, _ in got] == [
        f"{target.prefix}.test.message",
        f"{target.prefix}.test.status",
        f"{target.prefix}.test.system",
    ]


def test_a_repeated_event_is_stored_once_also_from_a_new_sink_instance(
    tmp_path: Path, target: Target
) -> None:
    first, second = make_event(), make_event()
    deliver(tmp_path, [first, first], target.options())
    deliver(tmp_path, [first, second], target.options())  # a restart repeats what came before
    assert [event["id"] for _, _, event in target.read_back()] == [first["id"], second["id"]]


def test_concurrent_repeats_of_one_event_are_stored_once(tmp_path: Path, target: Target) -> None:
    event = make_event()

    async def scenario() -> None:
        sink = build_sink(SPEC, target.options(), state_dir=tmp_path)
        await sink.start()  # type: ignore[attr-defined]
        await asyncio.gather(*(sink.deliver(event) for _ in range(20)))
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert target.stored() == 1


def test_subject_values_become_single_valid_tokens(tmp_path: Path, target: Target) -> None:
    event = make_event(event="messages.upsert", chat_id="1203630@g.us", type=None)
    subject = f"{target.prefix}.{{event}}.{{chat_id}}.{{type}}.{{from_me}}"
    deliver(tmp_path, [event], target.options(subject=subject))
    [(got, _, _)] = target.read_back()
    assert got == f"{target.prefix}.messages_upsert.1203630_g_us._.false"


def test_create_stream_makes_a_file_stream_for_the_subject_pattern(tmp_path: Path, target: Target) -> None:
    deliver(tmp_path, [make_event()], target.options(duplicate_window=300))

    async def config() -> Any:
        client = await nats.connect(target.url)
        try:
            return (await client.jetstream().stream_info(target.stream)).config
        finally:
            await client.close()

    found = asyncio.run(config())
    assert found.subjects == [f"{target.prefix}.*.*"]
    assert found.storage in ("file", StorageType.FILE)
    assert found.duplicate_window == 300


def test_without_the_stream_delivery_is_retried_and_says_what_to_create(
    tmp_path: Path, target: Target
) -> None:
    async def scenario() -> None:
        sink = build_sink(SPEC, target.options(create_stream=False), state_dir=tmp_path)
        await sink.start()  # type: ignore[attr-defined]
        with pytest.raises(
            DeliveryError, match=rf"create stream {target.stream} with subjects {target.prefix}"
        ):
            await sink.deliver(make_event())
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def big_event(size: int) -> dict[str, Any]:
    text = ("çava 👍 " * (size // 10))[: size // 2]
    return make_event(text=text, raw={"message": {"conversation": text}})


def test_an_event_over_the_servers_max_payload_is_dead_lettered_at_once(
    tmp_path: Path, target: Target
) -> None:
    # The default max_payload is 1 MB; a webhook body may be 3 MiB (server.max_body_bytes).
    event = big_event(3 * 1024 * 1024)

    async def scenario() -> None:
        sink = build_sink(SPEC, target.options(), state_dir=tmp_path)
        await sink.start()  # type: ignore[attr-defined]
        with pytest.raises(PermanentDeliveryError, match="max_payload"):
            await sink.deliver(event)
        await sink.deliver(make_event())  # the connection is still good
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert target.stored() == 1


class OwnNats:
    """A nats-server with JetStream of the test's own: to stop, start again (same store)."""

    def __init__(self, workdir: Path, max_payload: str = "1MB") -> None:
        self.port = free_port()
        self.config = workdir / "nats.conf"
        self.config.write_text(
            textwrap.dedent(
                f"""
                host: 127.0.0.1
                port: {self.port}
                max_payload: {max_payload}
                jetstream {{
                    store_dir: "{workdir / "jetstream"}"
                }}
                """
            )
        )
        self.log = workdir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.proc = subprocess.Popen([binary, "-c", str(self.config), "-l", str(self.log)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if sock.recv(4096).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnNats]:
    if shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists():
        pytest.skip("nats-server is not installed")
    server = OwnNats(tmp_path, max_payload="8MB")
    server.start()
    yield server
    server.stop()


def test_a_3_mb_event_is_delivered_whole_where_max_payload_allows_it(
    tmp_path: Path, own_nats: OwnNats
) -> None:
    target = new_target(own_nats.url)
    event = big_event(3 * 1024 * 1024)
    deliver(tmp_path, [event], target.options())
    [(_, headers, got)] = target.read_back()
    assert got == event
    assert headers["Nats-Msg-Id"] == event["id"]


def test_a_server_that_goes_away_is_a_retryable_error_and_repeats_are_still_dropped(
    tmp_path: Path, own_nats: OwnNats
) -> None:
    target = new_target(own_nats.url)
    first, second = make_event(), make_event()

    async def scenario() -> None:
        sink = build_sink(SPEC, target.options(timeout=1), state_dir=tmp_path)
        await sink.start()  # type: ignore[attr-defined]
        await sink.deliver(first)
        own_nats.stop()
        with pytest.raises(DeliveryError, match="nats"):
            await sink.deliver(second)
        with pytest.raises(DeliveryError, match="cannot connect"):
            await sink.deliver(second)
        own_nats.start()  # its file store kept the stream and the dedupe window
        await sink.deliver(second)  # a retry after the outage
        await sink.deliver(first)  # and a repeat from before it
        await sink.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert [event["id"] for _, _, event in target.read_back()] == [first["id"], second["id"]]


def test_a_server_down_at_start_is_a_retryable_error(tmp_path: Path) -> None:
    target = new_target(f"nats://127.0.0.1:{free_port()}")

    async def scenario() -> float:
        sink = build_sink(SPEC, target.options(timeout=1), state_dir=tmp_path)
        began = time.monotonic()
        with pytest.raises(DeliveryError, match="cannot connect"):
            await sink.start()  # type: ignore[attr-defined]
        with pytest.raises(DeliveryError, match="cannot connect"):
            await sink.deliver(make_event())
        await sink.close()  # type: ignore[attr-defined]
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 3  # refused at once, not retried for minutes


def test_the_url_may_come_from_a_file(tmp_path: Path, target: Target) -> None:
    (tmp_path / "nats-url").write_text(NATS_URL + "\n")
    options = target.options()
    del options["url"]
    deliver(tmp_path, [make_event()], {**options, "url_file": str(tmp_path / "nats-url")})
    assert target.stored() == 1


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"subject": "wa.{text}"}, "sinks.test.subject"),
        ({"subject": "wa.*.{kind}"}, "not a valid subject"),
        ({"subject": "wa.{kind:>10}"}, "no format specs"),
        ({"stream": "has.dots"}, "sinks.test.stream"),
        ({"streams": "typo"}, "sinks.test.streams"),
        ({"url": "  "}, "must not be empty"),
    ],
)
def test_options_are_checked_and_errors_name_the_key(
    tmp_path: Path, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        build_sink(SPEC, options, state_dir=tmp_path)


def test_installed_distribution_registers_the_sink_through_its_entry_point() -> None:
    [entry] = [ep for ep in entry_points(group="wahookd") if ep.name == "nats"]
    assert entry.value == "wahookd_nats"
    assert entry.dist is not None
    assert entry.dist.name == "wahookd-nats"
    registry = collect(get_plugin_manager())
    assert registry.sinks["nats"].factory is wahookd_nats.build_sink


# -- the daemon -----------------------------------------------------------------------


def test_a_daemon_killed_and_restarted_leaves_each_event_in_the_stream_once(
    tmp_path: Path, target: Target
) -> None:
    """SIGKILL right after the events reached the stream: the restarted daemon delivers
    again whatever it had not recorded as delivered, and JetStream drops the repeats."""
    port = free_port()
    options = target.options()
    config = tmp_path / "wahookd.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [server]
            listen = "127.0.0.1:{port}"
            [state]
            dir = "{tmp_path / "state"}"
            [ratelimit]
            rate = 10000
            burst = 10000
            [sources.shop]
            provider = "wasender"
            secret = "s3cret"
            [sinks.bus]
            plugin = "nats"
            url = "{options["url"]}"
            stream = "{options["stream"]}"
            subject = "{options["subject"]}"
            create_stream = true
            """
        )
    )

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / "daemon.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "wahookd.cli", "serve", "--config", str(config)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return proc
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise RuntimeError((tmp_path / "daemon.log").read_text())

    def post(number: int) -> int:
        body = json.dumps(
            {
                "event": "messages.upsert",
                "timestamp": 1700000000,
                "data": {
                    "messages": {
                        "key": {
                            "id": f"3EB0KILL{number}",
                            "fromMe": False,
                            "remoteJid": "15550001@s.whatsapp.net",
                        },
                        "messageTimestamp": 1700000000,
                        "message": {"conversation": f"número {number} ✓"},
                    }
                },
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/shop",
            data=body,
            headers={"Content-Type": "application/json", "X-Webhook-Signature": "s3cret"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - our loopback URL
            return answer.status

    proc = start()
    try:
        assert [post(number) for number in range(20)] == [200] * 20
        deadline = time.monotonic() + 20
        while target.stored() < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = start()
        assert post(20) == 200
        deadline = time.monotonic() + 20
        while target.stored() < 21 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything repeated would be in by now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    got = target.read_back()
    ids = [event["id"] for _, _, event in got]
    assert len(ids) == 21
    assert sorted(ids) == sorted(f"shop:3EB0KILL{number}" for number in range(21))
    assert {event["text"] for _, _, event in got} >= {"número 7 ✓"}


def test_the_client_library_is_imported_only_for_a_configured_sink() -> None:
    """wahookd imports every installed plugin at start: nats (its memory, its import time)
    must load only when a sink table uses the plugin."""
    assert not imported_at_start("nats")
