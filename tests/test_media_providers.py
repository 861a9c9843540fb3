"""Providers own their media (issue 13): the stage asks the event's provider for its hosts and
its file, so a provider a plugin registers fetches media through the same stage, guard and
store as a built-in one. Also WAHA's own-address media URLs, and relayed media."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from media_support import MediaMetrics, Route, StandIn, standin
from structlog.testing import capture_logs

from wahookd.events import new_media
from wahookd.hookspecs import hookimpl
from wahookd.media import retrieval
from wahookd.media.errors import MediaError
from wahookd.media.retrieval import MediaFetch, Retrieved
from wahookd.media.stage import MediaStage
from wahookd.plugins import collect, get_plugin_manager
from wahookd.providers import InboundRequest, Provider
from wahookd.settings import Settings, SourceSettings

FILE = b"%PDF-1.4 a plugin provider's invoice"


class AcmeProvider(Provider):
    """A provider as a third party ships it: its own hosts, its own credentials."""

    name = "acme"
    media_hosts = ("files.acme.example", "*.cdn.acme.example")
    seen_policies: list[Any] = []

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        return True

    async def fetch_media(self, event: dict[str, Any], fetch: MediaFetch) -> Retrieved:
        AcmeProvider.seen_policies.append(fetch.policy)
        url = event["raw"]["attachment"]["href"]
        if not isinstance(url, str):
            raise MediaError("no attachment href")
        token = fetch.source.api_key.get_secret_value() if fetch.source.api_key else ""
        return await retrieval.download(fetch, url, {"Authorization": f"Token {token}"})


class AcmePlugin:
    @hookimpl
    def wahookd_register_providers(self) -> list[Provider]:
        return [AcmeProvider()]


def registered_providers() -> dict[str, Provider]:
    """The built-in providers and Acme's, as the daemon collects them from plugins."""
    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(AcmePlugin(), name="wahookd-acme")
    return collect(manager).providers


class MemoryJournal:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = {seq: copy.deepcopy(event) for seq, event in enumerate(events, 1)}
        self.done: dict[int, dict[str, Any]] = {}

    async def pending_media(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        waiting = [seq for seq in sorted(self.events) if seq not in self.done]
        return [(seq, copy.deepcopy(self.events[seq])) for seq in waiting[:limit]]

    async def complete_media(self, seq: int, event: dict[str, Any]) -> None:
        self.done.setdefault(seq, copy.deepcopy(event))


def run(settings: Settings, journal: MemoryJournal, providers: dict[str, Provider] | None) -> MediaMetrics:
    metrics = MediaMetrics()

    async def go() -> None:
        stage = MediaStage(settings, journal, metrics, structlog.get_logger("test"), providers=providers)
        task = asyncio.get_running_loop().create_task(stage.run(), name="media")
        try:
            deadline = time.monotonic() + 10
            while len(journal.done) < len(journal.events):
                assert time.monotonic() < deadline, "timed out"
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stage.close()

    asyncio.run(go())
    return metrics


def settings_for(tmp_path: Path, **sources: dict[str, Any]) -> Settings:
    return Settings(
        state={"dir": str(tmp_path / "state"), "durability": "os"},
        media={"allow_hosts": ["127.0.0.1"], "backoff_initial": 0.05, "max_attempts": 2, "timeout": 5},
        sources=sources,
    )


def event(source: str, provider: str, raw: Any, mime: str = "application/pdf") -> dict[str, Any]:
    return {
        "id": f"{source}:{hashlib.sha1(repr(raw).encode()).hexdigest()[:8]}",
        "source": source,
        "provider": provider,
        "kind": "message",
        "type": "document",
        "media": new_media(mime, None),
        "received_at": "2026-11-26T21:30:00Z",
        "raw": raw,
    }


@pytest.fixture
def host() -> Iterator[StandIn]:
    with standin() as server:
        yield server


def test_a_plugin_provider_fetches_its_media_through_the_stage(host: StandIn, tmp_path: Path) -> None:
    host.routes["/files/inv.pdf"] = Route(
        body=FILE, content_type="application/pdf", headers={"Authorization": "Token acme-key"}
    )
    settings = settings_for(tmp_path, acme={"provider": "acme", "secret": "s", "api_key": "acme-key"})
    journal = MemoryJournal([event("acme", "acme", {"attachment": {"href": host.url("/files/inv.pdf")}})])
    metrics = run(settings, journal, registered_providers())
    media = journal.done[1]["media"]
    assert media["error"] is None
    assert media["sha256"] == hashlib.sha256(FILE).hexdigest()
    assert (settings.media_dir / media["stored"]["key"]).read_bytes() == FILE
    assert media["stored"]["key"].startswith("acme/2026/11/26/")
    assert metrics.downloads("acme", "stored") == 1
    # The guard let the provider's own hosts through, and nothing else.
    policy = AcmeProvider.seen_policies[-1]
    assert policy.allows_host("files.acme.example")
    assert policy.allows_host("eu.cdn.acme.example")
    assert not policy.allows_host("graph.facebook.com")


def test_a_plugin_providers_refused_host_ends_in_media_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, acme={"provider": "acme", "secret": "s"})
    journal = MemoryJournal([event("acme", "acme", {"attachment": {"href": "https://evil.example/x.pdf"}})])
    metrics = run(settings, journal, registered_providers())
    assert journal.done[1]["media"]["error"] == "host not allowed: evil.example"
    assert metrics.downloads("acme", "refused") == 1


