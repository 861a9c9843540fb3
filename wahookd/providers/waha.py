"""WAHA (WhatsApp HTTP API), any engine (WEBJS, NOWEB, GOWS).

Verification: `X-Webhook-Hmac` is the hex HMAC-SHA512 of the raw body, keyed with the
session's HMAC key (`X-Webhook-Hmac-Algorithm: sha512` names the hash).

Body: `{"id"?, "timestamp"?, "event", "session", "me"?, "payload", "engine"}`:
- `message`, `message.any`: `payload` is a message: id = `payload.id`, `raw` = `payload`
  (which holds `media: {url, mimetype, filename}` when `hasMedia`). The type comes from the
  engine's `_data` (NOWEB: a Baileys message; WEBJS: `_data.type`), else from the payload
  (`media.mimetype`, `location`, `vCards`);
- `message.ack`: a status, id = `payload.id:status`; `ack` -1..4 (or `ackName`) maps to
  failed, pending, sent, delivered, read, played;
- `message.reaction`: a message of type `reaction` (`payload.reaction.text` is the emoji);
- everything else (`session.status`, `message.revoked`, `message.edited`, `group.*`,
  `presence.update`, `call.*`, `poll.vote`, future names): one `system` event whose id is
  a hash of the event name, session and payload.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Any

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, new_media, phone_digits
from wahookd.providers import InboundRequest, Provider, get_path
from wahookd.providers.baileys import classify
from wahookd.providers.payload import (
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
}


class WahaProvider(Provider):
    name = "waha"

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
        if name in ("message", "message.any") and isinstance(payload, dict):
            return [_message(source_name, name, payload)]
        if name == "message.reaction" and isinstance(payload, dict):
            return [_reaction(source_name, name, payload)]
        if name == "message.ack" and isinstance(payload, dict):
            status = _ack(payload)
            if status is not None:
                return [_status(source_name, name, payload, status)]
        event = Event(
            id=content_id(name, body.get("session"), payload),
            source=source_name,
            provider="waha",
            kind="system",
            event=name,
            raw=body,
        )
        event.timestamp = timestamp(get_path(payload, "timestamp")) or timestamp(body.get("timestamp"))
        return [event]

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


def _ack(payload: dict[str, Any]) -> str | None:
    number = integer(payload.get("ack"))
    if number is not None and number in ACKS:
        return ACKS[number]
    name = text(payload.get("ackName"))
    return ACK_NAMES.get(name.upper()) if name else None


def _base(source_name: str, name: str, kind: str, payload: dict[str, Any], event_id: str | None) -> Event:
    message_id = ident(payload.get("id"))
    if isinstance(payload.get("id"), dict):  # some engines give the whatsapp-web.js id object
        message_id = ident(get_path(payload, "id", "_serialized"))
    event = Event(
        id=event_id or message_id or content_id(name, payload),
        source=source_name,
        provider="waha",
        kind=kind,
        event=name,
        raw=payload,
    )
    event.message_id = message_id
    from_me = flag(payload.get("fromMe"))
    sender, to = text(payload.get("from")), text(payload.get("to"))
    event.from_me = from_me
    # In groups `from` is the group and `participant` the member who wrote.
    chat = chat_of(message_id) or (to if from_me else sender)
    event.chat_id = phone_digits(chat)
    event.sender = None if from_me else phone_digits(text(payload.get("participant")) or sender)
    event.to = phone_digits(to) if to else (event.chat_id if from_me else None)
    event.timestamp = timestamp(payload.get("timestamp"))
    return event


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
    elif webjs:
        event.type, event.text = WEBJS_TYPES.get(webjs, "unknown"), body
    else:
        event.type, event.text = _guess(payload, declared), body
    if event.type in ("text", "unknown") and declared is not None:
        event.type = _guess(payload, declared)
    event.media = declared
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
    event.text = text(get_path(payload, "reaction", "text"))
    return event


def _status(source_name: str, name: str, payload: dict[str, Any], status: str) -> Event:
    event = _base(source_name, name, "status", payload, None)
    event.id = f"{event.message_id}:{status}" if event.message_id else content_id(name, payload)
    event.status = status
    event.sender = None
    if status == "failed":
        event.error = {"code": "ERROR", "message": text(payload.get("error"))}
    return event
