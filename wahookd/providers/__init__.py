"""Provider interface: one module per WhatsApp API provider.

A provider owns everything provider-specific: it verifies one HTTP request, turns it into
normalized `Event`s, names its media hosts (`media_hosts`) and fetches an event's media
(`fetch_media`, through the shared steps in `wahookd.media.retrieval`). Parsing never touches
the journal, the network or the clock beyond what its scheme needs (Standard Webhooks'
tolerance); only `fetch_media` goes out, and only through the guarded fetcher it is given.
Third parties add providers through the `wahookd_register_providers` hook, and get verification,
parsing and media exactly as a built-in provider does.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from wahookd.events import Event
    from wahookd.media.retrieval import MediaFetch, Retrieved
    from wahookd.settings import SourceSettings


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """What a provider sees of one HTTP request."""

    method: str
    url: str  # the public URL the provider called (rebuilt from trusted X-Forwarded-*)
    headers: Mapping[str, str]  # case-insensitive (Tornado's HTTPHeaders)
    body: bytes
    content_type: str = ""  # lower-cased, without parameters
    query: Mapping[str, list[bytes]] = field(default_factory=dict)  # as Tornado parses it
    client_ip: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """A provider-specific answer body (Twilio expects TwiML)."""

    content_type: str
    body: bytes


class Provider:
    """Base class: override `verify` and `parse`; the rest has sensible defaults. A provider
    whose events carry `media` also sets `media_hosts` and overrides `fetch_media`."""

    name: ClassVar[str] = ""
    # The provider's own media hosts (from its API docs), where media URLs and lookups may go;
    # `*.example.com` matches any subdomain. The media stage adds the source's `api_url` host
    # and `[media] allow_hosts`; anything else is refused (the SSRF guard, `wahookd.media.guard`).
    media_hosts: ClassVar[tuple[str, ...]] = ()
    # True when the signature covers the URL (Twilio): only then is the public URL rebuilt.
    signs_url: ClassVar[bool] = False
    # Content types this provider's webhooks use; anything else is 415.
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        """True when the request is signed with one of `source.secret_values()`."""
        raise NotImplementedError

    def parse(self, request: InboundRequest, source_name: str, source: SourceSettings) -> list[Event]:
        """Split the body into events. Raise `wahookd.errors.ParseError` when it is not valid."""
        raise NotImplementedError

    def handshake(self, request: InboundRequest, source: SourceSettings) -> str | None:
        """Answer a GET verification handshake: the challenge to echo, or None (403)."""
        return None

    def session_up(self, event: Event) -> bool | None:
        """For a `system` event: True when it says the provider's WhatsApp session is
        connected, False when it says it is not, None when it says nothing about it. Feeds
        `wahookd_session_up{source}`."""
        return None

    async def fetch_media(self, event: dict[str, Any], fetch: MediaFetch) -> Retrieved:
        """Download the file `event["media"]` describes into `fetch`'s scratch directory.

        `event` is the journaled event (`raw` is what `parse` put there); `fetch` carries the
        source's settings (credentials such as `access_token`, `api_key`, `api_url`), the host
        policy and the guarded fetcher. Use the functions of `wahookd.media.retrieval`
        (`download`, `get_json`, `download_encrypted`, `save_base64`) and raise
        `wahookd.media.errors.MediaError` (`retry=True` when another attempt can help). Called by
        the media stage, off the request path, once per attempt. Example::

            async def fetch_media(self, event, fetch):
                url = event["raw"]["file_url"]
                token = fetch.source.api_key.get_secret_value()
                return await retrieval.download(fetch, url, {"Authorization": f"Bearer {token}"})
        """
        from wahookd.media.errors import MediaError

        raise MediaError(f"no media retrieval for provider {self.name}")

    @property
    def has_handshake(self) -> bool:
        """Whether `GET /webhooks/{source}` means anything for this provider (else 405)."""
        return type(self).handshake is not Provider.handshake

    def reply(self, accepted: int, duplicates: int) -> Reply | None:
        """The body for a 200; None means the default JSON `{"accepted", "duplicates"}`."""
        return None

    def sample(self, kind: str) -> tuple[bytes, str]:
        """A sample webhook body of `kind` (text, image, status) and its content type."""
        raise NotImplementedError

    def sign(self, body: bytes, url: str, source: SourceSettings) -> dict[str, str]:
        """Headers that make `body` posted to `url` verify for `source` (used by send-test)."""
        raise NotImplementedError


def constant_time_in(candidate: bytes, secrets: list[bytes]) -> bool:
    """Compare against every secret without stopping at the first match."""
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(candidate, secret)
    return found


def get_path(data: Any, *keys: str | int) -> Any:
    """data[k1][k2]... or None where any step is missing or of the wrong type."""
    for key in keys:
        if isinstance(key, int):
            if not isinstance(data, list) or not -len(data) <= key < len(data):
                return None
        elif not isinstance(data, dict):
            return None
        data = data[key] if isinstance(key, int) else data.get(key)
    return data
