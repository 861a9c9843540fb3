"""The HTTP contract (SPEC §2) against a real server on a free port."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from tests.conftest import FIXTURES, meta_headers, wasender_body, wasender_headers
from wahookd.app import make_app
from wahookd.handlers import AppState
from wahookd.journal import Journal
from wahookd.metrics import make_metrics
from wahookd.plugins import collect, get_plugin_manager
from wahookd.ratelimit import RateLimiter
from wahookd.rejected import RejectedStore
from wahookd.settings import Settings

SECRET = "wasender-secret"
META_SECRET = "meta-app-secret"


def make_settings(state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state": {"dir": str(state_dir)},
        "server": {"max_body_bytes": 64 * 1024},
        "ratelimit": {"rate": 1000, "burst": 1000},
        "sources": {
            "shop": {"provider": "wasender", "secret": SECRET, "secrets": ["old-secret"]},
            "fb": {"provider": "meta", "secret": META_SECRET, "verify_token": "hello-token"},
            "open": {"provider": "wasender", "verify": "none"},
            "office": {"provider": "wasender", "secret": SECRET, "allow_ips": ["10.0.0.0/8"]},
        },
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def state(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AppState]:
    overrides = getattr(request, "param", {})
    settings = make_settings(tmp_path, **overrides)
    journal = Journal(tmp_path)
    journal.open()
    app_state = AppState(
        settings=settings,
        providers=collect(get_plugin_manager(load_entrypoints=False)).providers,
        journal=journal,
        metrics=make_metrics(),
        limiter=RateLimiter(settings.ratelimit.rate, settings.ratelimit.burst, 1000),
        rejected=RejectedStore(tmp_path / "rejected"),
    )
    yield app_state
    journal.close_blocking()


@pytest.fixture
def app(state: AppState) -> Any:
    return make_app(state)


async def post(client: Any, path: str, body: bytes, headers: dict[str, str]) -> HTTPResponse:
    return await client.fetch(path, method="POST", body=body, headers=headers, raise_error=False)


async def journaled(state: AppState) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in await state.journal.read_ready(0, 1000)]


@pytest.mark.parametrize(
    "name", ["messages-received-text", "messages-upsert-array", "messages-update-read", "session-status"]
)
async def test_signed_wasender_fixtures_are_accepted(
    http_server_client: Any, state: AppState, name: str
) -> None:
    body = (FIXTURES / "wasender" / f"{name}.json").read_bytes()
    answer = await post(http_server_client, "/webhooks/shop", body, wasender_headers(SECRET))
    assert answer.code == 200
    assert json.loads(answer.body) == {"accepted": 1, "duplicates": 0}
    [event] = await journaled(state)
    assert event["source"] == "shop"
    assert event["provider"] == "wasender"
    assert event["received_at"].endswith("Z")


async def test_a_rotated_secret_is_still_accepted(http_server_client: Any) -> None:
    answer = await post(
        http_server_client, "/webhooks/shop", wasender_body("R1"), wasender_headers("old-secret")
    )
    assert answer.code == 200


@pytest.mark.parametrize("headers", [{}, {"X-Webhook-Signature": "wrong"}, {"X-Webhook-Signature": ""}])
async def test_forged_or_missing_signature_is_401_and_stores_nothing(
    http_server_client: Any, state: AppState, headers: dict[str, str]
) -> None:
    answer = await post(
        http_server_client,
        "/webhooks/shop",
        wasender_body("F1"),
        {"Content-Type": "application/json", **headers},
    )
    assert answer.code == 401
    assert json.loads(answer.body) == {"error": "invalid signature"}
    assert await journaled(state) == []


async def test_meta_signature_is_checked_on_the_raw_bytes(http_server_client: Any, state: AppState) -> None:
    # Meta escapes non-ASCII as \uXXXX: re-serialising the JSON would change the bytes.
    body = (
        (FIXTURES / "meta" / "text.json")
        .read_bytes()
        .replace(b"Does it come in another color?", b"Ol\\u00e1, \\u00e7a va? \\ud83d\\ude00")
    )
    answer = await post(http_server_client, "/webhooks/fb", body, meta_headers(META_SECRET, body))
    assert answer.code == 200, answer.body
    [event] = await journaled(state)
    assert event["text"] == "Olá, ça va? 😀"
    tampered = body.replace(b"Ol", b"OL")
    answer = await post(http_server_client, "/webhooks/fb", tampered, meta_headers(META_SECRET, body))
    assert answer.code == 401


def meta_batch() -> bytes:
    text = json.loads((FIXTURES / "meta" / "text.json").read_text())
    delivered = json.loads((FIXTURES / "meta" / "status-delivered.json").read_text())
    value = text["entry"][0]["changes"][0]["value"]
    second = dict(value["messages"][0], id="wamid.SECOND")
    value["messages"].append(second)
    status = delivered["entry"][0]["changes"][0]["value"]["statuses"][0]
    read = dict(status, status="read", timestamp="1749416600")
    value["statuses"] = [status, read]
    other_entry = json.loads((FIXTURES / "meta" / "status-failed.json").read_text())["entry"][0]
    text["entry"].append(other_entry)
    return json.dumps(text).encode()


async def test_a_meta_batch_yields_one_event_per_message_and_status(
    http_server_client: Any, state: AppState
) -> None:
    body = meta_batch()
    answer = await post(http_server_client, "/webhooks/fb", body, meta_headers(META_SECRET, body))
    assert json.loads(answer.body) == {"accepted": 5, "duplicates": 0}
    events = await journaled(state)
    assert sorted((e["kind"], e["message_id"], e["status"]) for e in events) == [
        ("message", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", None),
        ("message", "wamid.SECOND", None),
        ("status", "wamid.OUT0001", "delivered"),
        ("status", "wamid.OUT0001", "read"),
        ("status", "wamid.OUT0002", "failed"),
    ]
    assert len({e["id"] for e in events}) == 5
    again = await post(http_server_client, "/webhooks/fb", body, meta_headers(META_SECRET, body))
    assert json.loads(again.body) == {"accepted": 0, "duplicates": 5}
    assert len(await journaled(state)) == 5


async def test_meta_handshake(http_server_client: Any) -> None:
    ok = await http_server_client.fetch(
        "/webhooks/fb?hub.mode=subscribe&hub.verify_token=hello-token&hub.challenge=1158201444",
        raise_error=False,
    )
    assert (ok.code, ok.body, ok.headers["Content-Type"].split(";")[0]) == (200, b"1158201444", "text/plain")
    bad = await http_server_client.fetch(
        "/webhooks/fb?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1", raise_error=False
    )
    assert bad.code == 403


async def test_unknown_source_is_404(http_server_client: Any) -> None:
    answer = await post(http_server_client, "/webhooks/nosuch", b"{}", wasender_headers(SECRET))
    assert (answer.code, json.loads(answer.body)) == (404, {"error": "unknown source"})


async def test_a_content_type_the_provider_never_sends_is_415(http_server_client: Any) -> None:
    answer = await post(
        http_server_client,
        "/webhooks/shop",
        b"a=b",
        {"Content-Type": "application/x-www-form-urlencoded", "X-Webhook-Signature": SECRET},
    )
    assert answer.code == 415


async def test_a_body_over_the_limit_is_413(http_server_client: Any, state: AppState) -> None:
    big = wasender_body("BIG", text="x" * 70_000)
    answer = await post(http_server_client, "/webhooks/shop", big, wasender_headers(SECRET))
    assert answer.code == 413
    assert await journaled(state) == []


@pytest.mark.parametrize("chunks", [5, 200])  # just over the limit, and 3 MB of it
def test_a_chunked_body_over_the_limit_is_413(
    http_server: Any, http_server_port: Any, io_loop: Any, state: AppState, chunks: int
) -> None:
    port = http_server_port[1]

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /webhooks/shop HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-Webhook-Signature: " + SECRET.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"x" * 16384
            try:
                for _ in range(chunks):
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the daemon answered and closed while we were still sending
            return sock.recv(4096)

    answer = io_loop.run_sync(lambda: io_loop.run_in_executor(None, send))
    assert answer.startswith(b"HTTP/1.1 413")
    assert answer.endswith(b'{"error": "body too large"}')


async def test_verified_but_unparseable_body_is_400_and_kept(
    http_server_client: Any, state: AppState, tmp_path: Path
) -> None:
    body = b'{"event": "messages.upsert", "data": '
    answer = await post(http_server_client, "/webhooks/shop", body, wasender_headers(SECRET))
    assert (answer.code, json.loads(answer.body)) == (400, {"error": "unparseable body"})
    [kept] = list((tmp_path / "rejected").glob("*.body"))
    assert kept.read_bytes() == body


async def test_an_address_outside_allow_ips_is_401(http_server_client: Any) -> None:
    answer = await post(http_server_client, "/webhooks/office", wasender_body("A1"), wasender_headers(SECRET))
    assert answer.code == 401


async def test_verify_none_accepts_unsigned(http_server_client: Any) -> None:
    answer = await post(
        http_server_client, "/webhooks/open", wasender_body("U1"), {"Content-Type": "application/json"}
    )
    assert answer.code == 200


@pytest.mark.parametrize("state", [{"ratelimit": {"rate": 1, "burst": 3}}], indirect=True)
async def test_a_burst_beyond_the_bucket_gets_429_with_retry_after(
    http_server_client: Any, state: AppState
) -> None:
    codes = []
    for i in range(5):
        answer = await post(
            http_server_client, "/webhooks/shop", wasender_body(f"B{i}"), wasender_headers(SECRET)
        )
        codes.append(answer.code)
    assert codes == [200, 200, 200, 429, 429]
    assert int(answer.headers["Retry-After"]) >= 1
    # Behind the trusted proxy (127.0.0.1), each forwarded client has its own bucket...
    headers = {**wasender_headers(SECRET), "X-Forwarded-For": "203.0.113.7"}
    answer = await post(http_server_client, "/webhooks/shop", wasender_body("B9"), headers)
    assert answer.code == 200


@pytest.mark.parametrize(
    "state",
    [{"ratelimit": {"rate": 1, "burst": 2}, "server": {"trusted_proxies": ["10.9.9.9/32"]}}],
    indirect=True,
)
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    http_server_client: Any, state: AppState
) -> None:
    codes = []
    for i in range(3):
        headers = {**wasender_headers(SECRET), "X-Forwarded-For": f"203.0.113.{i}"}
        answer = await post(http_server_client, "/webhooks/shop", wasender_body(f"X{i}"), headers)
        codes.append(answer.code)
    assert codes == [200, 200, 429]


async def test_a_journal_that_cannot_write_answers_503_and_keeps_what_it_had(
    http_server_client: Any, state: AppState
) -> None:
    first = await post(http_server_client, "/webhooks/shop", wasender_body("K1"), wasender_headers(SECRET))
    assert first.code == 200
    conn = state.journal._writer_conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is full
    failed = []
    for i in range(20):
        answer = await post(
            http_server_client,
            "/webhooks/shop",
            wasender_body(f"FULL{i}", "y" * 3000),
            wasender_headers(SECRET),
        )
        failed.append(answer.code)
    assert 503 in failed
    assert set(failed) <= {200, 503}  # never a 4xx for our own failure
    conn.execute("PRAGMA max_page_count=1073741823")
    assert (await http_server_client.fetch("/readyz", raise_error=False)).code == 200
    ids = [e["message_id"] for e in await journaled(state)]
    assert ids[0] == "K1"
    assert len(ids) == 1 + failed.count(200)


async def test_a_closed_journal_answers_503_not_500(http_server_client: Any, state: AppState) -> None:
    state.journal.close_blocking()
    answer = await post(http_server_client, "/webhooks/shop", wasender_body("LATE"), wasender_headers(SECRET))
    assert answer.code == 503
    assert answer.headers["Retry-After"] == "5"
    assert not state.inflight


async def test_draining_refuses_new_webhooks_with_503(http_server_client: Any, state: AppState) -> None:
    state.draining = True
    answer = await post(http_server_client, "/webhooks/shop", wasender_body("D1"), wasender_headers(SECRET))
    assert answer.code == 503
    assert answer.headers["Retry-After"]
    assert (await http_server_client.fetch("/readyz", raise_error=False)).code == 503
    assert (await http_server_client.fetch("/healthz", raise_error=False)).code == 200


async def test_metrics_count_requests_events_and_duplicates(http_server_client: Any) -> None:
    for _ in range(2):
        await post(http_server_client, "/webhooks/shop", wasender_body("M1"), wasender_headers(SECRET))
    await post(
        http_server_client,
        "/webhooks/shop",
        wasender_body("M2"),
        {"X-Webhook-Signature": "no", "Content-Type": "application/json"},
    )
    text = (await http_server_client.fetch("/metrics")).body.decode()
    assert 'wahookd_http_requests_total{code="200",source="shop"} 2.0' in text
    assert 'wahookd_events_total{kind="message",source="shop"} 1.0' in text
    assert 'wahookd_duplicates_total{source="shop"} 1.0' in text
    assert 'wahookd_rejected_total{reason="invalid_signature",source="shop"} 1.0' in text
    assert "wahookd_journal_commit_seconds_count" in text
    assert "wahookd_build_info{" in text
    assert "M1" not in text  # labels never carry message ids


@pytest.mark.parametrize("state", [{"server": {"body_timeout": 0.3, "max_body_bytes": 65536}}], indirect=True)
def test_a_slow_body_is_cut_off_and_others_are_still_served(
    http_server: Any, http_server_port: Any, io_loop: Any, state: AppState
) -> None:
    import time

    port = http_server_port[1]

    def slow_then_fast() -> tuple[bytes, float, int]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(
                b"POST /webhooks/shop HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-Webhook-Signature: " + SECRET.encode() + b'\r\nContent-Length: 100\r\n\r\n{"ev'
            )
            began = time.monotonic()
            answer = slow.recv(4096)  # a 408 once the daemon gives up on the body
            waited = time.monotonic() - began
            closed = slow.recv(4096)  # and then the connection closes
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(
            "POST", "/webhooks/shop", body=wasender_body("AFTER-SLOW"), headers=wasender_headers(SECRET)
        )
        status = conn.getresponse().status
        conn.close()
        return answer, closed, waited, status

    answer, closed, waited, status = io_loop.run_sync(lambda: io_loop.run_in_executor(None, slow_then_fast))
    assert answer.startswith(b"HTTP/1.1 408")
    assert closed == b""
    assert 0.2 < waited < 3
    assert status == 200
    assert not state.inflight


async def test_a_path_that_is_not_utf8_is_a_counted_400(http_server_client: Any, state: AppState) -> None:
    answer = await post(http_server_client, "/webhooks/sh%FFop", b"{}", wasender_headers(SECRET))
    assert answer.code == 400
    text = (await http_server_client.fetch("/metrics")).body.decode()
    assert 'wahookd_http_requests_total{code="400",source="unknown"} 1.0' in text


async def test_routes_outside_the_webhook_paths_are_json_404(http_server_client: Any) -> None:
    for path in ("/webhooks/shop/extra", "/webhooks/", "/nope"):
        answer = await http_server_client.fetch(path, raise_error=False)
        assert (answer.code, json.loads(answer.body)) == (404, {"error": "not found"}), path
    body, headers = wasender_body("Q1"), wasender_headers(SECRET)
    answer = await post(http_server_client, "/webhooks/shop/?x=/y", body, headers)
    assert answer.code == 200
