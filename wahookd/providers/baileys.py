"""Baileys message objects, shared by the providers built on Baileys (Wasender, Evolution API,
WAHA's NOWEB engine).

A Baileys `WebMessageInfo` is `{key: {remoteJid, fromMe, id, participant}, message: {...},
messageTimestamp, pushName, status}`; `message` holds exactly one content key
(`conversation`, `imageMessage`, ...), possibly inside wrappers (`ephemeralMessage`,
`viewOnceMessage(V2)`, `documentWithCaptionMessage`, `editedMessage`), next to bookkeeping
keys such as `messageContextInfo`. What the content says beyond its type:
- `protocolMessage` is an edit (`type` 14 / `MESSAGE_EDIT`, the new content in
  `editedMessage`) or a deletion for everyone (`type` 0 / `REVOKE`), of `protocolMessage.key`;
- `reactionMessage.key` is the message reacted to; an empty `text` removes the reaction;
- `pollCreationMessage*` carries the question (`name`) and `options[].optionName`;
  `pollUpdateMessage` is a vote on `pollCreationMessageKey` (its choice is encrypted);
- `contextInfo.stanzaId` is the quoted message of a reply, `contextInfo.externalAdReply` the
  Click-to-WhatsApp ad a conversation started from.

Since WhatsApp's LID migration an address may be a LID (`…@lid`) instead of a phone number;
Baileys then gives the phone number next to it (`remoteJidAlt`/`senderPn`,
`participantAlt`/`participantPn`) and the LID next to a phone number (`senderLid`,
`participantLid`). The event id is the message id (`key.id`), which does not depend on the
address the provider used: one message delivered twice, once per address, is one event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wahookd.events import Event, new_media, new_poll, phone_digits, snake_case
from wahookd.media import retrieval
from wahookd.media.decrypt import INFO_BY_MESSAGE, decode_b64
from wahookd.media.errors import MediaError, MediaIntegrityError
from wahookd.providers import get_path
from wahookd.providers.payload import as_object, flag, ident, integer, text

if TYPE_CHECKING:
    from wahookd.media.retrieval import MediaFetch, Retrieved

# send-test samples point at a reserved name (RFC 2606): a sample must never make the media
# stage fetch from a real host, and its media key decrypts nothing anyway.
SAMPLE_MEDIA_URL = "https://mmg.whatsapp.invalid/o1/v/t62.7118-24/wahookd-send-test"
# WhatsApp's media CDN: where Baileys-style payloads point (`url`, or this + `directPath`).
WHATSAPP_CDN = "https://mmg.whatsapp.net"
WHATSAPP_MEDIA_HOSTS = ("mmg.whatsapp.net", "*.whatsapp.net")

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
    "associatedChildMessage",
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
    "pollCreationMessageV5": "poll",
    "pollUpdateMessage": "poll_vote",
    "orderMessage": "order",
    "protocolMessage": "unknown",  # an edit or a revoke, see `_protocol`
}
# Keys next to the content that are not content.
BOOKKEEPING = frozenset({"messageContextInfo", "senderKeyDistributionMessage", "base64"})
# `protocolMessage.type` (Baileys `proto.Message.ProtocolMessage.Type`), number or name.
PROTOCOL_REVOKE = (0, "REVOKE")
PROTOCOL_EDIT = (14, "MESSAGE_EDIT")

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
# Baileys `WACallEvent.status`.
CALL_STATUSES = {
    "offer": "offer",
    "ringing": "ringing",
    "accept": "accepted",
    "reject": "rejected",
    "timeout": "missed",
    "terminate": "ended",
}


def status_name(value: Any) -> str | None:
    """A Baileys status (number, numeric string or name) as a SPEC status, or None."""
    number = integer(value)
    if number is not None:
        return STATUS_BY_NUMBER.get(number)
    if isinstance(value, str):
        return STATUS_BY_NAME.get(value.strip().upper())
    return None


def is_lid(address: Any) -> bool:
    return isinstance(address, str) and address.endswith("@lid")


def phone_of(address: Any) -> str | None:
    """The phone digits of an address, or None when it names no phone (a LID, a group, a
    channel, a broadcast): `from` is a phone number or null (SPEC §4)."""
    found = phone_digits(address)
    return None if found is None or "@" in found else found


@dataclass(slots=True)
class Content:
    """What one Baileys `message` says: SPEC type, text, and what it refers to."""

    type: str
    text: str | None = None
    media: dict[str, Any] | None = None
    ref_message_id: str | None = None
    reply_to: str | None = None
    poll: dict[str, Any] | None = None
    referral: dict[str, Any] | None = None


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


def classify(message: Any, depth: int = 0) -> Content:
    """Type, text, media and references of a Baileys `message` object (the `message` field)."""
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
    if key == "protocolMessage":
        return _protocol(part, depth)
    context = as_object(part.get("contextInfo"))
    found = _content(key, part)
    found.reply_to = ident(context.get("stanzaId"))
    found.referral = ad_referral(context.get("externalAdReply"))
    return found


def _content(key: str, part: dict[str, Any]) -> Content:
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
    found = Content(kind, _text_of(key, part))
    if kind == "reaction":
        found.ref_message_id = ident(get_path(part, "key", "id"))
        # No emoji is a reaction taken back: `text` is "" then (SPEC §4).
        found.text = part.get("text") if isinstance(part.get("text"), str) else ""
    elif kind == "poll":
        options = part.get("options")
        names = [text(get_path(o, "optionName")) for o in options] if isinstance(options, list) else None
        found.poll = new_poll(text(part.get("name")), [n for n in names if n] if names else names, None)
    elif kind == "poll_vote":
        found.ref_message_id = ident(get_path(part, "pollCreationMessageKey", "id"))
        # The vote itself is encrypted to the poll's creator; a gateway that decrypted it
        # puts the chosen names in `vote.selectedOptions`.
        chosen = get_path(part, "vote", "selectedOptions")
        votes = [v for v in chosen if isinstance(v, str)] if isinstance(chosen, list) else None
        found.poll = new_poll(None, None, votes)
    return found


def _protocol(part: dict[str, Any], depth: int) -> Content:
    """An edit or a deletion for everyone (other protocol messages are bookkeeping)."""
    number, name = integer(part.get("type")), (text(part.get("type")) or "").upper()
    target = ident(get_path(part, "key", "id"))
    if number in PROTOCOL_REVOKE or name in PROTOCOL_REVOKE:
        return Content("revoke", None, ref_message_id=target)
    if number in PROTOCOL_EDIT or name in PROTOCOL_EDIT or isinstance(part.get("editedMessage"), dict):
        edited = classify(part.get("editedMessage"), depth + 1) if depth < 2 else Content("unknown")
        return Content("edit", edited.text, ref_message_id=target)
    return Content("unknown")


def ad_referral(reply: Any) -> dict[str, Any] | None:
    """`contextInfo.externalAdReply` as a SPEC `referral` (snake_case keys), when it is an ad
    (Click-to-WhatsApp gives a `ctwaClid`, a `sourceId` or `sourceType: "ad"`)."""
    if not isinstance(reply, dict):
        return None
    if not (reply.get("ctwaClid") or reply.get("sourceId") or reply.get("sourceType") == "ad"):
        return None
    return {snake_case(name): value for name, value in reply.items() if not isinstance(value, dict | list)}


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
    if key.startswith("pollCreationMessage"):
        return text(part.get("name"))
    if key in ("locationMessage", "liveLocationMessage"):
        return text(part.get("name")) or text(part.get("address")) or text(part.get("caption"))
    if key in ("contactMessage", "contactsArrayMessage"):
        return text(part.get("displayName"))
    if key == "orderMessage":
        return text(part.get("message")) or text(part.get("orderTitle"))
    return None


@dataclass(slots=True)
class Parties:
    """Who and where, from a Baileys `key`."""

    message_id: str | None
    chat_id: str | None
    sender: str | None
    to: str | None
    from_me: bool | None
    from_lid: str | None = None
    participant: str | None = None  # a group member the key names (phone digits, else the LID)


def apply_parties(event: Event, who: Parties) -> None:
    """Copy who and where onto an inbound message event."""
    event.message_id = who.message_id
    event.chat_id, event.sender, event.to, event.from_me = who.chat_id, who.sender, who.to, who.from_me
    event.from_lid = who.from_lid


def parties(key: Any) -> Parties:
    """Ids from a message key. Phone-number JIDs become digits; groups, channels and LIDs stay
    as ids; `sender` is phone digits or None, the LID goes to `from_lid`."""
    if not isinstance(key, dict):
        return Parties(None, None, None, None, None)
    remote = text(key.get("remoteJid"))
    from_me = flag(key.get("fromMe"))
    alt = text(key.get("remoteJidAlt"))
    remote_pn = (alt if alt and not is_lid(alt) else None) or text(key.get("senderPn"))
    remote_lid = remote if is_lid(remote) else (alt if is_lid(alt) else text(key.get("senderLid")))
    chat = remote_pn if is_lid(remote) and remote_pn else remote
    participant = text(key.get("participant"))
    participant_alt = text(key.get("participantAlt"))
    participant_pn = (
        text(key.get("participantPn"))
        or (participant_alt if participant_alt and not is_lid(participant_alt) else None)
        or (participant if participant and not is_lid(participant) else None)
    )
    participant_lid = (
        participant
        if is_lid(participant)
        else (participant_alt if is_lid(participant_alt) else text(key.get("participantLid")))
    )
    member = phone_of(participant_pn) or participant_lid
    if from_me:
        sender = None
        lid = None
        to = None if (chat or "").endswith(("@g.us", "@newsletter")) else phone_digits(chat)
    elif participant or participant_pn or participant_lid:
        sender = phone_of(participant_pn)
        lid = participant_lid
        to = None
    else:
        sender = phone_of(text(key.get("cleanedSenderPn")) or remote_pn or remote)
        lid = remote_lid
        to = None
    return Parties(ident(key.get("id")), phone_digits(chat), sender, to, from_me, lid, member)


def system_chat(data: Any) -> str | None:
    """The group or chat a system event concerns, when its data names one."""
    item = data[0] if isinstance(data, list) and data else data
    if not isinstance(item, dict):
        return None
    for name in ("groupJid", "jid", "chatId", "id", "remoteJid"):
        value = text(item.get(name))
        if value and "@" in value:
            return phone_digits(value)
    return None


# --- media -------------------------------------------------------------------------------


def baileys_message(raw: Any) -> dict[str, Any] | None:
    """The Baileys ``message`` object: ``raw.message``, or under ``data`` / ``data.messages``
    / ``_data`` (WAHA NOWEB)."""
    for path in (("message",), ("data", "message"), ("data", "messages", "message"), ("_data", "message")):
        found = get_path(raw, *path)
        if isinstance(found, dict):
            return found
    messages = get_path(raw, "data", "messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        found = messages[0].get("message")
        return found if isinstance(found, dict) else None
    return None


def find_media(message: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(message type, media object), through the wrapper messages `classify` unwraps too."""
    content = unwrap(message)
    for name in INFO_BY_MESSAGE:
        media = content.get(name) if content else None
        if isinstance(media, dict):
            return name, media
    return None


def media_url(media: dict[str, Any]) -> str:
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


async def fetch_media(raw: Any, fetch: MediaFetch) -> Retrieved:
    """The file of a Baileys media message: WhatsApp's encrypted file, decrypted locally with
    the message's `mediaKey` (checks in `wahookd.media.decrypt`)."""
    message = baileys_message(raw)
    found = find_media(message) if message else None
    if found is None:
        raise MediaError("no media object in the message")
    kind, media = found
    media_key = decode_b64(media.get("mediaKey"), "mediaKey")
    if media_key is None:
        raise MediaIntegrityError("no mediaKey")
    fetch.refuse_over_cap(integer(media.get("fileLength")))
    return await retrieval.download_encrypted(
        fetch,
        media_url(media),
        media_key,
        INFO_BY_MESSAGE[kind],
        decode_b64(media.get("fileEncSha256"), "fileEncSha256"),
        decode_b64(media.get("fileSha256"), "fileSha256"),
        # WhatsApp's CDN expects the web client's origin, as Baileys sends it.
        headers={"Origin": "https://web.whatsapp.com"},
    )
