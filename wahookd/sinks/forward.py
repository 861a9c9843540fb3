"""The `forward` sink: POST each event as JSON to a URL, signed with Standard Webhooks headers.

Every request carries ``webhook-id`` (the event id, so the receiver can dedupe a retry),
``webhook-timestamp`` (Unix seconds at send time) and, when a secret is set,
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` as the
Standard Webhooks spec defines it. A ``whsec_`` secret is base64 after the prefix (the
spec's format); any other secret is used as raw UTF-8 bytes.

Outcomes: 2xx is delivered. Timeouts, connection errors, 5xx, 408 and 429 raise
`DeliveryError` (retried by wahookd, after ``Retry-After`` when the target sends one);
any other 3xx/4xx raises `PermanentDeliveryError` (straight to dead letters: retrying a
410 or a 400 cannot help). Redirects are not followed, since a POST redirected to a GET
would silently drop the event.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.events import dump_json
from wahookd.hookspecs import SinkContext, SinkSpec, hookimpl
from wahookd.settings import Secret, resolve_secret_files

# Statuses worth retrying besides 5xx: the target said "later" (RFC 9110 §15.5.9, RFC 6585 §4).
RETRYABLE_4XX = frozenset({408, 429})
USER_AGENT = "wahookd-forward/1"
# Idle keep-alive connections kept per sink: one per delivery in flight is all it reuses
# (`concurrency`, at most 256); past this, a finished request closes its connection.
MAX_IDLE = 256
MAX_RESPONSE_HEADER_BYTES = 64 * 1024
MAX_RESPONSE_BODY_BYTES = 1024 * 1024  # read (and dropped) to keep the connection usable


class ForwardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="where to POST each event (http:// or https://)")
    # Required: SPEC §6 has forward sign what it sends, so a receiver can always verify.
    secret: Secret = Field(description='Standard Webhooks signing secret ("whsec_<base64>" or raw text)')
    timeout: float = Field(10.0, gt=0, le=600, description="seconds for one request, all in")
    connect_timeout: float | None = Field(
        None, gt=0, description="seconds to connect; default the smaller of timeout and 5"
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description='extra request headers (e.g. Authorization); headers_file: "Name: value" lines',
    )
    verify_tls: bool = Field(True, description="check the target's TLS certificate")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return read_headers_file(resolve_secret_files(data, ("secret",), info), info)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("secret")
    @classmethod
    def _decodable_secret(cls, secret: SecretStr) -> SecretStr:
        signing_key(secret.get_secret_value())  # a bad whsec_ fails at config time
        return secret


def read_headers_file(data: Any, info: ValidationInfo) -> Any:
    """``headers_file``: request headers that carry credentials (``Authorization: Bearer ...``),
    one ``Name: value`` per line, kept out of the config file; merged over ``headers``."""
    if not isinstance(data, dict) or "headers_file" not in data:
        return data
    data = dict(data)
    text = resolve_secret_files({"headers_file": data.pop("headers_file")}, ("headers",), info)["headers"]
    headers = dict(data.get("headers") or {})
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f'headers_file: line {number} is not "Name: value"')
        headers[name.strip()] = value.strip()
    data["headers"] = headers
    return data


def signing_key(secret: str) -> bytes:
    """The HMAC key: base64 after ``whsec_`` (Standard Webhooks), else the raw bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one request."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(slots=True)
class Answer:
    """The target's answer: status code, reason, headers (names lowercased)."""

    code: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


class StaleConnection(Exception):
    """A kept-alive connection the target had closed: nothing of the request was answered."""


