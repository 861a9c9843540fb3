"""The normalized event (SPEC §4) and the small conversions every provider shares."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

KINDS = ("message", "status", "system")
MESSAGE_TYPES = (
    "text",
    "image",
    "video",
    "audio",
    "voice",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "poll",
    "unknown",
)
YEAR_10000 = 253_402_300_800  # epoch seconds; datetime's range ends just before
STATUSES = ("pending", "sent", "delivered", "read", "played", "failed")
# Order of outbound statuses; `failed` is terminal and handled apart.
STATUS_RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}


@dataclass(slots=True)
class Event:
    """One provider event, normalized. `to_dict()` gives the SPEC §4 JSON object."""

    id: str
    source: str
    provider: str
    kind: str
    event: str
    raw: Any
    message_id: str | None = None
    chat_id: str | None = None
    sender: str | None = None  # serialized as "from" (a Python keyword)
    to: str | None = None
    from_me: bool | None = None
    sender_name: str | None = None
    type: str | None = None
    text: str | None = None
    media: dict[str, Any] | None = None
    status: str | None = None
    error: dict[str, Any] | None = None
    timestamp: str | None = None
    received_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "provider": self.provider,
            "kind": self.kind,
            "event": self.event,
            "message_id": self.message_id,
            "chat_id": self.chat_id,
            "from": self.sender,
            "to": self.to,
            "from_me": self.from_me,
            "sender_name": self.sender_name,
            "type": self.type,
            "text": self.text,
            "media": self.media,
            "status": self.status,
            "error": self.error,
            "timestamp": self.timestamp,
            "received_at": self.received_at,
            "raw": self.raw,
        }


def new_media(
    mime_type: str | None = None,
    filename: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """The `media` object before the media stage fills `stored` (or `error`)."""
    return {
        "mime_type": mime_type,
        "filename": filename,
        "size": size,
        "sha256": sha256,
        "stored": None,
        "error": None,
    }


def rfc3339(value: Any) -> str | None:
    """Provider timestamps (seconds, milliseconds, numeric strings, ISO 8601) as RFC 3339 UTC.

    Wasender sends seconds in some events and milliseconds in others; anything past
    year 5138 in seconds is taken as milliseconds.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dict) and "low" in value:  # protobuf Long from Baileys
        value = value["low"]
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            parsed = parse_iso(text)
            return format_time(parsed) if parsed else None
    if not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
        if seconds > 1e11:
            seconds /= 1000.0
        if seconds.is_integer() and 0 <= seconds < YEAR_10000:
            # Whole seconds, the usual case: time.strftime is a quarter of datetime's cost.
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
        return format_time(datetime.fromtimestamp(seconds, tz=UTC))
    except (OverflowError, OSError, ValueError):
        return None


def parse_iso(text: str) -> datetime | None:
    """ISO 8601 (with a Z or an offset; naive means UTC) as an aware datetime, or None."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, milliseconds only when there are any."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    return format_time(datetime.now(UTC))


def phone_digits(address: Any) -> str | None:
    """`whatsapp:+1415...`, `1415...@s.whatsapp.net`, `1415...@c.us` -> `1415...`.

    Group (`@g.us`), LID (`@lid`) and other ids that are not phone numbers stay as they are.
    """
    if not isinstance(address, str) or not address:
        return None
    text = address.strip()
    if text.startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    for suffix in ("@s.whatsapp.net", "@c.us"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            text = text.split(":", 1)[0]  # device suffix: 1234:5@s.whatsapp.net
            break
    else:
        if "@" in text:
            return text
    digits = text.lstrip("+")
    return digits if digits.isdigit() else text


def content_id(*parts: Any) -> str:
    """A stable id for events the provider gives no id for: a hash of what identifies them."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def dump_json(value: Any) -> bytes:
    """UTF-8 JSON, fast (orjson); lone surrogates, which orjson refuses, fall back to escapes."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=str).encode()


def load_json(data: bytes | str) -> Any:
    """Parse JSON fast (orjson); fall back to `json` for what it alone accepts (lone surrogates).

    Raises ValueError for invalid JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
