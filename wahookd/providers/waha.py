"""WAHA (WhatsApp HTTP API), any engine (WEBJS, NOWEB, GOWS).

Verification: `X-Webhook-Hmac` is the hex HMAC-SHA512 of the raw body, keyed with the
session's HMAC key (`X-Webhook-Hmac-Algorithm: sha512` names the hash).

Body: `{"id"?, "timestamp"?, "event", "session", "me"?, "payload", "engine"}`:
- `message`, `message.any`: `payload` is a message, `raw` = `payload` (which holds
  `media: {url, mimetype, filename}` when `hasMedia`). The type comes from the engine's
  `_data` (NOWEB: a Baileys message; WEBJS: `_data.type`), else from the payload
  (`media.mimetype`, `location`, `vCards`); `replyTo` is the quoted message; a channel post's
  chat ends in `@newsletter`;
- `message.ack` (and `message.ack.group`): a status, `ack` -1..4 (or `ackName`) maps to
  failed, pending, sent, delivered, read, played; a group member's ack names the member in `to`;
- `message.reaction`: a message of type `reaction` (`payload.reaction.text` is the emoji, ""
  when taken back; `reaction.messageId` the message reacted to);
- `message.edited`: an `edit` of `editedMessageId` (`body` is the new text);
- `message.revoked`: a `revoke` (`before`/`after`/`revokedMessageId` name the message);
- `poll.vote`, `poll.vote.failed`: a `poll_vote` on `poll.id` (`vote.selectedOptions`; a
  failed vote could not be decrypted, so its choice is unknown);
- `call.received`, `call.accepted`, `call.rejected`: `call` events (`offer`, `accepted`,
  `rejected`);
- everything else (`session.status`, `group.*`, `group.v2.*`, `presence.update`,
  `chat.archive`, `label.*`, `engine.event`, future names): one `system` event whose id is a
  hash of the event name, session and payload; `chat_id` names the group or chat it concerns.

Ids: a WhatsApp Web message id is serialized as `{fromMe}_{chat}_{id}[_{participant}]`, and
WAHA may deliver one message twice, once addressed `…@c.us` and once `…@lid`
(devlikeapro/waha#1627): the event id is the bare `{id}` (plus the status for acks), which
does not depend on the address, so both deliveries are one event. `message_id` and
`ref_message_id` stay serialized as WAHA gives them, the form WAHA's API takes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, new_call, new_media, new_poll, phone_digits
from wahookd.media import retrieval
from wahookd.media.errors import MediaError, MediaRefused
from wahookd.media.retrieval import MediaFetch, Retrieved, secret_text
from wahookd.providers import InboundRequest, Provider, get_path
from wahookd.providers.baileys import classify, is_lid, parties, phone_of
from wahookd.providers.payload import (
    as_object,
    flag,
    header,
    hmac_digest,
    ident,
    integer,
    load_json_object,
    text,
    timestamp,
)
from wahookd.settings import SourceSettings

SIGNATURE_HEADER = "X-Webhook-Hmac"
ALGORITHM_HEADER = "X-Webhook-Hmac-Algorithm"
ACKS = {-1: "failed", 0: "pending", 1: "sent", 2: "delivered", 3: "read", 4: "played"}
ACK_NAMES = {
    "ERROR": "failed",
    "PENDING": "pending",
    "SERVER": "sent",
    "DEVICE": "delivered",
    "READ": "read",
    "PLAYED": "played",
}
# whatsapp-web.js `MessageTypes` (WEBJS engine `_data.type`).
WEBJS_TYPES = {
    "chat": "text",
    "image": "image",
    "video": "video",
    "audio": "audio",
    "ptt": "voice",
    "document": "document",
    "sticker": "sticker",
    "location": "location",
    "vcard": "contacts",
    "multi_vcard": "contacts",
    "buttons_response": "button",
    "template_button_reply": "button",
    "list_response": "interactive",
    "interactive": "interactive",
    "reaction": "reaction",
    "poll_creation": "poll",
    "ptv": "video",
    "order": "order",
    "revoked": "revoke",
}
CALL_EVENTS = {"call.received": "offer", "call.accepted": "accepted", "call.rejected": "rejected"}
# A default WAHA builds its file URLs from WHATSAPP_API_HOSTNAME/PORT, `localhost:3000`: the
# WAHA server as it sees itself, not as wahookd reaches it.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "0.0.0.0"})  # noqa: S104 - names, not a bind
# What to set, by the guard's refusal (docs/media.md, "WAHA").
MEDIA_HINTS = {
    "host not allowed": "set this source's api_url to the WAHA server",
    "plain http refused": "set this source's api_url to the WAHA server",
    "private address refused": "list the WAHA host in [media] allow_hosts",
}
MEDIA_HELP = (
    "a default WAHA names itself (localhost:3000) in its media URLs: set this source's api_url "
    "to the WAHA server as wahookd reaches it (e.g. http://waha:3000; file URLs on a loopback "
    "host are then fetched from there), and list that host in [media] allow_hosts when it has "
    "a private address"
)
log = structlog.get_logger("wahookd.media")


class WahaProvider(Provider):
    name = "waha"
    media_hosts = ()  # self-hosted: its files are on the source's `api_url` (module doc)

    def __init__(self) -> None:
        self._explained: set[tuple[str, str]] = set()

    def session_up(self, event: Event) -> bool | None:
        # `session.status` payload.status: STARTING, SCAN_QR_CODE, WORKING, FAILED, STOPPED
        if event.event != "session.status" or not isinstance(event.raw, dict):
            return None
        payload = event.raw.get("payload")
        status = payload.get("status") if isinstance(payload, dict) else None
        return None if not isinstance(status, str) else status.upper() == "WORKING"

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        signature = header(request.headers, SIGNATURE_HEADER)
        algorithm = (header(request.headers, ALGORITHM_HEADER) or "sha512").strip().lower()
        if not signature or algorithm != "sha512":
            return False
        given = signature.strip().lower().encode("ascii", "replace")
        found = False
        for secret in source.secret_values():
            expected = hmac_digest(secret, request.body, "sha512").hex().encode()
            found |= hmac.compare_digest(given, expected)
        return found

    def parse(self, request: InboundRequest, source_name: str, source: SourceSettings) -> list[Event]:
        body = load_json_object(request.body)
        name = text(body.get("event"))
        if name is None:
            raise ParseError("no event name")
        payload = body.get("payload")
        found: Event | None = None
        if isinstance(payload, dict):
            if name in ("message", "message.any"):
                found = _message(source_name, name, payload)
            elif name == "message.reaction":
                found = _reaction(source_name, name, payload)
            elif name in ("message.ack", "message.ack.group"):
                status = _ack(payload)
                found = _status(source_name, name, payload, status) if status else None
            elif name == "message.edited":
                found = _edited(source_name, name, payload)
            elif name == "message.revoked":
                found = _revoked(source_name, name, payload)
            elif name in ("poll.vote", "poll.vote.failed"):
                found = _poll_vote(source_name, name, payload)
            elif name in CALL_EVENTS:
                found = _call(source_name, name, payload)
        if found is not None:
            return [found]
        event = Event(
            id=content_id(name, body.get("session"), payload),
            source=source_name,
            provider="waha",
            kind="system",
            event=name,
            raw=body,
        )
        event.timestamp = timestamp(get_path(payload, "timestamp")) or timestamp(body.get("timestamp"))
        event.chat_id = _system_chat(payload)
        return [event]

    async def fetch_media(self, event: dict[str, Any], fetch: MediaFetch) -> Retrieved:
        raw = event.get("raw")
        url = (
            get_path(raw, "media", "url")
            or get_path(raw, "mediaUrl")
            or get_path(raw, "payload", "media", "url")
        )
        if not isinstance(url, str) or not url:
            raise MediaError("no media.url in the message")
        url = served_from(url, fetch.source.api_url)
        api_key = secret_text(fetch.source.api_key)
        headers = {"X-Api-Key": api_key} if api_key else {}
        try:
            return await retrieval.download(fetch, url, headers)
        except MediaRefused as exc:
            hint = next((h for refusal, h in MEDIA_HINTS.items() if exc.reason.startswith(refusal)), None)
            if hint is None:
                raise
            self._explain(str(event.get("source") or ""), exc.reason, hint)
            raise MediaRefused(f"{exc.reason} ({hint}; see docs/media.md)") from None

    def _explain(self, source: str, reason: str, hint: str) -> None:
        """Say once per source and refusal what to configure: a default WAHA names itself
        (`localhost:3000`) in its media URLs, so out of the box every file would be refused."""
        if (source, reason) in self._explained:
            return
        if len(self._explained) < 1000:  # bounded: a hostile payload may name any host
            self._explained.add((source, reason))
        log.warning("waha_media_refused", source=source, reason=reason, hint=MEDIA_HELP)

    def sample(self, kind: str) -> tuple[bytes, str]:
        serial = uuid.uuid4().hex.upper()
        now = int(time.time())
        payload: dict[str, Any]
        if kind == "status":
            event = "message.ack"
            payload = {
                "id": f"true_11111111111@c.us_{serial}",
                "from": "11111111111@c.us",
                "fromMe": True,
                "ack": 2,
                "ackName": "DEVICE",
                "timestamp": now,
            }
        else:
            event = "message"
            payload = {
                "id": f"false_11111111111@c.us_{serial}",
                "timestamp": now,
                "from": "11111111111@c.us",
                "fromMe": False,
                "to": "22222222222@c.us",
                "body": "wahookd send-test",
                "hasMedia": False,
                "ack": 1,
            }
            if kind == "image":
                payload |= {
                    "hasMedia": True,
                    "body": "wahookd send-test image",
                    "media": {
                        "url": f"http://waha.invalid:3000/api/files/default/{serial}.jpeg",
                        "mimetype": "image/jpeg",
                        "filename": None,
                    },
                }
        body = {"event": event, "session": "default", "engine": "WEBJS", "payload": payload}
        return json.dumps(body).encode(), "application/json"

    def sign(self, body: bytes, url: str, source: SourceSettings) -> dict[str, str]:
        secrets = source.secret_values()
        if not secrets:
            return {}
        return {
            SIGNATURE_HEADER: hmac_digest(secrets[0], body, "sha512").hex(),
            ALGORITHM_HEADER: "sha512",
        }


def served_from(url: str, api_url: str | None) -> str:
    """A WAHA file URL on a loopback host, moved to the configured `api_url` origin (where
    wahookd reaches that WAHA); any other URL as it is, for the guard to judge."""
    if not api_url:
        return url
    try:
        parts, base = urlsplit(url), urlsplit(api_url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return url
    try:
        loopback = ipaddress.ip_address(host).is_loopback or host == "0.0.0.0"  # noqa: S104
    except ValueError:
        loopback = host in LOOPBACK_NAMES or host.endswith(".localhost")
    if not loopback or not base.netloc or "/api/files/" not in parts.path:
        return url
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))


def chat_of(message_id: str | None) -> str | None:
    """The chat in a serialized WhatsApp Web id, `{fromMe}_{chat}_{id}[_{participant}]`.

    Acks carry no reliable `to`, and the id always names the chat.
    """
    if not message_id:
        return None
    parts = message_id.split("_")
    if len(parts) >= 3 and parts[0] in ("true", "false") and "@" in parts[1]:
        return parts[1]
    return None


def bare_id(message_id: str | None) -> str | None:
    """The message's own id in a serialized id (`{fromMe}_{chat}_{id}[_{participant}]`): the
    part that is the same whichever address (`@c.us` or `@lid`) the chat was given by."""
    if not message_id:
        return None
    parts = message_id.split("_")
    if len(parts) >= 3 and parts[0] in ("true", "false") and "@" in parts[1] and parts[2]:
        return parts[2]
    return message_id


def serialized(bare: str | None, from_me: bool | None, chat: str | None) -> str | None:
    """A bare message id in WAHA's serialized form, when the chat is known."""
    if not bare or "_" in bare or not chat or from_me is None:
        return bare
    return f"{'true' if from_me else 'false'}_{chat}_{bare}"


