"""The forward sink against a real HTTP receiver on a free loopback port."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.web

from wahookd.errors import ConfigError, DeliveryError, PermanentDeliveryError
from wahookd.sinks.forward import ForwardSink, parse_retry_after, signing_key
from wahookd.sinks.forward import wahookd_register_sinks as forward_sinks
from wahookd.testing import build_sink, make_event

[SPEC] = forward_sinks()
SECRET = "whsec_" + base64.b64encode(b"forward-test-key-0123456789").decode()


def verify_standard_webhook(secret: str, headers: Any, body: bytes) -> bool:
    """An independent Standard Webhooks verifier, as a receiver would write it."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part.split(",", 1) == ["v1", expected] for part in headers["webhook-signature"].split())


Respond = Callable[[tornado.web.RequestHandler], Awaitable[None]]


class Receiver:
    """A Tornado server; `respond` decides each answer, `requests` records what came in."""

    def __init__(self, respond: Respond | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.respond = respond
        receiver = self

        class Handler(tornado.web.RequestHandler):
            async def post(self) -> None:
                receiver.requests.append((dict(self.request.headers), self.request.body))
                if receiver.respond is not None:
                    await receiver.respond(self)

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/hook", Handler)]))
        self.server.add_sockets([sock])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        self.server.stop()


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


def status(code: int, headers: dict[str, str] | None = None) -> Respond:
    async def respond(handler: tornado.web.RequestHandler) -> None:
        handler.set_status(code)
        for name, value in (headers or {}).items():
            handler.set_header(name, value)

    return respond


async def deliver_to(receiver: Receiver, tmp_path: Path, event: dict[str, Any], **options: Any) -> None:
    if "secret_file" not in options:
        options.setdefault("secret", SECRET)
    sink = build_sink(SPEC, {"url": receiver.url, **options}, state_dir=tmp_path)
    assert isinstance(sink, ForwardSink)
    await sink.start()
    try:
        await sink.deliver(event)
    finally:
        await sink.close()


def test_delivery_posts_json_with_a_valid_standard_webhooks_signature(tmp_path: Path) -> None:
    event = make_event(text="héllo ✓")

    async def scenario() -> None:
        receiver = Receiver()
        await deliver_to(receiver, tmp_path, event, secret=SECRET, headers={"X-Team": "ops"})
        receiver.stop()
        [(headers, body)] = receiver.requests
        assert json.loads(body) == event
        assert headers["Content-Type"] == "application/json"
        assert headers["Webhook-Id"] == event["id"]
        assert abs(int(headers["Webhook-Timestamp"]) - time.time()) < 5
        assert headers["X-Team"] == "ops"
        assert verify_standard_webhook(SECRET, {k.lower(): v for k, v in headers.items()}, body)
        assert not verify_standard_webhook(
            "whsec_" + base64.b64encode(b"other").decode(), {k.lower(): v for k, v in headers.items()}, body
        )

    run(scenario)


def test_raw_secret_signs_with_its_utf8_bytes(tmp_path: Path) -> None:
    async def scenario() -> None:
        receiver = Receiver()
        await deliver_to(receiver, tmp_path, make_event(), secret="plain-shared-secret")
        receiver.stop()
        [(headers, body)] = receiver.requests
        lowered = {k.lower(): v for k, v in headers.items()}
        assert verify_standard_webhook("plain-shared-secret", lowered, body)

    run(scenario)


def test_a_forward_sink_without_a_secret_is_a_config_error(tmp_path: Path) -> None:
    # SPEC §6: forward signs what it sends, so a receiver can always verify.
    with pytest.raises(ConfigError, match=r"sinks\.test\.secret: field required"):
        build_sink(SPEC, {"url": "http://127.0.0.1:9/"}, state_dir=tmp_path)


def test_secret_file_is_read_and_used(tmp_path: Path) -> None:
    secret_path = tmp_path / "forward-secret"
    secret_path.write_text(SECRET + "\n")

    async def scenario() -> None:
        receiver = Receiver()
        await deliver_to(receiver, tmp_path, make_event(), secret_file=str(secret_path))
        receiver.stop()
        [(headers, body)] = receiver.requests
        assert verify_standard_webhook(SECRET, {k.lower(): v for k, v in headers.items()}, body)

    run(scenario)


@pytest.mark.parametrize("code", [500, 502, 503, 408, 429])
def test_server_errors_408_and_429_raise_a_retryable_error(tmp_path: Path, code: int) -> None:
    async def scenario() -> None:
        receiver = Receiver(status(code))
        with pytest.raises(DeliveryError) as caught:
            await deliver_to(receiver, tmp_path, make_event())
        receiver.stop()
        assert str(code) in str(caught.value)
        assert not isinstance(caught.value, PermanentDeliveryError)

    run(scenario)


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422, 301])
def test_other_4xx_and_redirects_raise_a_permanent_error(tmp_path: Path, code: int) -> None:
    headers = {"Location": "http://127.0.0.1:1/elsewhere"} if code == 301 else None

    async def scenario() -> None:
        receiver = Receiver(status(code, headers))
        with pytest.raises(PermanentDeliveryError, match=str(code)):
            await deliver_to(receiver, tmp_path, make_event())
        receiver.stop()
        assert len(receiver.requests) == 1  # the redirect was not followed

    run(scenario)


