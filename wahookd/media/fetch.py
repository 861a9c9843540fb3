"""Streaming HTTP downloads behind the SSRF guard.

Tornado's own client (already a dependency, so nothing new to trust) with
``follow_redirects=False``: redirects are followed here, one hop at a time, so the guard
sees every host (`HostPolicy.check_url`) and every address (`GuardedResolver`).
Credentials (``Authorization``, ``X-Api-Key``) never follow a redirect to another host:
Twilio, for one, redirects to a pre-signed CDN URL that must not get the account token.

The body streams to a temporary file in 1 MiB batches written from a worker thread; the
streaming callback is a coroutine, so Tornado reads the next chunk only once the batch is
on disk (flow control: memory stays flat for a 100 MB video). ``Content-Length`` over
``media.max_bytes`` is refused before the body is read; a body that grows past it is cut.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPInputError
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient

from wahookd.media.errors import MediaError, MediaRefused
from wahookd.media.guard import AllowList, GuardedResolver, HostPolicy, normalize_host

MAX_REDIRECTS = 5
BATCH = 1024 * 1024
JSON_LIMIT = 1024 * 1024  # an API lookup answer (Meta's media URL) is a few hundred bytes
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Worth another try later; every other 4xx means the request itself is wrong.
RETRY_CODES = frozenset({408, 425, 429})
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "apikey")


@dataclass(frozen=True, slots=True)
class Download:
    """A response body on disk, with what the stage needs to know about it."""

    path: Path
    size: int
    sha256: str  # hex
    content_type: str | None


class _BodyWriter:
    """Collects one response body: counts, hashes and batches it to a file or to memory."""

    def __init__(self, out: BinaryIO | None, cap: int, reason: str) -> None:
        self.out = out
        self.cap = cap
        self.reason = reason
        self.size = 0
        self.digest = hashlib.sha256()
        self.pending = bytearray()
        self.memory = bytearray()
        self.refused: str | None = None

    def header(self, line: str) -> None:
        name, _, value = line.partition(":")
        value = value.strip()
        if name.strip().lower() == "content-length" and value.isdigit() and int(value) > self.cap:
            self.refused = self.reason

    async def chunk(self, data: bytes) -> None:
        if self.refused is None and self.size + len(data) > self.cap:
            self.refused = self.reason
        if self.refused is not None:
            # HTTPInputError is the one exception Tornado lets out of a delegate unlogged;
            # it ends the connection, and `Fetcher` reports `self.refused` instead.
            raise HTTPInputError(self.refused)
        self.size += len(data)
        self.digest.update(data)
        if self.out is None:
            self.memory += data
            return
        self.pending += data
        if len(self.pending) >= BATCH:
            await self.flush()

    async def flush(self) -> None:
        if self.out is not None and self.pending:
            batch, self.pending = bytes(self.pending), bytearray()
            await asyncio.to_thread(self.out.write, batch)

    def reset(self) -> None:
        """Forget a redirect's or an error page's body."""
        self.size = 0
        self.digest = hashlib.sha256()
        self.pending.clear()
        self.memory.clear()
        self.refused = None


class Fetcher:
    """Guarded GETs: `download` to a file, `get_json` for small API answers."""

    def __init__(self, allow_hosts: list[str], max_bytes: int, timeout: float, max_clients: int = 10) -> None:
        self.allow = AllowList.parse(allow_hosts)
        self.max_bytes = max_bytes
        self.too_big = f"body over max_bytes ({max_bytes})"
        self.timeout = timeout
        self._client = SimpleAsyncHTTPClient(
            force_instance=True,
            resolver=GuardedResolver(allow=self.allow),
            max_clients=max_clients,
            # Tornado's own limit would fire first and hide why the body was cut; the cap is
            # enforced by `_BodyWriter`, which sees every piece (Tornado reads in 64 KiB reads).
            max_body_size=1 << 62,
        )

    def close(self) -> None:
        self._client.close()
        self._client.resolver.close()

    def policy(self, provider_hosts: Iterable[str], api_url: str | None) -> HostPolicy:
        """The hosts a source may fetch from: its provider's, its ``api_url``'s, the listed ones."""
        return HostPolicy.for_source(provider_hosts, api_url, self.allow)

    async def download(
        self,
        url: str,
        policy: HostPolicy,
        headers: dict[str, str],
        dest: Path,
        overhead: int = 0,
    ) -> Download:
        """GET `url` (following guarded redirects) into `dest`.

        `overhead`: bytes the body may carry beyond the cap on its content (encryption).
        """
        out = await asyncio.to_thread(dest.open, "wb")
        try:
            writer = _BodyWriter(out, self.max_bytes + overhead, self.too_big)
            response = await self._follow(url, policy, headers, writer)
            await writer.flush()
        finally:
            await asyncio.to_thread(out.close)
        content_type = response.headers.get("Content-Type")
        return Download(dest, writer.size, writer.digest.hexdigest(), content_type)

    async def get_json(self, url: str, policy: HostPolicy, headers: dict[str, str]) -> Any:
        """GET a small JSON document (an API lookup)."""
        writer = _BodyWriter(None, JSON_LIMIT, "API answer too large")
        await self._follow(url, policy, headers, writer)
        try:
            return json.loads(bytes(writer.memory))
        except ValueError:
            raise MediaError("API answer is not JSON", retry=True) from None

    async def _follow(
        self, url: str, policy: HostPolicy, headers: dict[str, str], writer: _BodyWriter
    ) -> HTTPResponse:
        headers = dict(headers)
        for _hop in range(MAX_REDIRECTS + 1):
            host = policy.check_url(url)
            if writer.out is not None:
                await asyncio.to_thread(_truncate, writer.out)
            writer.reset()
            response = await self._get(url, host, headers, writer)
            if response.code in REDIRECT_CODES:
                location = response.headers.get("Location")
                if not location:
                    raise MediaError(f"redirect without Location from {host}")
                next_url = urljoin(url, location)
                if _origin(next_url) != _origin(url):
                    headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
                url = next_url
                continue
            if response.code == 200:
                return response
            retry = response.code >= 500 or response.code in RETRY_CODES
            raise MediaError(f"HTTP {response.code} from {host}", retry=retry)
        raise MediaRefused(f"more than {MAX_REDIRECTS} redirects")

    async def _get(self, url: str, host: str, headers: dict[str, str], writer: _BodyWriter) -> HTTPResponse:
        request = HTTPRequest(
            url,
            method="GET",
            headers=headers,
            follow_redirects=False,
            decompress_response=False,  # store what the host serves; no gzip bombs
            connect_timeout=min(self.timeout, 10.0),
            request_timeout=self.timeout,
            header_callback=writer.header,
            streaming_callback=writer.chunk,
        )
        try:
            return await self._client.fetch(request, raise_error=False)
        except MediaError:
            raise
        except HTTPTimeoutError:
            raise MediaError(f"timeout from {host}", retry=True) from None
        except (HTTPClientError, HTTPInputError, StreamClosedError, OSError) as exc:
            if writer.refused is not None:
                raise MediaRefused(writer.refused) from None
            if isinstance(exc, HTTPInputError):
                raise MediaError(f"malformed HTTP answer from {host}", retry=True) from None
            raise MediaError(f"connection failed: {host}", retry=True) from None


def _truncate(out: BinaryIO) -> None:
    out.seek(0)
    out.truncate()


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: credentials stay within one origin."""
    try:
        parts = urlsplit(url)
        return parts.scheme, normalize_host(parts.hostname or ""), parts.port
    except ValueError:
        return "", "", None