def _message_id(payload: dict[str, Any]) -> str | None:
    if isinstance(payload.get("id"), dict):  # some engines give the whatsapp-web.js id object
        return ident(get_path(payload, "id", "_serialized"))
    return ident(payload.get("id"))


def _ack(payload: dict[str, Any]) -> str | None:
    number = integer(payload.get("ack"))
    if number is not None and number in ACKS:
        return ACKS[number]
    name = text(payload.get("ackName"))
    return ACK_NAMES.get(name.upper()) if name else None


def _base(source_name: str, name: str, kind: str, payload: dict[str, Any], event_id: str | None) -> Event:
    message_id = _message_id(payload)
    event = Event(
        id=event_id or bare_id(message_id) or content_id(name, payload),
        source=source_name,
        provider="waha",
        kind=kind,
        event=name,
        raw=payload,
    )
    event.message_id = message_id
    from_me = flag(payload.get("fromMe"))
    sender, to = text(payload.get("from")), text(payload.get("to"))
    # WAHA writes "me" for the session's own number in some payloads (poll votes).
    sender, to = (None if sender == "me" else sender), (None if to == "me" else to)
    event.from_me = from_me
    # In groups `from` is the group and `participant` the member who wrote.
    chat = chat_of(message_id) or (to if from_me else sender)
    event.chat_id = phone_digits(chat)
    author = text(payload.get("participant")) or text(payload.get("author")) or sender
    if from_me:
        event.sender = None
    else:
        # NOWEB's Baileys key names the phone number next to a LID (and the LID next to one).
        key = parties(get_path(payload, "_data", "key"))
        event.sender = phone_of(author) or key.sender
        event.from_lid = author if is_lid(author) else key.from_lid
    event.to = phone_digits(to) if to else (event.chat_id if from_me else None)
    event.timestamp = timestamp(payload.get("timestamp"))
    return event


