"""The retrieval steps every provider shares, as functions a provider's `fetch_media` calls.

A provider knows where its media is and which credentials fetch it (`Provider.media_hosts`,
`Provider.fetch_media`); this module knows how to get a plaintext file into the stage's
scratch directory safely:

- `download`: a guarded streaming GET (Twilio, WAHA, Meta's CDN URL, a plugin's host);
- `get_json`: a small guarded API lookup (Meta's Graph API media id -> URL);
- `download_encrypted`: WhatsApp's end-to-end encrypted file (Baileys payloads: Wasender,
  Evolution, WAHA NOWEB), downloaded, checked and decrypted with the message's `mediaKey`;
- `save_base64`: media a provider inlines in the payload (Evolution's ``webhook_base64``).

Each takes the `MediaFetch` the stage builds for one attempt: the source's settings, the
guarded `Fetcher`, the host policy made of the provider's hosts, the source's ``api_url``
host and ``[media] allow_hosts``, and the scratch directory. Every function returns a
`Retrieved` plaintext file in the scratch directory or raises `MediaError` (a failed
attempt leaves no file behind).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wahookd.media.decrypt import MAC_LENGTH, decrypt_file
from wahookd.media.errors import MediaError, MediaIntegrityError, MediaRefused
from wahookd.media.fetch import Fetcher
from wahookd.media.guard import HostPolicy

if TYPE_CHECKING:
    from wahookd.settings import SourceSettings

# The cap is on the plaintext; the encrypted file adds up to a padding block and the MAC.
ENCRYPTION_OVERHEAD = 16 + MAC_LENGTH


@dataclass(frozen=True, slots=True)
class Retrieved:
    """The plaintext media file, ready for the store."""

    path: Path
    sha256: str  # hex
    size: int
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class MediaFetch:
    """One retrieval attempt, as a provider's `fetch_media` sees it."""

    source: SourceSettings
    fetcher: Fetcher
    policy: HostPolicy
    workdir: Path

    @property
    def max_bytes(self) -> int:
        return self.fetcher.max_bytes

    def scratch(self, suffix: str) -> Path:
        """A fresh file name in the scratch directory (the store renames it into place)."""
        return self.workdir / f"{uuid.uuid4().hex}.{suffix}"

    def refuse_over_cap(self, declared: int | None) -> None:
        """Refuse before downloading when the payload declares a file over ``max_bytes``."""
        if declared is not None and declared > self.fetcher.max_bytes:
            raise MediaRefused(self.fetcher.too_big)


def secret_text(value: Any) -> str | None:
    """A `SecretStr` setting as text (None when unset)."""
    return value.get_secret_value() if value is not None else None


async def download(fetch: MediaFetch, url: str, headers: dict[str, str] | None = None) -> Retrieved:
    """GET `url` (redirects followed hop by hop behind the guard) into a scratch file."""
    path = fetch.scratch("part")
    try:
        result = await fetch.fetcher.download(url, fetch.policy, dict(headers or {}), path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Retrieved(path, result.sha256, result.size, result.content_type)


async def get_json(fetch: MediaFetch, url: str, headers: dict[str, str] | None = None) -> Any:
    """A small JSON document from an API the policy allows (at most 1 MiB)."""
    return await fetch.fetcher.get_json(url, fetch.policy, dict(headers or {}))


async def download_encrypted(
    fetch: MediaFetch,
    url: str,
    media_key: bytes,
    info: bytes,
    file_enc_sha256: bytes | None = None,
    file_sha256: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Retrieved:
    """WhatsApp's encrypted file at `url`, checked (``fileEncSha256``, the MAC, ``fileSha256``)
    and decrypted with `media_key` (HKDF `info` by media type; `wahookd.media.decrypt`)."""
    encrypted = fetch.scratch("enc")
    plaintext = fetch.scratch("part")
    try:
        await fetch.fetcher.download(
            url, fetch.policy, dict(headers or {}), encrypted, overhead=ENCRYPTION_OVERHEAD
        )
        digest, size = await asyncio.to_thread(
            decrypt_file, encrypted, plaintext, media_key, info, file_enc_sha256, file_sha256
        )
        if size > fetch.fetcher.max_bytes:
            raise MediaRefused(fetch.fetcher.too_big)
    except BaseException:
        plaintext.unlink(missing_ok=True)
        raise
    finally:
        encrypted.unlink(missing_ok=True)
    return Retrieved(plaintext, digest, size, None)


async def save_base64(fetch: MediaFetch, text: str) -> Retrieved:
    """Media inlined in the payload as base64, decoded into a scratch file."""
    return await asyncio.to_thread(_save_base64, text, fetch.scratch("part"), fetch.fetcher.max_bytes)


def _save_base64(text: str, path: Path, max_bytes: int) -> Retrieved:
    if len(text) * 3 // 4 > max_bytes + 3:
        raise MediaRefused(f"body over max_bytes ({max_bytes})")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaIntegrityError("inline base64 is malformed") from None
    if len(data) > max_bytes:
        raise MediaRefused(f"body over max_bytes ({max_bytes})")
    path.write_bytes(data)
    return Retrieved(path, hashlib.sha256(data).hexdigest(), len(data), None)


__all__ = [
    "ENCRYPTION_OVERHEAD",
    "MediaError",
    "MediaFetch",
    "Retrieved",
    "download",
    "download_encrypted",
    "get_json",
    "save_base64",
    "secret_text",
]