class KeepAliveClient:
    """HTTP/1.1 POSTs to one origin over kept-alive connections (asyncio streams).

    Tornado's `SimpleAsyncHTTPClient` opens a connection per request: measured on this
    machine (bench/sinks.py), the forward sink spent 350-800 us of CPU per event and
    delivered 470-2,300 events/s depending on `concurrency`; reusing connections is most
    of what brings it past the intake's rate (docs/performance.md, "Sinks").
    A connection found closed when reused is replaced and the request sent again once:
    the target had answered nothing, and it dedupes by ``webhook-id`` anyway.
    """

    def __init__(self, url: str, *, verify_tls: bool, connect_timeout: float, timeout: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        default_port = parts.port is None or parts.port == (443 if self.https else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.tls: ssl.SSLContext | None = None
        if self.https:
            self.tls = ssl.create_default_context()
            if not verify_tls:
                self.tls.check_hostname = False
                self.tls.verify_mode = ssl.CERT_NONE
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()

    async def post(self, headers: dict[str, str], body: bytes) -> Answer:
        head = [f"POST {self.target} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with asyncio.timeout(self.timeout):
            while self._idle:
                reader, writer = self._idle.pop()
                try:
                    return await self._exchange(reader, writer, request)
                except StaleConnection:
                    continue
            reader, writer = await self._connect()
            try:
                return await self._exchange(reader, writer, request)
            except StaleConnection:
                raise ConnectionResetError("the target closed the connection without an answer") from None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(self.connect_timeout):
            return await asyncio.open_connection(
                self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
            )

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> Answer:
        keep = False
        try:
            try:
                writer.write(request)
                await writer.drain()
                status = await reader.readline()
            except (ConnectionError, OSError) as exc:
                raise StaleConnection from exc
            if not status:
                raise StaleConnection
            answer, keep = await self._read_answer(status, reader)
            return answer
        finally:
            if keep and len(self._idle) < MAX_IDLE:
                self._idle.append((reader, writer))
            else:
                writer.close()

    @staticmethod
    async def _read_answer(status: bytes, reader: asyncio.StreamReader) -> tuple[Answer, bool]:
        """The answer and whether the connection can carry another request."""
        version, _, rest = status.decode("latin-1").rstrip("\r\n").partition(" ")
        code_text, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not code_text.isdigit():
            raise ConnectionError(f"not an HTTP answer: {status[:80]!r}")
        headers: dict[str, str] = {}
        size = 0
        while True:
            line = await reader.readline()
            size += len(line)
            if size > MAX_RESPONSE_HEADER_BYTES:
                raise ConnectionError("the answer's headers are too large")
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        code = int(code_text)
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if code in (204, 304) or 100 <= code < 200:
            return Answer(code, reason, headers), keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while True:
                chunk_size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
                total += chunk_size
                if total > MAX_RESPONSE_BODY_BYTES:
                    return Answer(code, reason, headers), False
                if chunk_size:
                    await reader.readexactly(chunk_size + 2)  # the data and its CRLF
                    continue
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > MAX_RESPONSE_BODY_BYTES:
                return Answer(code, reason, headers), False
            await reader.readexactly(length)
        else:  # the body runs to the connection's end
            return Answer(code, reason, headers), False
        return Answer(code, reason, headers), keep

    def close(self) -> None:
        while self._idle:
            _reader, writer = self._idle.pop()
            writer.close()


class ForwardSink:
    """POSTs events; safe for concurrent `deliver` calls (one pool of kept-alive connections)."""

    def __init__(self, options: ForwardOptions, context: SinkContext) -> None:
        self.options = options
        self.log = context.log
        self.key = signing_key(options.secret.get_secret_value())
        self.connect_timeout = options.connect_timeout or min(options.timeout, 5.0)
        self._client: KeepAliveClient | None = None

    async def start(self) -> None:
        self._http()

    def _http(self) -> KeepAliveClient:
        if self._client is None:
            self._client = KeepAliveClient(
                self.options.url,
                verify_tls=self.options.verify_tls,
                connect_timeout=self.connect_timeout,
                timeout=self.options.timeout,
            )
        return self._client

    async def deliver(self, event: dict[str, Any]) -> None:
        body = dump_json(event)  # numbers as the provider sent them (`ExactFloat`)
        headers = self.headers(str(event["id"]), int(time.time()), body)
        try:
            answer = await self._http().post(headers, body)
        except TimeoutError:
            raise DeliveryError(f"timeout after {self.options.timeout:g} s") from None
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:  # refused, reset, DNS, TLS
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        self.check(answer)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        headers = {
            "User-Agent": USER_AGENT,
            **self.options.headers,
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, msg_id, timestamp, body)
        return headers

    @staticmethod
    def check(answer: Answer) -> None:
        """Return for 2xx; raise the error that says whether retrying can help."""
        code = answer.code
        if 200 <= code < 300:
            return
        reason = f"HTTP {code} {answer.reason or ''}".strip()
        if code >= 500 or code in RETRYABLE_4XX:
            retry_after = parse_retry_after(answer.headers.get("retry-after"))
            raise DeliveryError(reason, retry_after=retry_after)
        raise PermanentDeliveryError(reason)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(
            "forward",
            ForwardOptions,
            ForwardSink,
            "POST events as JSON to a URL, signed with Standard Webhooks headers",
        )
    ]
