"""The media stage per provider, retries and refusals, against real HTTP stand-ins and S3.

The journal here is a small in-test stand-in holding the `pending_media` /
`complete_media` contract; `test_media_daemon.py` runs the same paths through the real
daemon and its SQLite journal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from media_support import (
    MediaMetrics,
    Route,
    StandIn,
    encrypt_media,
    free_port,
    s3_server,
    standin,
)
from minio import Minio

from wahookd.events import new_media
from wahookd.media.stage import MediaStage
from wahookd.settings import Settings

PHOTO = b"\xff\xd8\xff\xe0 a small jpeg " * 50
TWILIO_SID = "AC0123456789abcdef0123456789abcdef"


class MemoryJournal:
    """The journal's media contract, in memory: events wait until `complete_media`."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = {seq: copy.deepcopy(event) for seq, event in enumerate(events, 1)}
        self.done: dict[int, dict[str, Any]] = {}
        self.order: list[int] = []
        self.changed = asyncio.Event()

    async def pending_media(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        waiting = [seq for seq in sorted(self.events) if seq not in self.done]
        return [(seq, copy.deepcopy(self.events[seq])) for seq in waiting[:limit]]

    async def complete_media(self, seq: int, event: dict[str, Any]) -> None:
        if seq not in self.done:
            self.done[seq] = copy.deepcopy(event)
            self.order.append(seq)
        self.changed.set()


def run_stage(
    settings: Settings,
    journal: MemoryJournal,
    until: Callable[[], bool] | None = None,
    timeout: float = 10.0,
    during: Callable[[MediaStage], Any] | None = None,
) -> MediaMetrics:
    """Run a MediaStage until `until()` (default: every event completed)."""
    metrics = MediaMetrics()
    until = until or (lambda: len(journal.done) == len(journal.events))

    async def go() -> None:
        journal.changed = asyncio.Event()  # each run has its own event loop
        stage = MediaStage(settings, journal, metrics, structlog.get_logger("test"))
        task = asyncio.get_running_loop().create_task(stage.run(), name="media")
        try:
            if during is not None:
                await asyncio.to_thread(during, stage)
            deadline = time.monotonic() + timeout
            while not until():
                assert time.monotonic() < deadline, f"timed out; done={list(journal.done)}"
                journal.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(journal.changed.wait(), 0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stage.close()

    # A bound on the whole run: a lost wake-up must fail the test, not hang the suite.
    asyncio.run(asyncio.wait_for(go(), timeout + 10))
    return metrics


def make_settings(tmp_path: Path, api: StandIn | None = None, **media: Any) -> Settings:
    api_url = api.url() if api else None
    return Settings(
        state={"dir": str(tmp_path / "state"), "durability": "os"},
        media={
            "allow_hosts": ["127.0.0.1"],
            "backoff_initial": 0.05,
            "max_attempts": 3,
            "timeout": 5,
            **media,
        },
        sources={
            "shop": {"provider": "wasender", "secret": "s"},
            "cloud": {
                "provider": "meta",
                "secret": "app",
                "access_token": "meta-token",
                "api_url": f"{api_url}/v21.0" if api_url else None,
            },
            "tw": {"provider": "twilio", "secret": "auth-token"},
            "wa": {"provider": "waha", "secret": "hmac", "api_key": "waha-key", "api_url": api_url},
            "evo": {"provider": "evolution", "secret": "t"},
        },
    )


def event(
    source: str, provider: str, raw: Any, mime: str | None = "image/jpeg", filename: str | None = None
) -> dict[str, Any]:
    return {
        "id": f"{source}-{hashlib.sha1(repr(raw).encode()).hexdigest()[:8]}",
        "source": source,
        "provider": provider,
        "kind": "message",
        "type": "image",
        "media": new_media(mime, filename),
        "received_at": "2026-11-26T21:30:00.123Z",
        "raw": raw,
    }


def wasender_event(url: str, media: Any, wrapper: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"imageMessage": media.baileys(url)}
    if wrapper:
        message = {wrapper: {"message": message}}
    return event("shop", "wasender", {"key": {"id": "3EB0IMG"}, "message": message})


@pytest.fixture
def host() -> Iterator[StandIn]:
    with standin() as server:
        yield server


def stored_file(settings: Settings, media: dict[str, Any]) -> bytes:
    return (settings.media_dir / media["stored"]["key"]).read_bytes()


# --- each provider -----------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", [None, "ephemeralMessage", "viewOnceMessageV2"])
def test_wasender_image_is_decrypted_and_stored(host: StandIn, tmp_path: Path, wrapper: str | None) -> None:
    media = encrypt_media(PHOTO)
    host.routes["/enc"] = Route(body=media.encrypted)
    settings = make_settings(tmp_path)
    journal = MemoryJournal([wasender_event(host.url("/enc"), media, wrapper)])
    metrics = run_stage(settings, journal)
    result = journal.done[1]["media"]
    digest = hashlib.sha256(PHOTO).hexdigest()
    assert result["error"] is None
    assert result["sha256"] == digest
    assert result["size"] == len(PHOTO)
    assert result["stored"]["key"] == f"shop/2026/11/26/{digest}.jpg"
    assert result["stored"]["url"].startswith("file://")
    assert result["mime_type"] == "image/jpeg"
    assert result["filename"] == f"{digest}.jpg"
    assert stored_file(settings, result) == PHOTO
    assert metrics.downloads("shop", "stored") == 1
    assert metrics.registry.get_sample_value("wahookd_media_bytes_total") == len(PHOTO)
    assert host.hits[0][1]["Origin"] == "https://web.whatsapp.com"


def test_wasender_media_from_direct_path_is_fetched_from_the_whatsapp_cdn_only(
    tmp_path: Path,
) -> None:
    media = encrypt_media(PHOTO)
    raw = {
        "key": {"id": "x"},
        "message": {
            "imageMessage": {**media.baileys(""), "url": None, "directPath": "/v/t62.7118-24/abc?ccb=9-4"}
        },
    }
    settings = make_settings(tmp_path, timeout=0.5, max_attempts=1)
    journal = MemoryJournal([event("shop", "wasender", raw)])
    run_stage(settings, journal)
    # No network here: the CDN cannot be reached, but the URL was built on its host only.
    assert journal.done[1]["media"]["error"] in (
        "connection failed: mmg.whatsapp.net",
        "timeout from mmg.whatsapp.net",
    )


def test_meta_media_takes_the_graph_lookup_with_the_bearer_token(host: StandIn, tmp_path: Path) -> None:
    bearer = {"Authorization": "Bearer meta-token"}
    host.routes["/v21.0/1234567890123456"] = Route(
        json={
            "messaging_product": "whatsapp",
            "url": host.url("/lookaside/abc"),
            "mime_type": "image/jpeg",
            "sha256": hashlib.sha256(PHOTO).hexdigest(),
            "file_size": len(PHOTO),
            "id": "1234567890123456",
        },
        headers=bearer,
    )
    host.routes["/lookaside/abc"] = Route(body=PHOTO, content_type="image/jpeg", headers=bearer)
    settings = make_settings(tmp_path, api=host)
    raw = {"id": "wamid.X", "type": "image", "image": {"id": "1234567890123456", "mime_type": "image/jpeg"}}
    journal = MemoryJournal([event("cloud", "meta", raw)])
    run_stage(settings, journal)
    result = journal.done[1]["media"]
    assert result["error"] is None
    assert stored_file(settings, result) == PHOTO
    assert host.paths_hit() == ["/v21.0/1234567890123456", "/lookaside/abc"]


def test_meta_download_not_matching_the_lookup_hash_is_not_stored(host: StandIn, tmp_path: Path) -> None:
    host.routes["/v21.0/42"] = Route(
        json={"url": host.url("/file"), "sha256": base64.b64encode(b"x" * 32).decode()}
    )
    host.routes["/file"] = Route(body=PHOTO)
    settings = make_settings(tmp_path, api=host, max_attempts=2)
    journal = MemoryJournal([event("cloud", "meta", {"type": "image", "image": {"id": "42"}})])
    run_stage(settings, journal)
    assert journal.done[1]["media"]["error"] == "sha256 mismatch"
    assert journal.done[1]["media"]["stored"] is None


def test_meta_wrong_token_is_reported_without_the_token(host: StandIn, tmp_path: Path) -> None:
    host.routes["/v21.0/42"] = Route(json={"url": "x"}, headers={"Authorization": "Bearer other"})
    settings = make_settings(tmp_path, api=host)
    journal = MemoryJournal([event("cloud", "meta", {"type": "image", "image": {"id": "42"}})])
    metrics = run_stage(settings, journal)
    assert journal.done[1]["media"]["error"] == "HTTP 401 from 127.0.0.1"
    assert len(host.hits) == 1  # a 401 is not retried
    assert metrics.downloads("cloud", "failed") == 1


def test_meta_media_id_that_is_not_numeric_is_never_put_in_a_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    raw = {"type": "image", "image": {"id": "../../me/accounts"}}
    journal = MemoryJournal([event("cloud", "meta", raw)])
    run_stage(settings, journal)
    assert journal.done[1]["media"]["error"] == "media id is not numeric"


def test_twilio_media_uses_basic_auth_and_follows_the_cdn_redirect(host: StandIn, tmp_path: Path) -> None:
    basic = "Basic " + base64.b64encode(f"{TWILIO_SID}:auth-token".encode()).decode()
    host.routes["/Media/ME1"] = Route(
        redirect=host.url("/cdn/ME1", host="localhost"), headers={"Authorization": basic}
    )
    host.routes["/cdn/ME1"] = Route(body=PHOTO, content_type="image/jpeg", forbid=("Authorization",))
    settings = make_settings(tmp_path, allow_hosts=["127.0.0.1", "localhost"])
    raw = {
        "AccountSid": TWILIO_SID,
        "NumMedia": "1",
        "MediaContentType0": "image/jpeg",
        "MediaUrl0": host.url("/Media/ME1"),
    }
    journal = MemoryJournal([event("tw", "twilio", raw)])
    run_stage(settings, journal)
    result = journal.done[1]["media"]
    assert result["error"] is None
    assert stored_file(settings, result) == PHOTO


def test_waha_media_is_fetched_with_the_api_key(host: StandIn, tmp_path: Path) -> None:
    host.routes["/api/files/x.pdf"] = Route(
        body=b"%PDF-1.4 doc", content_type="application/pdf", headers={"X-Api-Key": "waha-key"}
    )
    settings = make_settings(tmp_path, api=host)
    raw = {
        "id": "true_1@c.us_A",
        "hasMedia": True,
        "media": {
            "url": host.url("/api/files/x.pdf"),
            "mimetype": "application/pdf",
            "filename": "invoice.pdf",
        },
    }
    journal = MemoryJournal([event("wa", "waha", raw, mime="application/pdf", filename="invoice.pdf")])
    run_stage(settings, journal)
    result = journal.done[1]["media"]
    assert result["error"] is None
    assert result["filename"] == "invoice.pdf"
    assert result["stored"]["key"].endswith(".pdf")
    assert stored_file(settings, result) == b"%PDF-1.4 doc"


def test_evolution_inline_base64_is_stored_without_a_download(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    raw = {
        "key": {"id": "E1"},
        "message": {"imageMessage": {"mimetype": "image/jpeg"}, "base64": base64.b64encode(PHOTO).decode()},
    }
    journal = MemoryJournal([event("evo", "evolution", raw)])
    run_stage(settings, journal)
    assert stored_file(settings, journal.done[1]["media"]) == PHOTO


def test_mime_type_comes_from_the_host_when_none_was_declared(host: StandIn, tmp_path: Path) -> None:
    host.routes["/f"] = Route(body=b"OggS voice", content_type="audio/ogg; codecs=opus")
    settings = make_settings(tmp_path, api=host)
    journal = MemoryJournal([event("wa", "waha", {"media": {"url": host.url("/f")}}, mime=None)])
    run_stage(settings, journal)
    result = journal.done[1]["media"]
    assert result["mime_type"] == "audio/ogg"
    assert result["stored"]["key"].endswith(".ogg")


def test_s3_store_receives_the_plaintext(host: StandIn, tmp_path: Path) -> None:
    media = encrypt_media(PHOTO)
    host.routes["/enc"] = Route(body=media.encrypted)
    with s3_server() as endpoint:
        settings = make_settings(
            tmp_path,
            store="s3",
            endpoint=endpoint,
            secure=False,
            access_key="testing",
            secret_key="testing",
            bucket="wa-media",
        )
        journal = MemoryJournal([wasender_event(host.url("/enc"), media)])
        run_stage(settings, journal)
        stored = journal.done[1]["media"]["stored"]
        assert stored["bucket"] == "wa-media"
        assert stored["url"] == f"s3://wa-media/{stored['key']}"
        client = Minio(endpoint, access_key="testing", secret_key="testing", secure=False)
        answer = client.get_object("wa-media", stored["key"])
        try:
            assert hashlib.sha256(answer.read()).hexdigest() == hashlib.sha256(PHOTO).hexdigest()
        finally:
            answer.close()
            answer.release_conn()


# --- retries, refusals, restarts -----------------------------------------------------------


def test_host_down_for_a_while_then_back_is_stored(tmp_path: Path) -> None:
    port = free_port()
    media = encrypt_media(PHOTO)
    settings = make_settings(tmp_path, max_attempts=8, backoff_initial=0.05)
    journal = MemoryJournal([wasender_event(f"http://127.0.0.1:{port}/enc", media)])
    server = StandIn(port)
    server.routes["/enc"] = Route(body=media.encrypted)

    def host_returns(_stage: MediaStage) -> None:
        time.sleep(0.4)  # several failed attempts first
        server.start()

    try:
        metrics = run_stage(settings, journal, during=host_returns)
    finally:
        server.stop()
    assert journal.done[1]["media"]["error"] is None
    assert stored_file(settings, journal.done[1]["media"]) == PHOTO
    assert metrics.downloads("shop", "retry") >= 1
    assert metrics.downloads("shop", "stored") == 1


def test_host_gone_for_good_completes_with_media_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_attempts=3, backoff_initial=0.02)
    journal = MemoryJournal([wasender_event(f"http://127.0.0.1:{free_port()}/enc", encrypt_media(PHOTO))])
    metrics = run_stage(settings, journal)
    assert journal.done[1]["media"]["error"] == "connection failed: 127.0.0.1"
    assert journal.done[1]["media"]["stored"] is None
    assert metrics.downloads("shop", "retry") == 2
    assert metrics.downloads("shop", "failed") == 1


def test_backoff_doubles_between_attempts(host: StandIn, tmp_path: Path) -> None:
    host.routes["/enc"] = Route(body=b"", status=503)
    settings = make_settings(tmp_path, max_attempts=4, backoff_initial=0.1)
    journal = MemoryJournal([wasender_event(host.url("/enc"), encrypt_media(PHOTO))])
    started = time.monotonic()
    run_stage(settings, journal)
    assert journal.done[1]["media"]["error"] == "HTTP 503 from 127.0.0.1"
    assert len(host.hits) == 4
    assert time.monotonic() - started >= 0.1 + 0.2 + 0.4


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://evil.example/x.enc", "host not allowed: evil.example"),
        ("http://10.0.0.7/x.enc", "host not allowed: 10.0.0.7"),
    ],
)
def test_url_outside_allow_hosts_is_refused_at_once(tmp_path: Path, url: str, reason: str) -> None:
    settings = make_settings(tmp_path, max_attempts=5, backoff_initial=5)
    journal = MemoryJournal([wasender_event(url, encrypt_media(PHOTO))])
    metrics = run_stage(settings, journal, timeout=3)
    assert journal.done[1]["media"]["error"] == reason
    assert metrics.downloads("shop", "refused") == 1
    assert metrics.downloads("shop", "retry") == 0


