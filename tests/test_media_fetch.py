"""Guarded streaming downloads: allowed hosts, private addresses, redirects, caps, errors."""

from __future__ import annotations

import asyncio
import hashlib
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_support import Route, StandIn, free_port, standin

from wahookd.media.errors import MediaError, MediaRefused
from wahookd.media.fetch import Download, Fetcher
from wahookd.media.guard import AllowList, HostPolicy
from wahookd.providers.builtin import wahookd_register_providers

BODY = b"\x89PNG fake image bytes" * 100
# Each provider's own media hosts, as the provider declares them (`Provider.media_hosts`).
HOSTS = {provider.name: provider.media_hosts for provider in wahookd_register_providers()}


@pytest.fixture
def host() -> Iterator[StandIn]:
    with standin() as server:
        server.routes["/file"] = Route(body=BODY, content_type="image/png")
        yield server


def download(
    url: str,
    tmp_path: Path,
    allow: list[str],
    provider: str = "waha",
    api_url: str | None = None,
    headers: dict[str, str] | None = None,
    max_bytes: int = 1024 * 1024,
    timeout: float = 5.0,
) -> Download:
    async def go() -> Download:
        fetcher = Fetcher(allow, max_bytes, timeout)
        try:
            policy = fetcher.policy(HOSTS[provider], api_url)
            return await fetcher.download(url, policy, headers or {}, tmp_path / "body")
        finally:
            fetcher.close()

    return asyncio.run(go())


# --- which URLs may be fetched at all ----------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "url"),
    [
        ("meta", "https://graph.facebook.com/v21.0/123"),
        ("meta", "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"),
        ("meta", "https://scontent.xx.fbcdn.net/v/t1/abc"),
        ("wasender", "https://mmg.whatsapp.net/o1/v/t62/abc"),
        ("wasender", "https://media-fra3-1.cdn.whatsapp.net/v/abc"),
        ("twilio", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"),
        ("twilio", "https://s3-external-1.twiliocdn.com/abc"),
    ],
)
def test_each_provider_may_fetch_from_its_own_media_hosts(provider: str, url: str) -> None:
    HostPolicy.for_source(HOSTS[provider], None, AllowList()).check_url(url)


@pytest.mark.parametrize(
    ("provider", "url", "reason"),
    [
        ("meta", "https://evil.example/x", "host not allowed: evil.example"),
        ("meta", "https://fbcdn.net/x", "host not allowed: fbcdn.net"),
        ("meta", "https://graph.facebook.com.evil.example/x", "host not allowed"),
        ("wasender", "https://graph.facebook.com/x", "host not allowed"),
        ("meta", "http://graph.facebook.com/v21.0/1", "plain http refused"),
        ("meta", "https://user:pw@graph.facebook.com/1", "carries credentials"),
        ("meta", "file:///etc/passwd", "not http"),
        ("waha", "https://mmg.whatsapp.net/x", "host not allowed"),
        ("wasender", "https://mmg.whatsapp.net:bad/x", "malformed"),
    ],
)
def test_urls_outside_the_providers_hosts_are_refused(provider: str, url: str, reason: str) -> None:
    with pytest.raises(MediaRefused, match=reason):
        HostPolicy.for_source(HOSTS[provider], None, AllowList()).check_url(url)


def test_allow_hosts_adds_names_wildcards_and_networks() -> None:
    allow = AllowList.parse(["files.example.com", "*.cdn.example.net", "192.0.2.0/24"])
    policy = HostPolicy.for_source(HOSTS["meta"], None, allow)
    policy.check_url("http://files.example.com/a")
    policy.check_url("https://x.cdn.example.net/a")
    policy.check_url("http://192.0.2.7/a")
    with pytest.raises(MediaRefused):
        policy.check_url("https://cdn.example.net/a")
    with pytest.raises(MediaRefused):
        policy.check_url("http://198.51.100.1/a")


def test_download_streams_the_body_to_a_file_with_its_hash(host: StandIn, tmp_path: Path) -> None:
    result = download(host.url("/file"), tmp_path, ["127.0.0.1"])
    assert result.path.read_bytes() == BODY
    assert result.size == len(BODY)
    assert result.sha256 == hashlib.sha256(BODY).hexdigest()
    assert result.content_type == "image/png"


def test_url_outside_allow_hosts_is_refused_without_a_request(host: StandIn, tmp_path: Path) -> None:
    with pytest.raises(MediaRefused, match=re.escape("host not allowed: 127.0.0.1")):
        download(host.url("/file"), tmp_path, [], provider="meta")
    assert host.hits == []


def test_allowed_host_resolving_to_loopback_is_refused(host: StandIn, tmp_path: Path) -> None:
    # WAHA's configured API host is allowed as a host, but not to reach a private address.
    api_url = host.url(host="localhost")
    with pytest.raises(MediaRefused, match="private address refused: localhost"):
        download(host.url("/file", host="localhost"), tmp_path, [], api_url=api_url)
    assert host.hits == []


def test_private_ip_is_refused_before_connecting(tmp_path: Path) -> None:
    api_url = "http://10.255.255.1:3000"
    with pytest.raises(MediaRefused, match=re.escape("private address refused: 10.255.255.1")):
        download(api_url + "/api/files/x.jpg", tmp_path, [], api_url=api_url, timeout=30)


def test_listed_network_allows_a_private_address(host: StandIn, tmp_path: Path) -> None:
    assert download(host.url("/file"), tmp_path, ["127.0.0.0/8"]).size == len(BODY)


