"""How each provider hands out media, and how to get the plaintext file from it.

- Wasender and other Baileys-style payloads (Evolution without inline base64): the
  encrypted file from ``url`` (else ``https://mmg.whatsapp.net`` + ``directPath``),
  decrypted locally with the message's ``mediaKey`` (`wahookd.media.decrypt`).
- Evolution with ``webhook_base64`` on: the inline ``message.base64``.
- Meta Cloud API: media id -> Graph API lookup (bearer ``access_token``) -> download with
  the same token; the lookup's ``sha256`` is checked.
- Twilio: ``MediaUrl0`` with HTTP basic auth (the message's AccountSid and the source's
  ``access_token``, else its auth token ``secret``); redirects to Twilio's CDN are followed.
- WAHA: ``media.url`` with the source's ``api_key`` as ``X-Api-Key``.

Every function returns a `Retrieved` plaintext file in `workdir` or raises `MediaError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wahookd.media.decrypt import INFO_BY_MESSAGE, MAC_LENGTH, decode_b64, decrypt_file
from wahookd.media.errors import MediaError, MediaIntegrityError, MediaRefused
from wahookd.media.fetch import Fetcher
from wahookd.providers import get_path
from wahookd.providers.baileys import unwrap
from wahookd.settings import SourceSettings

WHATSAPP_CDN = "https://mmg.whatsapp.net"
META_GRAPH = "https://graph.facebook.com/v21.0"
# The cap is on the plaintext; the encrypted file adds up to a padding block and the MAC.
ENCRYPTION_OVERHEAD = 16 + MAC_LENGTH
META_MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


@dataclass(frozen=True, slots=True)
class Retrieved:
    """The plaintext media file, ready for the store."""

    path: Path
    sha256: str  # hex
    size: int
    content_type: str | None = None


def scratch(workdir: Path, suffix: str) -> Path:
    return workdir / f"{uuid.uuid4().hex}.{suffix}"


async def retrieve(
    event: dict[str, Any], source: SourceSettings | None, fetcher: Fetcher, workdir: Path
) -> Retrieved:
    """Dispatch on ``event["provider"]``."""
    provider = event.get("provider")
    if source is None:
        raise MediaError("source is no longer configured")
    raw = event.get("raw")
    if provider == "wasender":
        return await retrieve_baileys(raw, source, fetcher, workdir, provider)
    if provider == "evolution":
        inline = evolution_base64(raw)
        if inline is not None:
            return await asyncio.to_thread(save_base64, inline, workdir, fetcher.max_bytes)
        return await retrieve_baileys(raw, source, fetcher, workdir, provider)
    if provider == "meta":
        return await retrieve_meta(raw, source, fetcher, workdir)
    if provider == "twilio":
        return await retrieve_twilio(raw, source, fetcher, workdir)
    if provider == "waha":
        return await retrieve_waha(raw, source, fetcher, workdir)
    raise MediaError(f"no media retrieval for provider {provider}")


def secret_text(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


# --- Baileys (Wasender, Evolution) ----------------------------------------------------


def baileys_message(raw: Any) -> dict[str, Any] | None:
    """The Baileys ``message`` object: ``raw.message``, or under ``data`` / ``data.messages``."""
    for path in (("message",), ("data", "message"), ("data", "messages", "message")):
        found = get_path(raw, *path)
        if isinstance(found, dict):
            return found
    messages = get_path(raw, "data", "messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        found = messages[0].get("message")
        return found if isinstance(found, dict) else None
    return None


def find_baileys_media(message: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(message type, media object), through the wrapper messages the providers unwrap too."""
    content = unwrap(message)
    for name in INFO_BY_MESSAGE:
        media = content.get(name) if content else None
        if isinstance(media, dict):
            return name, media
    return None


def baileys_url(media: dict[str, Any]) -> str:
    url = media.get("url")
    if isinstance(url, str) and url.startswith("https://"):
        return url
    direct = media.get("directPath")
    # A direct path is appended to the fixed CDN origin: it must be a plain absolute path.
    if isinstance(direct, str) and direct.startswith("/") and not direct.startswith("//"):
        return WHATSAPP_CDN + direct
    if isinstance(url, str) and url:
        return url  # http or odd: the guard decides, and refuses what it must
    raise MediaError("no url or directPath in the media message")


async def retrieve_baileys(
    raw: Any, source: SourceSettings, fetcher: Fetcher, workdir: Path, provider: str
) -> Retrieved:
    message = baileys_message(raw)
    found = find_baileys_media(message) if message else None
    if found is None:
        raise MediaError("no media object in the message")
    kind, media = found
    media_key = decode_b64(media.get("mediaKey"), "mediaKey")
    if media_key is None:
        raise MediaIntegrityError("no mediaKey")
    file_enc_sha256 = decode_b64(media.get("fileEncSha256"), "fileEncSha256")
    file_sha256 = decode_b64(media.get("fileSha256"), "fileSha256")
    declared = _int(media.get("fileLength"))
    if declared is not None and declared > fetcher.max_bytes:
        raise MediaRefused(fetcher.too_big)
    policy = fetcher.policy(provider, source.api_url)
    encrypted = scratch(workdir, "enc")
    plaintext = scratch(workdir, "part")
    try:
        # WhatsApp's CDN expects the web client's origin, as Baileys sends it.
        await fetcher.download(
            baileys_url(media),
            policy,
            {"Origin": "https://web.whatsapp.com"},
            encrypted,
            overhead=ENCRYPTION_OVERHEAD,
        )
        digest, size = await asyncio.to_thread(
            decrypt_file,
            encrypted,
            plaintext,
            media_key,
            INFO_BY_MESSAGE[kind],
            file_enc_sha256,
            file_sha256,
        )
        if size > fetcher.max_bytes:
            raise MediaRefused(fetcher.too_big)
    except BaseException:
        plaintext.unlink(missing_ok=True)
        raise
    finally:
        encrypted.unlink(missing_ok=True)
    return Retrieved(plaintext, digest, size, None)