def test_redirect_to_a_private_address_is_reported(host: StandIn, tmp_path: Path) -> None:
    # "localhost" is listed (it may be private); 127.0.0.1 is only WAHA's configured API host.
    host.routes["/start"] = Route(redirect=host.url("/file"))
    host.routes["/file"] = Route(body=PHOTO)
    settings = make_settings(tmp_path, api=host, allow_hosts=["localhost"])
    raw = {"media": {"url": host.url("/start", host="localhost")}}
    journal = MemoryJournal([event("wa", "waha", raw)])
    metrics = run_stage(settings, journal)
    assert journal.done[1]["media"]["error"].startswith("private address refused: 127.0.0.1 (")
    assert host.paths_hit() == ["/start"]
    assert metrics.downloads("wa", "refused") == 1


def test_body_over_the_cap_is_reported(host: StandIn, tmp_path: Path) -> None:
    host.routes["/enc"] = Route(body=b"x" * 5000)
    settings = make_settings(tmp_path, max_bytes=4096)
    journal = MemoryJournal([wasender_event(host.url("/enc"), encrypt_media(b"tiny"))])
    run_stage(settings, journal)
    assert journal.done[1]["media"]["error"] == "body over max_bytes (4096)"


def test_tampered_file_is_never_stored(host: StandIn, tmp_path: Path) -> None:
    media = encrypt_media(PHOTO)
    tampered = bytearray(media.encrypted)
    tampered[3] ^= 0xFF
    host.routes["/enc"] = Route(body=bytes(tampered))
    settings = make_settings(tmp_path, max_attempts=2)
    journal = MemoryJournal([wasender_event(host.url("/enc"), media)])
    run_stage(settings, journal)
    assert journal.done[1]["media"]["error"] == "fileEncSha256 mismatch"
    assert journal.done[1]["media"]["stored"] is None
    assert [p for p in settings.media_dir.rglob("*") if p.is_file()] == []


