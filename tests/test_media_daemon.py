"""End to end: the daemon as a process, a real S3 server, provider stand-ins on loopback.

A signed webhook goes in; the file sink's JSONL line comes out with ``media.stored``, and
the object in the bucket hashes to the plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from media_support import Route, StandIn, encrypt_media, free_port, s3_server, standin
from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

FIXTURES = Path(__file__).parent / "fixtures"
VECTOR = json.loads((FIXTURES / "vectors.json").read_text())["whatsapp_media"]
PLAINTEXT = VECTOR["plaintext"].encode()
PHOTO = b"\xff\xd8\xff\xe0 meta photo " * 40
WASENDER_SECRET = "wasender-secret"
META_SECRET = "meta-app-secret"
META_TOKEN = "meta-access-token"
TWILIO_TOKEN = "twilio-auth-token"
TWILIO_SID = "AC0123456789abcdef0123456789abcdef"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("wahookd.providers.wasender") is None,
    reason="the providers are not in this checkout yet",
)


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def host() -> Iterator[StandIn]:
    with standin() as server:
        yield server


def config(tmp_path: Path, s3: str, api: StandIn | None, bucket: str, **media: Any) -> str:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in media.items())
    api_url = f'api_url = "{api.url()}/v21.0"\n' if api else ""
    return f"""
[media]
store = "s3"
endpoint = "{s3}"
bucket = "{bucket}"
access_key = "testing"
secret_key = "testing"
secure = false
allow_hosts = ["127.0.0.1"]
backoff_initial = 0.1
timeout = 5
{extra}
[sources.shop]
provider = "wasender"
secret = "{WASENDER_SECRET}"

[sources.cloud]
provider = "meta"
secret = "{META_SECRET}"
access_token = "{META_TOKEN}"
{api_url}
[sources.tw]
provider = "twilio"
secret = "{TWILIO_TOKEN}"