def test_without_a_registry_the_stage_finds_the_installed_providers(host: StandIn, tmp_path: Path) -> None:
    host.routes["/api/files/default/a.pdf"] = Route(body=FILE, content_type="application/pdf")
    settings = settings_for(tmp_path, wa={"provider": "waha", "secret": "s", "api_url": host.url()})
    journal = MemoryJournal([event("wa", "waha", {"media": {"url": host.url("/api/files/default/a.pdf")}})])
    run(settings, journal, None)
    assert journal.done[1]["media"]["error"] is None


def test_a_provider_no_plugin_provides_is_an_error_not_a_wait(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, gone={"provider": "gone", "secret": "s"})
    journal = MemoryJournal([event("gone", "gone", {})])
    run(settings, journal, registered_providers())
    assert journal.done[1]["media"]["error"] == "no media retrieval for provider gone"


# --- WAHA: its media URLs name the WAHA server as it sees itself ------------------------------


def waha_event(url: str) -> dict[str, Any]:
    return event("wa", "waha", {"id": "false_1@c.us_A", "hasMedia": True, "media": {"url": url}})


@pytest.mark.parametrize("loopback", ["localhost:3000", "127.0.0.1:3000", "[::1]:3000", "0.0.0.0:3000"])
def test_waha_file_url_on_its_own_address_is_fetched_from_api_url(
    host: StandIn, tmp_path: Path, loopback: str
) -> None:
    host.routes["/api/files/default/false_1@c.us_A.jpeg"] = Route(
        body=FILE, content_type="image/jpeg", headers={"X-Api-Key": "waha-key"}
    )
    settings = settings_for(
        tmp_path, wa={"provider": "waha", "secret": "s", "api_key": "waha-key", "api_url": host.url()}
    )
    journal = MemoryJournal([waha_event(f"http://{loopback}/api/files/default/false_1@c.us_A.jpeg")])
    run(settings, journal, None)
    assert journal.done[1]["media"]["error"] is None
    assert host.paths_hit() == ["/api/files/default/false_1@c.us_A.jpeg"]


def test_waha_own_address_without_api_url_says_what_to_set_in_the_log_and_the_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, wa={"provider": "waha", "secret": "s"})
    journal = MemoryJournal([waha_event("http://localhost:3000/api/files/default/x.jpeg")])
    with capture_logs() as logs:
        run(settings, journal, None)
    error = journal.done[1]["media"]["error"]
    assert error.startswith("host not allowed: localhost (set this source's api_url to the WAHA server")
    (hint,) = [line for line in logs if line["event"] == "waha_media_refused"]
    assert hint["source"] == "wa"
    assert "api_url" in hint["hint"]
    assert "allow_hosts" in hint["hint"]


def test_waha_on_a_private_host_not_listed_says_to_list_it(tmp_path: Path) -> None:
    # api_url trusts the name, but its address is private: it must be listed exactly.
    settings = settings_for(
        tmp_path, wa={"provider": "waha", "secret": "s", "api_url": "http://localhost:3000"}
    )
    settings = settings.model_copy(update={"media": settings.media.model_copy(update={"allow_hosts": []})})
    journal = MemoryJournal([waha_event("http://localhost:3000/api/files/default/x.jpeg")])
    run(settings, journal, None)
    error = journal.done[1]["media"]["error"]
    assert error.startswith("private address refused: localhost")
    assert "list the WAHA host in [media] allow_hosts" in error


# --- media settled upstream -------------------------------------------------------------------


def test_media_stored_upstream_is_handed_back_unchanged(tmp_path: Path) -> None:
    stored = {
        **new_media("image/jpeg", "a.jpg", 10, "ab"),
        "stored": {"bucket": None, "key": "k", "url": "file:///k"},
    }
    failed = {**new_media("image/jpeg"), "error": "HTTP 404 from mmg.whatsapp.net"}
    events = [
        {**event("relay", "standard", {"id": "x"}), "media": stored},
        {**event("relay", "standard", {"id": "y"}), "media": failed},
    ]
    journal = MemoryJournal(events)
    metrics = run(settings_for(tmp_path, relay={"provider": "standard", "secret": "s"}), journal, None)
    assert journal.done[1]["media"] == stored
    assert journal.done[2]["media"] == failed
    assert metrics.downloads("relay", "failed") == 0