def test_one_dead_host_does_not_hold_up_other_media(host: StandIn, tmp_path: Path) -> None:
    media = encrypt_media(PHOTO)
    host.routes["/enc"] = Route(body=media.encrypted)
    settings = make_settings(tmp_path, max_attempts=3, backoff_initial=1.0, concurrency=1)
    journal = MemoryJournal(
        [
            wasender_event(f"http://127.0.0.1:{free_port()}/gone", encrypt_media(b"other")),
            wasender_event(host.url("/enc"), media),
        ]
    )
    run_stage(settings, journal, until=lambda: 2 in journal.done, timeout=2.5)
    assert journal.order == [2]  # the first still waits for its retries


def test_event_without_media_is_handed_back_unchanged(tmp_path: Path) -> None:
    plain = event("shop", "wasender", {"message": {"conversation": "hi"}})
    plain["media"] = None
    journal = MemoryJournal([plain])
    run_stage(make_settings(tmp_path), journal)
    assert journal.done[1] == plain


def test_restart_resumes_pending_events_from_the_journal(tmp_path: Path) -> None:
    port = free_port()
    media = encrypt_media(PHOTO)
    settings = make_settings(tmp_path, max_attempts=50, backoff_initial=0.05)
    journal = MemoryJournal([wasender_event(f"http://127.0.0.1:{port}/enc", media)])
    # First run: the host is down; stop mid-retries. Nothing is completed.
    with pytest.raises(AssertionError, match="timed out"):
        run_stage(settings, journal, timeout=0.3)
    assert journal.done == {}
    with standin(port) as server:
        server.routes["/enc"] = Route(body=media.encrypted)
        run_stage(settings, journal)
    assert stored_file(settings, journal.done[1]["media"]) == PHOTO