def test_redirect_to_a_private_address_is_refused(host: StandIn, tmp_path: Path) -> None:
    # "localhost" is listed by name (may be private); 127.0.0.1 is only WAHA's API host.
    host.routes["/start"] = Route(redirect=host.url("/file"))
    with pytest.raises(MediaRefused, match=re.escape("private address refused: 127.0.0.1")):
        download(host.url("/start", host="localhost"), tmp_path, ["localhost"], api_url=host.url())
    assert host.paths_hit() == ["/start"]


def test_redirect_to_an_unlisted_10_net_address_is_refused(host: StandIn, tmp_path: Path) -> None:
    host.routes["/start"] = Route(redirect="http://10.1.2.3/file")
    with pytest.raises(MediaRefused, match=re.escape("host not allowed: 10.1.2.3")):
        download(host.url("/start"), tmp_path, ["127.0.0.1"])


def test_redirect_to_the_metadata_address_is_refused(host: StandIn, tmp_path: Path) -> None:
    host.routes["/start"] = Route(redirect="http://169.254.169.254/latest/meta-data/")
    with pytest.raises(MediaRefused, match=re.escape("host not allowed: 169.254.169.254")):
        download(host.url("/start"), tmp_path, ["127.0.0.1", "*.example.com"])


def test_relative_redirects_are_followed_with_credentials(host: StandIn, tmp_path: Path) -> None:
    host.routes["/start"] = Route(redirect="/private", headers={"X-Api-Key": "k"})
    host.routes["/private"] = Route(body=BODY, headers={"X-Api-Key": "k"})
    result = download(host.url("/start"), tmp_path, ["127.0.0.1"], headers={"X-Api-Key": "k"})
    assert result.path.read_bytes() == BODY


def test_credentials_never_follow_a_redirect_to_another_host(host: StandIn, tmp_path: Path) -> None:
    # Twilio redirects to a pre-signed CDN URL, which must not see the account's token.
    host.routes["/media"] = Route(
        redirect=host.url("/cdn", host="localhost"), headers={"Authorization": "Basic abc"}
    )
    host.routes["/cdn"] = Route(body=BODY, forbid=("Authorization",))
    result = download(
        host.url("/media"), tmp_path, ["127.0.0.1", "localhost"], headers={"Authorization": "Basic abc"}
    )
    assert result.path.read_bytes() == BODY
    assert "Authorization" not in host.hits[-1][1]


def test_endless_redirects_are_refused(host: StandIn, tmp_path: Path) -> None:
    host.routes["/loop"] = Route(redirect="/loop")
    with pytest.raises(MediaRefused, match="redirects"):
        download(host.url("/loop"), tmp_path, ["127.0.0.1"])


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_body_over_the_cap_is_refused(host: StandIn, tmp_path: Path, length: bool) -> None:
    host.routes["/big"] = Route(body=lambda: iter([b"x" * 4096] * 64), length=length)
    with pytest.raises(MediaRefused, match=r"body over max_bytes \(100000\)"):
        download(host.url("/big"), tmp_path, ["127.0.0.1"], max_bytes=100_000)


def test_body_exactly_at_the_cap_is_kept(host: StandIn, tmp_path: Path) -> None:
    host.routes["/exact"] = Route(body=b"y" * 5000)
    assert download(host.url("/exact"), tmp_path, ["127.0.0.1"], max_bytes=5000).size == 5000


@pytest.mark.parametrize(
    ("status", "retry"), [(503, True), (500, True), (429, True), (404, False), (403, False)]
)
def test_http_errors_say_whether_a_retry_can_help(
    host: StandIn, tmp_path: Path, status: int, retry: bool
) -> None:
    host.routes["/status"] = Route(body=b"nope", status=status)
    with pytest.raises(MediaError, match=f"HTTP {status} from 127.0.0.1") as info:
        download(host.url("/status"), tmp_path, ["127.0.0.1"])
    assert info.value.retry is retry


def test_wrong_credentials_get_401_and_no_retry(host: StandIn, tmp_path: Path) -> None:
    host.routes["/private"] = Route(body=BODY, headers={"X-Api-Key": "right"})
    with pytest.raises(MediaError, match="HTTP 401") as info:
        download(host.url("/private"), tmp_path, ["127.0.0.1"], headers={"X-Api-Key": "wrong"})
    assert not info.value.retry
    assert "wrong" not in info.value.reason


def test_host_down_is_a_retryable_connection_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=re.escape("connection failed: 127.0.0.1")) as info:
        download(f"http://127.0.0.1:{free_port()}/file", tmp_path, ["127.0.0.1"])
    assert info.value.retry


def test_slow_host_times_out_and_may_be_retried(host: StandIn, tmp_path: Path) -> None:
    host.routes["/slow"] = Route(body=BODY, delay=2.0)
    with pytest.raises(MediaError, match=re.escape("timeout from 127.0.0.1")) as info:
        download(host.url("/slow"), tmp_path, ["127.0.0.1"], timeout=0.3)
    assert info.value.retry


def test_memory_stays_flat_for_a_100_mb_download(host: StandIn, tmp_path: Path) -> None:
    block = b"z" * (1024 * 1024)
    host.routes["/video"] = Route(body=lambda: iter([block] * 100), length=False)
    tracemalloc.start()
    try:
        result = download(host.url("/video"), tmp_path, ["127.0.0.1"], max_bytes=200 * 1024**2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == 100 * 1024 * 1024
    assert result.path.stat().st_size == result.size
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