def evolution_base64(raw: Any) -> str | None:
    for path in (("message", "base64"), ("data", "message", "base64")):
        value = get_path(raw, *path)
        if isinstance(value, str) and value:
            return value
    return None


def save_base64(text: str, workdir: Path, max_bytes: int) -> Retrieved:
    """Decode inline base64 media into a file (blocking: run in a thread)."""
    if len(text) * 3 // 4 > max_bytes + 3:
        raise MediaRefused(f"body over max_bytes ({max_bytes})")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaIntegrityError("inline base64 is malformed") from None
    if len(data) > max_bytes:
        raise MediaRefused(f"body over max_bytes ({max_bytes})")
    path = scratch(workdir, "part")
    path.write_bytes(data)
    return Retrieved(path, hashlib.sha256(data).hexdigest(), len(data), None)


# --- Meta Cloud API --------------------------------------------------------------------


def meta_media_id(raw: Any) -> str:
    kind = get_path(raw, "type")
    kinds = (kind, *META_MEDIA_TYPES) if isinstance(kind, str) else META_MEDIA_TYPES
    for name in kinds:
        media_id = get_path(raw, name, "id")
        if media_id is not None:
            media_id = str(media_id)
            # The id becomes part of a URL path: digits only, as Meta issues them.
            if not re.fullmatch(r"[0-9]{1,40}", media_id):
                raise MediaError("media id is not numeric")
            return media_id
    raise MediaError("no media id in the message")


def digest_matches(expected: str, digest: bytes) -> bool:
    """Meta's ``sha256`` has been seen both as hex and as base64: accept either."""
    text = expected.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return hmac.compare_digest(text.lower(), digest.hex())
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, digest)


async def retrieve_meta(raw: Any, source: SourceSettings, fetcher: Fetcher, workdir: Path) -> Retrieved:
    token = secret_text(source.access_token)
    if not token:
        raise MediaError("source has no access_token for the Graph API")
    media_id = meta_media_id(raw)
    policy = fetcher.policy("meta", source.api_url)
    headers = {"Authorization": f"Bearer {token}"}
    base = (source.api_url or META_GRAPH).rstrip("/")
    answer = await fetcher.get_json(f"{base}/{media_id}", policy, headers)
    url = answer.get("url") if isinstance(answer, dict) else None
    if not isinstance(url, str) or not url:
        raise MediaError("Graph API answer has no media url", retry=True)
    path = scratch(workdir, "part")
    try:
        download = await fetcher.download(url, policy, headers, path)
        expected = answer.get("sha256")
        digest = bytes.fromhex(download.sha256)
        if isinstance(expected, str) and expected and not digest_matches(expected, digest):
            raise MediaIntegrityError("sha256 mismatch", retry=True)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    mime = answer.get("mime_type") if isinstance(answer.get("mime_type"), str) else None
    return Retrieved(path, download.sha256, download.size, mime or download.content_type)


# --- Twilio, WAHA ----------------------------------------------------------------------


async def retrieve_twilio(raw: Any, source: SourceSettings, fetcher: Fetcher, workdir: Path) -> Retrieved:
    url = get_path(raw, "MediaUrl0")
    if not isinstance(url, str) or not url:
        raise MediaError("no MediaUrl0 in the message")
    headers: dict[str, str] = {}
    account = get_path(raw, "AccountSid")
    password = secret_text(source.access_token) or (
        source.secret_values()[0].decode() if source.secret_values() else None
    )
    if isinstance(account, str) and re.fullmatch(r"AC[0-9a-fA-F]{32}", account) and password:
        token = base64.b64encode(f"{account}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return await _plain_download(url, "twilio", source, headers, fetcher, workdir)


async def retrieve_waha(raw: Any, source: SourceSettings, fetcher: Fetcher, workdir: Path) -> Retrieved:
    url = get_path(raw, "media", "url") or get_path(raw, "payload", "media", "url")
    if not isinstance(url, str) or not url:
        raise MediaError("no media.url in the message")
    api_key = secret_text(source.api_key)
    headers = {"X-Api-Key": api_key} if api_key else {}
    return await _plain_download(url, "waha", source, headers, fetcher, workdir)


async def _plain_download(
    url: str,
    provider: str,
    source: SourceSettings,
    headers: dict[str, str],
    fetcher: Fetcher,
    workdir: Path,
) -> Retrieved:
    path = scratch(workdir, "part")
    try:
        policy = fetcher.policy(provider, source.api_url)
        download = await fetcher.download(url, policy, headers, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Retrieved(path, download.sha256, download.size, download.content_type)


def _int(value: Any) -> int | None:
    if isinstance(value, dict) and "low" in value:  # protobuf Long from Baileys
        value = value["low"]
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