def _reply_to(payload: dict[str, Any]) -> str | None:
    reply = payload.get("replyTo")
    if isinstance(reply, dict):
        return ident(reply.get("id"))
    return ident(reply)


def _message(source_name: str, name: str, payload: dict[str, Any]) -> Event:
    event = _base(source_name, name, "message", payload, None)
    event.sender_name = text(get_path(payload, "_data", "notifyName")) or text(
        get_path(payload, "_data", "pushName")
    )
    body = text(payload.get("body"))
    media = payload.get("media") if isinstance(payload.get("media"), dict) else None
    declared = (
        new_media(
            text(get_path(media, "mimetype")),
            text(get_path(media, "filename")),
            integer(get_path(media, "filesize")),
        )
        if (payload.get("hasMedia") is True or media)
        else None
    )
    baileys = get_path(payload, "_data", "message")
    webjs = text(get_path(payload, "_data", "type"))
    if isinstance(baileys, dict):  # NOWEB: `_data` is the Baileys WebMessageInfo
        content = classify(baileys)
        event.type, event.text = content.type, content.text or body
        if declared is None and content.media is not None:
            declared = content.media
        event.ref_message_id = serialized(content.ref_message_id, event.from_me, chat_of(event.message_id))
        event.reply_to, event.poll, event.referral = content.reply_to, content.poll, content.referral
    elif webjs:
        event.type, event.text = WEBJS_TYPES.get(webjs, "unknown"), body
    else:
        event.type, event.text = _guess(payload, declared), body
    if event.type in ("text", "unknown") and declared is not None:
        event.type = _guess(payload, declared)
    event.media = declared
    event.reply_to = _reply_to(payload) or event.reply_to
    return event