def test_retry_after_seconds_is_passed_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        receiver = Receiver(status(429, {"Retry-After": "7"}))
        with pytest.raises(DeliveryError) as caught:
            await deliver_to(receiver, tmp_path, make_event())
        receiver.stop()
        assert caught.value.retry_after == 7.0

    run(scenario)


def test_retry_after_http_date_becomes_seconds_from_now(tmp_path: Path) -> None:
    async def scenario() -> None:
        when = formatdate(time.time() + 120, usegmt=True)
        receiver = Receiver(status(503, {"Retry-After": when}))
        with pytest.raises(DeliveryError) as caught:
            await deliver_to(receiver, tmp_path, make_event())
        receiver.stop()
        assert caught.value.retry_after is not None
        assert 110 <= caught.value.retry_after <= 121

    run(scenario)


def test_parse_retry_after_handles_past_dates_and_garbage() -> None:
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after(" 30 ") == 30.0


def test_a_slow_receiver_times_out_as_a_retryable_error(tmp_path: Path) -> None:
    async def slow(handler: tornado.web.RequestHandler) -> None:
        await asyncio.sleep(2)

    async def scenario() -> None:
        receiver = Receiver(slow)
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            await deliver_to(receiver, tmp_path, make_event(), timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert not isinstance(caught.value, PermanentDeliveryError)
        receiver.stop()

    run(scenario)


def test_a_refused_connection_is_a_retryable_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        options = {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}
        sink = build_sink(SPEC, options, state_dir=tmp_path)
        with pytest.raises(DeliveryError):
            await sink.deliver(make_event())
        await sink.close()  # type: ignore[attr-defined]

    run(scenario)


def test_concurrent_deliveries_are_all_sent_and_signed(tmp_path: Path) -> None:
    in_flight = 0
    peak = 0

    async def hold(handler: tornado.web.RequestHandler) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1

    events = [make_event() for _ in range(20)]

    async def scenario() -> None:
        receiver = Receiver(hold)
        sink = build_sink(SPEC, {"url": receiver.url, "secret": SECRET}, state_dir=tmp_path)
        await sink.start()  # type: ignore[attr-defined]
        started = time.monotonic()
        await asyncio.gather(*(sink.deliver(event) for event in events))
        elapsed = time.monotonic() - started
        await sink.close()  # type: ignore[attr-defined]
        receiver.stop()
        assert elapsed < 1.0  # 20 x 0.1 s one after another would take 2 s
        assert peak > 1
        received = [json.loads(body)["id"] for _, body in receiver.requests]
        assert sorted(received) == sorted(event["id"] for event in events)
        for headers, body in receiver.requests:
            assert verify_standard_webhook(SECRET, {k.lower(): v for k, v in headers.items()}, body)

    run(scenario)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "sinks.test.url: field required"),
        ({"url": "ftp://x"}, "sinks.test.url: must start with http:// or https://"),
        ({"url": "http://x", "secret": "whsec_!!!"}, "sinks.test.secret: a whsec_ secret"),
        ({"url": "http://x", "colour": "red"}, "sinks.test.colour: unknown key"),
    ],
)
def test_invalid_options_name_the_key(tmp_path: Path, options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_sink(SPEC, options, state_dir=tmp_path)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


def test_whsec_key_is_base64_decoded() -> None:
    assert signing_key("whsec_" + base64.b64encode(b"\x00\x01key").decode()) == b"\x00\x01key"
    assert signing_key("raw") == b"raw"
