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

import base64
import binascii
import hashlib
import hmac
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.events import dump_json
from wahookd.hookspecs import SinkContext, SinkSpec, hookimpl
from wahookd.settings import Secret, resolve_secret_files

# Statuses worth retrying besides 5xx: the target said "later" (RFC 9110 §15.5.9, RFC 6585 §4).
RETRYABLE_4XX = frozenset({408, 429})
# Requests in flight at once per sink; wahookd's own `concurrency` (at most 256) is the real
# bound, so this only has to be large enough never to queue behind it.
MAX_CLIENTS = 256
USER_AGENT = "wahookd-forward/1"


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


class ForwardSink:
    """POSTs events; safe for concurrent `deliver` calls (one shared HTTP client)."""

    def __init__(self, options: ForwardOptions, context: SinkContext) -> None:
        self.options = options
        self.log = context.log
        self.key = signing_key(options.secret.get_secret_value())
        self.connect_timeout = options.connect_timeout or min(options.timeout, 5.0)
        self._client: AsyncHTTPClient | None = None

    async def start(self) -> None:
        self._http()

    def _http(self) -> AsyncHTTPClient:
        # Built lazily on the running loop: an AsyncHTTPClient belongs to one IOLoop, and its
        # own instance (not the shared per-loop one) so closing this sink closes only its own.
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True, max_clients=MAX_CLIENTS)
        return self._client

    async def deliver(self, event: dict[str, Any]) -> None:
        body = dump_json(event)  # numbers as the provider sent them (`ExactFloat`)
        request = HTTPRequest(
            self.options.url,
            method="POST",
            body=body,
            headers=self.headers(str(event["id"]), int(time.time()), body),
            connect_timeout=self.connect_timeout,
            request_timeout=self.options.timeout,
            follow_redirects=False,
            validate_cert=self.options.verify_tls,
            user_agent=USER_AGENT,
        )
        try:
            response = await self._http().fetch(request, raise_error=False)
        except HTTPClientError as exc:  # 599: timeout or the connection dropped
            raise DeliveryError(f"{exc.message or exc}") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        self.check(response)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        headers = {
            **self.options.headers,
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, msg_id, timestamp, body)
        return headers

    @staticmethod
    def check(response: HTTPResponse) -> None:
        """Return for 2xx; raise the error that says whether retrying can help."""
        code = response.code
        if 200 <= code < 300:
            return
        reason = f"HTTP {code} {response.reason or ''}".strip()
        if code == 599:  # Tornado's code for "no HTTP answer": timeout, reset
            raise DeliveryError(str(response.error or reason))
        if code >= 500 or code in RETRYABLE_4XX:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
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