[sinks.archive]
plugin = "file"
path = "{tmp_path / "events.jsonl"}"
"""


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status


def post_wasender(daemon: Any, body: bytes) -> None:
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET}
    assert post(daemon.url + "/webhooks/shop", body, headers) == 200


def wasender_image(url: str, media: dict[str, Any] | None = None, message_id: str = "") -> bytes:
    body = json.loads((FIXTURES / "wasender" / "messages-upsert-image.json").read_text())
    image = body["data"]["message"]["imageMessage"]
    image.update(media or {})
    image["url"] = url
    if message_id:
        body["data"]["key"]["id"] = message_id
    return json.dumps(body).encode()


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(
    tmp_path: Path, found: Callable[[dict[str, Any]], bool], timeout: float = 15.0, daemon: Any = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in lines(tmp_path):
            if found(line):
                return line
        time.sleep(0.05)
    log = daemon.log() if daemon is not None else ""
    raise AssertionError(f"no such line in {lines(tmp_path)}\n{log}")


def stored_sha256(s3: str, stored: dict[str, Any]) -> str:
    client = Minio(s3, access_key="testing", secret_key="testing", secure=False)
    answer = client.get_object(stored["bucket"], stored["key"])
    try:
        return hashlib.sha256(answer.read()).hexdigest()
    finally:
        answer.close()
        answer.release_conn()


def has_media(line: dict[str, Any]) -> bool:
    media = line.get("media") or {}
    return bool(media.get("stored") or media.get("error"))


def test_wasender_image_ends_in_the_sink_with_the_stored_object(
    daemon_factory: Any, tmp_path: Path, s3: str, host: StandIn
) -> None:
    host.routes["/enc"] = Route(body=(FIXTURES / "wasender" / "3EB0IMG0000001.enc").read_bytes())
    daemon = daemon_factory(config(tmp_path, s3, None, "wasender-media")).start()
    post_wasender(daemon, wasender_image(host.url("/enc")))
    line = wait_for(tmp_path, has_media, daemon=daemon)
    media = line["media"]
    assert media["error"] is None, daemon.log()
    assert media["stored"]["bucket"] == "wasender-media"
    assert media["sha256"] == hashlib.sha256(PLAINTEXT).hexdigest()
    assert stored_sha256(s3, media["stored"]) == hashlib.sha256(PLAINTEXT).hexdigest()
    assert media["size"] == len(PLAINTEXT)
    assert media["mime_type"] == "image/jpeg"
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=5) as answer:
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.read().decode())
            for sample in family.samples
        }
    downloads = ("wahookd_media_downloads_total", (("outcome", "stored"), ("source", "shop")))
    assert samples[downloads] == 1
    assert samples[("wahookd_media_bytes_total", ())] == len(PLAINTEXT)


def test_meta_image_takes_the_graph_lookup_and_ends_in_the_sink(
    daemon_factory: Any, tmp_path: Path, s3: str, host: StandIn
) -> None:
    bearer = {"Authorization": f"Bearer {META_TOKEN}"}
    host.routes["/v21.0/1234567890123456"] = Route(
        json={
            "messaging_product": "whatsapp",
            "url": host.url("/lookaside/img"),
            "mime_type": "image/jpeg",
            "sha256": hashlib.sha256(PHOTO).hexdigest(),
            "file_size": len(PHOTO),
            "id": "1234567890123456",
        },
        headers=bearer,
    )
    host.routes["/lookaside/img"] = Route(body=PHOTO, content_type="image/jpeg", headers=bearer)
    daemon = daemon_factory(config(tmp_path, s3, host, "meta-media")).start()
    body = (FIXTURES / "meta" / "image.json").read_bytes()
    signature = hmac.new(META_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"}
    assert post(daemon.url + "/webhooks/cloud", body, headers) == 200
    media = wait_for(tmp_path, has_media, daemon=daemon)["media"]
    assert media["error"] is None, daemon.log()
    assert stored_sha256(s3, media["stored"]) == hashlib.sha256(PHOTO).hexdigest()
    assert host.paths_hit() == ["/v21.0/1234567890123456", "/lookaside/img"]


def test_twilio_media_is_fetched_with_basic_auth_and_ends_in_the_sink(
    daemon_factory: Any, tmp_path: Path, s3: str, host: StandIn
) -> None:
    basic = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    host.routes["/Media/ME1"] = Route(body=PHOTO, content_type="image/jpeg", headers={"Authorization": basic})
    daemon = daemon_factory(config(tmp_path, s3, None, "twilio-media")).start()
    fields = dict(parse_qsl((FIXTURES / "twilio" / "media.form").read_text()))
    fields["MediaUrl0"] = host.url("/Media/ME1")
    url = daemon.url + "/webhooks/tw"
    signed = url + "".join(name + fields[name] for name in sorted(fields))
    signature = base64.b64encode(
        hmac.new(TWILIO_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
    assert post(url, urlencode(fields).encode(), headers) == 200
    media = wait_for(tmp_path, has_media, daemon=daemon)["media"]
    assert media["error"] is None, daemon.log()
    assert stored_sha256(s3, media["stored"]) == hashlib.sha256(PHOTO).hexdigest()


def test_media_host_down_holds_only_its_event_until_the_host_returns(
    daemon_factory: Any, tmp_path: Path, s3: str
) -> None:
    port = free_port()
    daemon = daemon_factory(config(tmp_path, s3, None, "down-media", max_attempts=30)).start()
    post_wasender(daemon, wasender_image(f"http://127.0.0.1:{port}/enc"))
    post_wasender(daemon, (FIXTURES / "wasender" / "messages-received-text.json").read_bytes())
    # Other events flow while the media host is down.
    wait_for(tmp_path, lambda line: line.get("type") == "text", timeout=5, daemon=daemon)
    assert not any(has_media(line) for line in lines(tmp_path))
    with standin(port) as server:
        server.routes["/enc"] = Route(body=(FIXTURES / "wasender" / "3EB0IMG0000001.enc").read_bytes())
        media = wait_for(tmp_path, has_media, daemon=daemon)["media"]
    assert media["error"] is None
    assert stored_sha256(s3, media["stored"]) == hashlib.sha256(PLAINTEXT).hexdigest()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (None, "connection failed: 127.0.0.1"),  # the host is gone for good
        ("https://evil.example/x.enc", "host not allowed: evil.example"),
        ("http://10.0.0.9/x.enc", "host not allowed: 10.0.0.9"),
    ],
)
def test_media_that_cannot_be_fetched_is_delivered_with_media_error(
    daemon_factory: Any, tmp_path: Path, s3: str, url: str | None, error: str
) -> None:
    daemon = daemon_factory(config(tmp_path, s3, None, "gone-media", max_attempts=3)).start()
    post_wasender(daemon, wasender_image(url or f"http://127.0.0.1:{free_port()}/enc"))
    media = wait_for(tmp_path, has_media, daemon=daemon)["media"]
    assert media["error"] == error
    assert media["stored"] is None


def test_restart_after_kill_resumes_the_pending_media(daemon_factory: Any, tmp_path: Path, s3: str) -> None:
    port = free_port()
    text = config(tmp_path, s3, None, "restart-media", max_attempts=50)
    daemon = daemon_factory(text).start()
    post_wasender(daemon, wasender_image(f"http://127.0.0.1:{port}/enc"))
    time.sleep(0.3)
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    with standin(port) as server:
        server.routes["/enc"] = Route(body=(FIXTURES / "wasender" / "3EB0IMG0000001.enc").read_bytes())
        again = daemon_factory(text).start()
        media = wait_for(tmp_path, has_media, daemon=again)["media"]
    assert media["error"] is None
    assert sum(1 for line in lines(tmp_path) if has_media(line)) == 1


def test_large_video_is_stored_through_the_daemon(
    daemon_factory: Any, tmp_path: Path, s3: str, host: StandIn
) -> None:
    video = encrypt_media(b"\x00\x00\x00\x18ftypmp42" * 300_000, b"WhatsApp Image Keys")
    host.routes["/big.enc"] = Route(body=video.encrypted)
    daemon = daemon_factory(config(tmp_path, s3, None, "big-media")).start()
    post_wasender(daemon, wasender_image(host.url("/big.enc"), video.baileys(""), "BIG1"))
    media = wait_for(tmp_path, has_media, daemon=daemon)["media"]
    assert media["error"] is None, daemon.log()
    assert media["size"] == len(video.plaintext)
    assert stored_sha256(s3, media["stored"]) == hashlib.sha256(video.plaintext).hexdigest()
