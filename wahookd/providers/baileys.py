"""Baileys message objects, shared by the providers built on Baileys (Wasender, Evolution API,
WAHA's NOWEB engine).

A Baileys `WebMessageInfo` is `{key: {remoteJid, fromMe, id, participant}, message: {...},
messageTimestamp, pushName, status}`; `message` holds exactly one content key
(`conversation`, `imageMessage`, ...), possibly inside wrappers (`ephemeralMessage`,
`viewOnceMessage(V2)`, `documentWithCaptionMessage`, `editedMessage`), next to bookkeeping
keys such as `messageContextInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wahookd.events import Event, new_media, phone_digits
from wahookd.providers.payload import flag, ident, integer, text

# send-test samples point at a reserved name (RFC 2606): a sample must never make the media
# stage fetch from a real host, and its media key decrypts nothing anyway.
SAMPLE_MEDIA_URL = "https://mmg.whatsapp.invalid/o1/v/t62.7118-24/wahookd-send-test"

# Wrappers whose `.message` holds the real content (Baileys `normalizeMessageContent`).
WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "editedMessage",
    "groupMentionedMessage",
    "botInvokeMessage",
)
# Content keys that carry a downloadable file, and their SPEC type.
MEDIA_TYPES = {
    "imageMessage": "image",
    "videoMessage": "video",
    "ptvMessage": "video",
    "audioMessage": "audio",
    "documentMessage": "document",
    "stickerMessage": "sticker",
}
OTHER_TYPES = {
    "conversation": "text",
    "extendedTextMessage": "text",
    "locationMessage": "location",
    "liveLocationMessage": "location",
    "contactMessage": "contacts",
    "contactsArrayMessage": "contacts",
    "buttonsResponseMessage": "button",
    "templateButtonReplyMessage": "button",
    "listResponseMessage": "interactive",
    "interactiveResponseMessage": "interactive",
    "reactionMessage": "reaction",
    "pollCreationMessage": "poll",
    "pollCreationMessageV2": "poll",
    "pollCreationMessageV3": "poll",
    "pollUpdateMessage": "poll",
}
# Keys next to the content that are not content.
BOOKKEEPING = frozenset({"messageContextInfo", "senderKeyDistributionMessage", "base64"})

# Baileys `WebMessageInfo.Status` (Wasender sends the number, Evolution the name).
STATUS_BY_NUMBER = {0: "failed", 1: "pending", 2: "sent", 3: "delivered", 4: "read", 5: "played"}
STATUS_BY_NAME = {
    "ERROR": "failed",
    "PENDING": "pending",
    "SERVER_ACK": "sent",
    "DELIVERY_ACK": "delivered",
    "READ": "read",
    "PLAYED": "played",
    # Already-normalized names, as some wrappers send them.
    "FAILED": "failed",
    "SENT": "sent",
    "DELIVERED": "delivered",
}


def status_name(value: Any) -> str | None:
    """A Baileys status (number, numeric string or name) as a SPEC status, or None."""
    number = integer(value)
    if number is not None:
        return STATUS_BY_NUMBER.get(number)
    if isinstance(value, str):
        return STATUS_BY_NAME.get(value.strip().upper())
    return None


@dataclass(slots=True)
class Content:
    """What one Baileys `message` says: SPEC type, text, and media declaration."""

    type: str
    text: str | None = None
    media: dict[str, Any] | None = None


def unwrap(message: Any) -> dict[str, Any] | None:
    """The innermost content dict, through wrappers (bounded: a payload could nest forever)."""
    for _ in range(8):
        if not isinstance(message, dict):
            return None
        for wrapper in WRAPPERS:
            inner = message.get(wrapper)
            if isinstance(inner, dict) and isinstance(inner.get("message"), dict):
                message = inner["message"]
                break
        else:
            return message
    return message if isinstance(message, dict) else None


def content_key(message: dict[str, Any]) -> str | None:
    for key in (*MEDIA_TYPES, *OTHER_TYPES):
        if key in message:
            return key
    for key in message:
        if key not in BOOKKEEPING:
            return key
    return None


def classify(message: Any) -> Content:
    """Type, text and media of a Baileys `message` object (the `message` field)."""
    inner = unwrap(message)
    if not inner:
        return Content("unknown")
    key = content_key(inner)
    if key is None:
        return Content("unknown")
    body = inner.get(key)
    part: dict[str, Any] = body if isinstance(body, dict) else {}
    if key == "conversation":
        return Content("text", text(body))
    if key in MEDIA_TYPES:
        kind = MEDIA_TYPES[key]
        if key == "audioMessage" and part.get("ptt") is True:
            kind = "voice"  # a push-to-talk recording is a voice note
        media = new_media(
            text(part.get("mimetype")),
            text(part.get("fileName")),
            size if (size := integer(part.get("fileLength"))) is None or size >= 0 else None,
        )
        return Content(kind, text(part.get("caption")), media)
    kind = OTHER_TYPES.get(key, "unknown")
    return Content(kind, _text_of(key, part))


def _text_of(key: str, part: dict[str, Any]) -> str | None:
    if key == "extendedTextMessage":
        return text(part.get("text"))
    if key in ("buttonsResponseMessage", "templateButtonReplyMessage"):
        return text(part.get("selectedDisplayText"))
    if key == "listResponseMessage":
        return text(part.get("title"))
    if key == "interactiveResponseMessage":
        body = part.get("body")
        return text(body.get("text")) if isinstance(body, dict) else None
    if key == "reactionMessage":
        return text(part.get("text"))
    if key.startswith("pollCreationMessage"):
        return text(part.get("name"))
    if key in ("locationMessage", "liveLocationMessage"):
        return text(part.get("name")) or text(part.get("address")) or text(part.get("caption"))
    if key == "contactMessage":
        return text(part.get("displayName"))
    if key == "contactsArrayMessage":
        return text(part.get("displayName"))
    return None


@dataclass(slots=True)
class Parties:
    """Who and where, from a Baileys `key`."""

    message_id: str | None
    chat_id: str | None
    sender: str | None
    to: str | None
    from_me: bool | None


def apply_parties(event: Event, who: Parties) -> None:
    """Copy who and where onto an inbound message event."""
    event.message_id = who.message_id
    event.chat_id, event.sender, event.to, event.from_me = who.chat_id, who.sender, who.to, who.from_me


def parties(key: Any) -> Parties:
    """Ids from a message key. Phone-number JIDs become digits; groups and LIDs stay as ids."""
    if not isinstance(key, dict):
        return Parties(None, None, None, None, None)
    remote = text(key.get("remoteJid"))
    from_me = flag(key.get("fromMe"))
    # Since WhatsApp's LID migration the chat may be a `@lid`; Baileys then gives the phone
    # number in `senderPn` (Wasender adds `cleanedSenderPn`). Prefer the phone number.
    remote_pn = text(key.get("remoteJidAlt")) or text(key.get("senderPn"))
    chat = remote_pn if remote and remote.endswith("@lid") and remote_pn else remote
    participant = text(key.get("participantPn")) or text(key.get("participant"))
    if from_me:
        sender = None
        to = None if (chat or "").endswith("@g.us") else phone_digits(chat)
    else:
        sender = participant or text(key.get("cleanedSenderPn")) or remote_pn or remote
        to = None
    return Parties(
        ident(key.get("id")),
        phone_digits(chat),
        phone_digits(sender),
        to,
        from_me,
    )