def _guess(payload: dict[str, Any], media: dict[str, Any] | None) -> str:
    """The type of a payload without engine data."""
    if media is not None:
        major = (media["mime_type"] or "").split("/", 1)[0]
        if major == "audio":
            return "voice" if "ogg" in (media["mime_type"] or "") else "audio"
        if media["mime_type"] == "image/webp":
            return "sticker"
        return major if major in ("image", "video") else "document"
    if isinstance(payload.get("location"), dict):
        return "location"
    if isinstance(payload.get("vCards"), list) and payload["vCards"]:
        return "contacts"
    return "text" if text(payload.get("body")) else "unknown"


def _reaction(source_name: str, name: str, payload: dict[str, Any]) -> Event:
    event = _base(source_name, name, "message", payload, None)
    event.type = "reaction"
    emoji = get_path(payload, "reaction", "text")
    event.text = emoji if isinstance(emoji, str) else ""  # "" is a reaction taken back
    event.ref_message_id = ident(get_path(payload, "reaction", "messageId"))
    return event


def _status(source_name: str, name: str, payload: dict[str, Any], status: str) -> Event:
    event = _base(source_name, name, "status", payload, None)
    event.sender = event.from_lid = None
    bare = bare_id(event.message_id)
    member = None
    participant = text(payload.get("participant"))
    if (event.chat_id or "").endswith("@g.us") and participant and "@g.us" not in participant:
        # A group member's ack: the group is the chat, the member the one it concerns.
        member = phone_of(participant) or participant
        event.to = member
    event.id = f"{bare}:{status}" + (f":{member}" if member else "") if bare else content_id(name, payload)
    event.status = status
    if status == "failed":
        event.error = {"code": "ERROR", "message": text(payload.get("error"))}
    return event


