"""HTTP edges against the daemon as a real process: every error is an answer a client can
read (431, 414, 405 + Allow, 413), HEAD where GET works, and a connection the server closes
says `Connection: close` first, so a kept-alive client never meets a silent EOF."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from typing import Any

import pytest

from tests.conftest import DaemonProcess, meta_headers, wasender_body, wasender_headers

SECRET = "s3cret"
CONFIG = f"""
[ratelimit]
rate = 100000
burst = 100000

[sources.shop]
provider = "wasender"
secret = "{SECRET}"

[sources.fb]
provider = "meta"
secret = "meta"
verify_token = "tok"
"""


@pytest.fixture
def daemon(daemon_factory: Any) -> DaemonProcess:
    return daemon_factory(CONFIG).start()


def request(
    daemon: DaemonProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    return answer


def test_headers_over_64_kib_get_431(daemon: DaemonProcess) -> None:
    answer = request(
        daemon, "POST", "/webhooks/shop", b"{}", {"X-Big": "a" * 70_000, **wasender_headers(SECRET)}
    )
    assert answer.status == 431
    assert answer.getheader("Connection") == "close"


def test_a_url_over_8_kib_gets_414(daemon: DaemonProcess) -> None:
    assert request(daemon, "GET", "/webhooks/shop?x=" + "a" * 9000).status == 414


def test_other_methods_get_405_with_allow(daemon: DaemonProcess) -> None:
    put = request(daemon, "PUT", "/webhooks/shop", b"{}")
    assert put.status == 405
    assert put.getheader("Allow") == "POST"
    get = request(daemon, "GET", "/webhooks/shop")  # Wasender has no GET handshake
    assert get.status == 405
    assert get.getheader("Allow") == "POST"
    meta = request(daemon, "DELETE", "/webhooks/fb")
    assert meta.getheader("Allow") == "GET, HEAD, POST"
    health = request(daemon, "POST", "/healthz", b"")
    assert health.status == 405
    assert health.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_head_works_where_get_does(daemon: DaemonProcess, path: str) -> None:
    answer = request(daemon, "HEAD", path)
    assert answer.status == 200


def test_head_on_the_meta_handshake(daemon: DaemonProcess) -> None:
    path = "/webhooks/fb?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=42"
    assert request(daemon, "HEAD", path).status == 200
    assert request(daemon, "GET", path).status == 200


def raw_exchange(port: int, data: bytes, read_for: float = 3.0) -> bytes:
    """Send raw bytes and read everything until the server closes (or `read_for` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_for) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize(
    ("name", "head", "status"),
    [
        ("unknown source", "POST /webhooks/nope HTTP/1.1\r\nContent-Type: application/json\r\n", 404),
        ("wrong type", "POST /webhooks/shop HTTP/1.1\r\nContent-Type: text/csv\r\n", 415),
        ("declared too large", "POST /webhooks/shop HTTP/1.1\r\nContent-Type: application/json\r\n", 413),
    ],
)
def test_a_connection_closed_after_an_early_answer_says_connection_close(
    daemon: DaemonProcess, name: str, head: str, status: int
) -> None:
    body = b"{}" if status != 413 else b""
    length = len(body) if status != 413 else 10_000_000
    first = (head + f"Host: x\r\nContent-Length: {length}\r\n\r\n").encode() + body
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    received = raw_exchange(daemon.port, first + second)
    head_block, _, rest = received.partition(b"\r\n\r\n")
    assert head_block.startswith(f"HTTP/1.1 {status} ".encode()), received[:200]
    assert b"\r\nConnection: close" in head_block
    assert json.loads(rest[: rest.index(b"}") + 1])["error"]
    assert b"HTTP/1.1 200" not in rest  # the second request was not served on a closed connection


def test_an_answer_decided_on_the_body_keeps_the_connection(daemon: DaemonProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    for n in range(3):
        conn.request(
            "POST", "/webhooks/shop", body=wasender_body(f"K{n}"), headers=wasender_headers("forged")
        )
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 401
        assert answer.getheader("Connection") != "close"
    conn.close()


def test_a_client_uploading_4_mib_reads_the_413(daemon: DaemonProcess) -> None:
    body = b'{"x": "' + b"a" * (4 * 1024 * 1024) + b'"}'
    for _ in range(3):  # a reset would show up as ConnectionResetError or BrokenPipeError
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        # The server may stop reading early; the answer must still be there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", "/webhooks/shop", body=body, headers=wasender_headers(SECRET))
        answer = conn.getresponse()
        assert answer.status == 413
        assert json.loads(answer.read()) == {"error": "body too large"}
        conn.close()


def test_a_chunked_body_over_the_limit_gets_a_413_on_a_live_connection(daemon: DaemonProcess) -> None:
    chunk = b"a" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(52))  # 3.25 MiB
    head = (
        "POST /webhooks/shop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: application/json\r\nX-Webhook-Signature: {SECRET}\r\n\r\n"
    ).encode()
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    received = raw_exchange(daemon.port, head + chunks + b"0\r\n\r\n" + second, read_for=5)
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"HTTP/1.1 200 OK" in received  # the same connection served the next request


def test_429_and_404_name_the_source_in_the_log(daemon_factory: Any) -> None:
    limited: DaemonProcess = daemon_factory(
        CONFIG.replace("rate = 100000\nburst = 100000", "rate = 1\nburst = 1")
    )
    limited.start()
    statuses = [
        request(limited, "POST", "/webhooks/fb", b"{}", meta_headers("meta", b"{}")).status for _ in range(3)
    ]
    assert 429 in statuses
    time.sleep(1.1)  # a token again
    assert (
        request(limited, "POST", "/webhooks/n%C3%B6pe", b"{}", {"Content-Type": "application/json"}).status
        == 404
    )
    time.sleep(1.1)
    metrics = request_text(limited, "/metrics")
    assert 'wahookd_http_requests_total{code="429",source="fb"}' in metrics
    assert limited.stop() == 0
    records = [json.loads(line) for line in limited.log().splitlines() if line.startswith('{"')]
    requests = [record for record in records if record["event"] == "request"]
    assert any(record["status"] == 429 and record["source"] == "fb" for record in requests)
    assert any(record["status"] == 404 and record["path_source"] == "n\\xf6pe" for record in requests)


def request_text(daemon: DaemonProcess, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def test_a_connection_waiting_for_headers_is_closed_after_idle_timeout(daemon_factory: Any) -> None:
    """An idle keep-alive connection and one that trickles its headers are both closed once
    they waited `server.idle_timeout` for headers; one that keeps sending requests is not."""
    daemon = daemon_factory(CONFIG, env={"WAHOOKD_SERVER__IDLE_TIMEOUT": "1.0"}).start()
    idle = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    idle.request("POST", "/webhooks/shop", wasender_body("IDLE1"), wasender_headers(SECRET))
    assert idle.getresponse().read()
    trickle = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    trickle.sendall(b"POST /webhooks/shop HTTP/1.1\r\nHost: x\r\n")
    busy = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    began = time.monotonic()
    for n in range(8):  # a request every 0.3 s: never idle for a second
        busy.request("POST", "/webhooks/shop", wasender_body(f"BUSY{n}"), wasender_headers(SECRET))
        answer = busy.getresponse()
        answer.read()
        assert answer.status == 200
        time.sleep(0.3)
    assert trickle.recv(1024) == b""  # closed by the server, without an answer
    assert time.monotonic() - began < 4.5
    assert idle.sock is not None
    assert idle.sock.recv(1024) == b""
    busy.close()
    trickle.close()
    idle.close()