def test_wake_from_another_thread_starts_work_at_once(host: StandIn, tmp_path: Path) -> None:
    media = encrypt_media(PHOTO)
    host.routes["/enc"] = Route(body=media.encrypted)
    journal = MemoryJournal([])
    arrived = threading.Event()

    def add_then_wake(stage: MediaStage) -> None:
        time.sleep(0.2)  # the stage has polled once and now sleeps (POLL_INTERVAL is 5 s)
        journal.events[1] = wasender_event(host.url("/enc"), media)
        stage.wake()
        arrived.set()

    started = time.monotonic()
    run_stage(
        make_settings(tmp_path), journal, until=lambda: 1 in journal.done, during=add_then_wake, timeout=3
    )
    assert arrived.is_set()
    assert time.monotonic() - started < 2


def test_scratch_files_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    leftover = settings.media_dir / ".incoming" / "dead.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    run_stage(settings, MemoryJournal([]), until=lambda: not leftover.exists(), timeout=2)


class StaleJournal(MemoryJournal):
    """Answers `pending_media` from a snapshot taken before the hand-backs committed."""

    async def pending_media(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        return [(seq, copy.deepcopy(self.events[seq])) for seq in sorted(self.events)][:limit]


def test_an_event_handed_back_is_not_fetched_again_from_a_stale_read(host: StandIn, tmp_path: Path) -> None:
    media = encrypt_media(PHOTO)
    host.routes["/enc"] = Route(body=media.encrypted)
    journal = StaleJournal([wasender_event(host.url("/enc"), media)])

    def wake_often(stage: MediaStage) -> None:
        for _ in range(10):
            time.sleep(0.05)
            stage.wake()

    metrics = run_stage(make_settings(tmp_path), journal, during=wake_often)
    assert len(host.hits) == 1
    assert metrics.downloads("shop", "stored") == 1


def test_a_stage_cancelled_as_it_is_woken_stops(tmp_path: Path) -> None:
    """The daemon cancels the stage at shutdown while commits may still wake it; Python
    3.11's `asyncio.wait_for` dropped a cancellation that came with the wake-up, and the
    stage polled on (this test then hung in 1 of 5 runs of the one above)."""

    async def go() -> None:
        settings, log = make_settings(tmp_path), structlog.get_logger("test")
        stage = MediaStage(settings, MemoryJournal([]), MediaMetrics(), log)
        for _ in range(3):
            task = asyncio.get_running_loop().create_task(stage.run())
            await asyncio.sleep(0.3)  # it has polled and waits to be woken
            stage.wake()
            task.cancel()
            async with asyncio.timeout(3):
                await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()
        await stage.close()

    asyncio.run(go())


def test_encrypted_file_of_a_plaintext_exactly_at_the_cap_is_stored(host: StandIn, tmp_path: Path) -> None:
    media = encrypt_media(PHOTO)
    assert len(media.encrypted) > len(PHOTO)
    host.routes["/enc"] = Route(body=media.encrypted)
    journal = MemoryJournal([wasender_event(host.url("/enc"), media)])
    run_stage(make_settings(tmp_path, max_bytes=len(PHOTO)), journal)
    assert journal.done[1]["media"]["error"] is None


def test_declared_file_length_over_the_cap_is_refused_without_a_download(
    host: StandIn, tmp_path: Path
) -> None:
    media = encrypt_media(PHOTO)
    host.routes["/enc"] = Route(body=media.encrypted)
    journal = MemoryJournal([wasender_event(host.url("/enc"), media)])
    run_stage(make_settings(tmp_path, max_bytes=len(PHOTO) - 1), journal)
    assert journal.done[1]["media"]["error"] == f"body over max_bytes ({len(PHOTO) - 1})"
    assert host.hits == []


def test_evolution_without_inline_base64_decrypts_like_baileys(host: StandIn, tmp_path: Path) -> None:
    media = encrypt_media(PHOTO, b"WhatsApp Document Keys")
    host.routes["/doc.enc"] = Route(body=media.encrypted)
    raw = {
        "key": {"id": "E2"},
        "message": {
            "documentWithCaptionMessage": {
                "message": {
                    "documentMessage": {
                        **media.baileys(host.url("/doc.enc"), "application/pdf"),
                        "fileName": "../../etc/passwd",
                    }
                }
            }
        },
    }
    journal = MemoryJournal(
        [event("evo", "evolution", raw, mime="application/pdf", filename="../../etc/passwd")]
    )
    settings = make_settings(tmp_path)
    run_stage(settings, journal)
    result = journal.done[1]["media"]
    assert stored_file(settings, result) == PHOTO
    # The payload's filename is reported, never used for the key.
    assert result["stored"]["key"] == f"evo/2026/11/26/{hashlib.sha256(PHOTO).hexdigest()}.pdf"


def test_provider_without_media_retrieval_completes_with_an_error(tmp_path: Path) -> None:
    journal = MemoryJournal([event("shop", "standard", {"data": {}})])
    metrics = run_stage(make_settings(tmp_path), journal)
    assert journal.done[1]["media"]["error"] == "no media retrieval for provider standard"
    assert metrics.downloads("shop", "failed") == 1