def _edited(source_name: str, name: str, payload: dict[str, Any]) -> Event | None:
    """`message.edited`: the edit (its own id) of `editedMessageId`; `body` is the new text."""
    event = _base(source_name, name, "message", payload, None)
    target = ident(payload.get("editedMessageId")) or ident(get_path(payload, "_data", "editedMessageId"))
    if target is None:
        baileys = get_path(payload, "_data", "message")
        target = classify(baileys).ref_message_id if isinstance(baileys, dict) else None
    if target is None:
        return None
    event.type = "edit"
    event.ref_message_id = serialized(target, event.from_me, chat_of(event.message_id))
    event.text = text(payload.get("body")) or text(payload.get("newBody"))
    # Never the edited message's own id, which would make the edit a duplicate of it.
    own, edited = bare_id(event.message_id), bare_id(event.ref_message_id)
    marker = own if own and own != edited else content_id(event.text, payload.get("timestamp"))
    event.id = f"{edited}:edit:{marker}"
    return event


def _revoked(source_name: str, name: str, payload: dict[str, Any]) -> Event | None:
    """`message.revoked`: `{after, before, revokedMessageId}`; `before` is the message deleted."""
    after, before = as_object(payload.get("after")), as_object(payload.get("before"))
    source = after or before
    message_id = _message_id(after) if after else None
    target = _message_id(before) if before else None
    if target is None:
        revoked = ident(payload.get("revokedMessageId"))
        if revoked is None and after:
            baileys = get_path(after, "_data", "message")
            revoked = classify(baileys).ref_message_id if isinstance(baileys, dict) else None
        target = serialized(revoked, flag(source.get("fromMe")), chat_of(message_id))
    if target is None:
        return None
    event = _base(source_name, name, "message", source, f"{bare_id(target)}:revoke")
    event.raw = payload
    event.message_id = message_id
    event.type, event.ref_message_id, event.text = "revoke", target, None
    return event


def _poll_vote(source_name: str, name: str, payload: dict[str, Any]) -> Event | None:
    vote, poll = as_object(payload.get("vote")), as_object(payload.get("poll"))
    if not vote:
        return None
    event = _base(source_name, name, "message", vote, None)
    event.raw = payload
    event.type = "poll_vote"
    event.ref_message_id = _message_id(poll) if poll else None
    chosen = vote.get("selectedOptions")
    votes = [v for v in chosen if isinstance(v, str)] if isinstance(chosen, list) else None
    # A failed vote could not be decrypted: its (empty) choice says nothing.
    event.poll = new_poll(None, None, None if name == "poll.vote.failed" else votes)
    return event


def _call(source_name: str, name: str, payload: dict[str, Any]) -> Event | None:
    call_id = ident(payload.get("id"))
    if call_id is None:
        return None
    status = CALL_EVENTS[name]
    event = Event(
        id=f"{call_id}:{status}", source=source_name, provider="waha", kind="call", event=name, raw=payload
    )
    caller = text(payload.get("from"))
    event.chat_id = phone_digits(caller)
    event.sender = phone_of(caller)
    event.from_lid = caller if is_lid(caller) else None
    event.from_me = flag(payload.get("fromMe"))
    event.call = new_call(call_id, status, flag(payload.get("isVideo")), None)
    event.timestamp = timestamp(payload.get("timestamp"))
    return event


def _system_chat(payload: Any) -> str | None:
    """The group or chat a system event concerns (`group.id`, `chatId`, `id`)."""
    if not isinstance(payload, dict):
        return None
    for found in (get_path(payload, "group", "id"), payload.get("chatId"), payload.get("id")):
        if isinstance(found, str) and "@" in found and not found.startswith(("true_", "false_")):
            return phone_digits(found)
    return None
