"""The SSRF guard: which hosts a media download may reach, and which addresses.

A payload names the URL to fetch, so a forged or hostile payload could point wahookd at
its own network (cloud metadata at 169.254.169.254, an admin port on 127.0.0.1). Two
checks stop that, on every hop of a redirect chain:

1. `HostPolicy.check_url`: the host must be one of the provider's own media hosts
   (`Provider.media_hosts`, from its API docs), the
   source's configured ``api_url`` host, or listed in ``media.allow_hosts``. Plain ``http``
   is allowed only for the configured and listed hosts (a provider's public hosts must be
   reached over TLS, since credentials travel with the request).
2. `GuardedResolver`: the address the connection will actually use must be public.
   A private, loopback, link-local, reserved or multicast address is refused unless the
   host name, the IP itself or a network containing it is listed in ``media.allow_hosts``.
   The check sits in the resolver the HTTP client connects with, so a DNS answer cannot
   change between the check and the connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tornado.netutil import DefaultLoopResolver, Resolver

from wahookd.media.errors import MediaRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def host_matches(host: str, pattern: str) -> bool:
    """Exact name, or ``*.example.com`` matching any subdomain (not the apex)."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class AllowList:
    """``media.allow_hosts`` parsed: host names (``*.`` wildcards allowed) and IP networks."""

    names: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        names: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                names.append(normalize_host(text))
        return cls(tuple(names), tuple(networks))

    def lists_host(self, host: str) -> bool:
        """The host is named here (wildcards count) or is an IP inside a listed network."""
        address = parse_ip(host)
        if address is not None:
            return self.contains(address)
        return any(host_matches(host, name) for name in self.names)

    def lists_exactly(self, host: str) -> bool:
        """The exact host name or IP is listed: only then may it resolve to a private address."""
        address = parse_ip(host)
        if address is not None:
            return self.contains(address)
        return host in self.names

    def contains(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (IPv4-mapped IPv6 judged by its IPv4 part)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The hosts one retrieval may reach: the provider's, the configured ones, the listed ones."""

    provider_hosts: tuple[str, ...]
    configured_hosts: tuple[str, ...]
    allow: AllowList

    @classmethod
    def for_source(cls, provider_hosts: Iterable[str], api_url: str | None, allow: AllowList) -> HostPolicy:
        """The policy of one source: its provider's own hosts (`Provider.media_hosts`), the
        host of its ``api_url`` and the ``[media] allow_hosts`` list."""
        configured: tuple[str, ...] = ()
        if api_url:
            try:
                host = urlsplit(api_url).hostname
            except ValueError:
                host = None
            configured = (normalize_host(host),) if host else ()
        hosts = tuple(normalize_host(host) for host in provider_hosts)
        return cls(hosts, configured, allow)

    def allows_host(self, host: str) -> bool:
        """Whether `check_url` would let a URL on `host` through (scheme aside)."""
        host = normalize_host(host)
        if host in self.configured_hosts or self.allow.lists_host(host):
            return True
        return any(host_matches(host, pattern) for pattern in self.provider_hosts)

    def check_url(self, url: str) -> str:
        """The URL's host when the URL may be fetched; else `MediaRefused`."""
        try:
            parts = urlsplit(url)
            host = normalize_host(parts.hostname or "")
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise MediaRefused("malformed media URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise MediaRefused("media URL is not http(s)")
        if parts.username is not None or parts.password is not None:
            raise MediaRefused("media URL carries credentials")
        trusted = host in self.configured_hosts or self.allow.lists_host(host)
        if not trusted and not any(host_matches(host, p) for p in self.provider_hosts):
            raise MediaRefused(f"host not allowed: {host}")
        if parts.scheme == "http" and not trusted:
            raise MediaRefused(f"plain http refused for {host}")
        return host


class GuardedResolver(Resolver):
    """Resolves like the default resolver, then refuses non-public addresses (module doc)."""

    def initialize(self, allow: AllowList, resolver: Resolver | None = None) -> None:  # type: ignore[override]
        self.allow = allow
        self.inner = resolver or DefaultLoopResolver()

    def close(self) -> None:
        self.inner.close()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        host = normalize_host(host)
        answers = await self.inner.resolve(host, port, family)
        if self.allow.lists_exactly(host):
            return answers
        for _family, sockaddr in answers:
            address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            if not is_public(address) and not self.allow.contains(address):
                shown = host if host == str(address) else f"{host} -> {address}"
                raise MediaRefused(f"private address refused: {shown}")
        return answers
