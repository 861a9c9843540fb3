"""Meta WhatsApp Cloud API (also 360dialog, which forwards Meta's payloads unchanged).

Verification: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`. Meta
escapes non-ASCII as `\\uXXXX`, so only the raw bytes verify, never re-serialised JSON.
GET handshake: `hub.mode=subscribe`, `hub.verify_token`, echo `hub.challenge`.

One POST batches `entry[].changes[]`; each `messages` change holds `messages[]` and
`statuses[]`, each its own event:
- a message: id = `wamid`, `raw` = the message object unchanged, `event` = "messages",
  `to` = the business number (`metadata.display_phone_number`), `sender_name` from the
  matching `contacts[]` entry;
- a status: id = `wamid:status`, `raw` = the status object, `event` = "statuses", `error` =
  the first of `errors[]` (code, title, message);
- `smb_message_echoes` (messages sent from the WhatsApp Business app, coexistence): messages
  with `from_me = true`;
- any other change field (`message_template_status_update`, `account_update`, ...) and a
  change's `errors[]`: one `system` event named after the field, `raw` = the change value.
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
from wahookd.providers.payload import (
    as_object,
    flag,
    header,
    hmac_digest,
    ident,
    integer,
    load_json_object,
    query_value,
    text,
    timestamp,
)
from wahookd.settings import SourceSettings

SIGNATURE_HEADER = "X-Hub-Signature-256"
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
SIMPLE_TYPES = ("text", "location", "contacts", "interactive", "button", "reaction")
STATUSES = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "played": "played",
    "pending": "pending",
}


def verify_signature(body: bytes, signature: str | None, secrets: list[bytes]) -> bool:
    """True when `sha256=<hex>` is the HMAC-SHA256 of `body` under one of `secrets`."""
    if not signature or not signature.startswith("sha256="):
        return False
    given = signature[len("sha256=") :].strip().lower().encode("ascii", "replace")
    found = False
    for secret in secrets:
        expected = hmac_digest(secret, body, "sha256").hex().encode()
        found |= hmac.compare_digest(given, expected)
    return found


class MetaProvider(Provider):
    name = "meta"

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        signature = header(request.headers, SIGNATURE_HEADER)
        return verify_signature(request.body, signature, source.secret_values())

    def handshake(self, request: InboundRequest, source: SourceSettings) -> str | None:
        mode = query_value(request.query, "hub.mode")
        token = query_value(request.query, "hub.verify_token")
        challenge = query_value(request.query, "hub.challenge")
        if mode != "subscribe" or token is None or challenge is None:
            return None
        if source.verify_token is None:
            return None
        expected = source.verify_token.get_secret_value().encode()
        return challenge if hmac.compare_digest(token.encode(), expected) else None

    def parse(self, request: InboundRequest, source_name: str, source: SourceSettings) -> list[Event]:
        body = load_json_object(request.body)
        entries = body.get("entry")
        if not isinstance(entries, list):
            raise ParseError("no entry array")
        events: list[Event] = []
        for entry in entries:
            changes = entry.get("changes") if isinstance(entry, dict) else None
            if not isinstance(changes, list):
                raise ParseError("an entry without a changes array")
            for change in changes:
                if not isinstance(change, dict):
                    raise ParseError("a change that is not an object")
                events.extend(_change_events(source_name, change))
        return events

    def sample(self, kind: str) -> tuple[bytes, str]:
        wamid = "wamid.WAHOOKD" + uuid.uuid4().hex.upper()
        now = str(int(time.time()))
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": "15550783881",
                "phone_number_id": "106540352242922",
            },
        }
        if kind == "status":
            value["statuses"] = [
                {
                    "id": wamid,
                    "status": "delivered",
                    "timestamp": now,
                    "recipient_id": "16505551234",
                }
            ]
        else:
            message: dict[str, Any] = {"from": "16505551234", "id": wamid, "timestamp": now}
            if kind == "image":
                message |= {
                    "type": "image",
                    "image": {
                        "mime_type": "image/jpeg",
                        "id": "1234567890123456",
                        "caption": "send-test",
                    },
                }
            else:
                message |= {"type": "text", "text": {"body": "wahookd send-test"}}
            value["contacts"] = [{"profile": {"name": "wahookd"}, "wa_id": "16505551234"}]
            value["messages"] = [message]
        body = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
        }
        return json.dumps(body).encode(), "application/json"

    def sign(self, body: bytes, url: str, source: SourceSettings) -> dict[str, str]:
        secrets = source.secret_values()
        if not secrets:
            return {}
        return {SIGNATURE_HEADER: "sha256=" + hmac_digest(secrets[0], body, "sha256").hex()}


def _change_events(source_name: str, change: dict[str, Any]) -> list[Event]:
    field = text(change.get("field")) or "unknown"
    value = change.get("value")
    if field not in ("messages", "smb_message_echoes") or not isinstance(value, dict):
        return [_system(source_name, field, change)]
    business = phone_digits(get_path(value, "metadata", "display_phone_number"))
    names = _contact_names(value.get("contacts"))
    events: list[Event] = []
    for key, echo in (("messages", False), ("message_echoes", True)):
        messages = value.get(key)
        if isinstance(messages, list):
            for message in messages:
                if not isinstance(message, dict):
                    raise ParseError(f"a {key} item that is not an object")
                events.append(_message(source_name, message, business, names, echo))
    statuses = value.get("statuses")
    if isinstance(statuses, list):
        for status in statuses:
            if not isinstance(status, dict):
                raise ParseError("a statuses item that is not an object")
            events.append(_status(source_name, status, business))
    if value.get("errors") is not None or not events:
        events.append(_system(source_name, field, change))
    return events


def _contact_names(contacts: Any) -> dict[str, str]:
    names: dict[str, str] = {}
    if isinstance(contacts, list):
        for contact in contacts:
            wa_id = ident(get_path(contact, "wa_id"))
            name = text(get_path(contact, "profile", "name"))
            if wa_id and name:
                names[wa_id] = name
    return names


def _message(
    source_name: str,
    message: dict[str, Any],
    business: str | None,
    names: dict[str, str],
    echo: bool,
) -> Event:
    wamid = ident(message.get("id"))
    event = Event(
        id=wamid or content_id("messages", message),
        source=source_name,
        provider="meta",
        kind="message",
        event="smb_message_echoes" if echo else "messages",
        raw=message,
    )
    sender = phone_digits(ident(message.get("from")))
    event.message_id = wamid
    event.from_me = echo
    if echo:
        # An echo is from the business to a customer: the chat is the customer.
        event.sender = sender or business
        event.to = phone_digits(ident(message.get("to")))
        event.chat_id = event.to
    else:
        event.sender = sender
        event.to = business
        event.chat_id = sender
        event.sender_name = names.get(ident(message.get("from")) or "") or (
            next(iter(names.values())) if len(names) == 1 else None
        )
    event.timestamp = timestamp(message.get("timestamp"))
    kind = text(message.get("type")) or "unknown"
    part = as_object(message.get(kind))
    if kind in MEDIA_TYPES:
        event.type = "voice" if kind == "audio" and flag(part.get("voice")) else kind
        event.text = text(part.get("caption"))
        event.media = new_media(
            text(part.get("mime_type")), text(part.get("filename")), integer(part.get("file_size"))
        )
    elif kind in SIMPLE_TYPES:
        event.type = kind
        event.text = _text_of(kind, part)
    else:  # order, system, unsupported, request_welcome, and types Meta adds later
        event.type = "unknown"
        event.text = text(get_path(message, "system", "body"))
    event.error = first_error(message.get("errors"))  # e.g. 131051 "Unsupported message type"
    return event


def _text_of(kind: str, part: dict[str, Any]) -> str | None:
    if kind == "text":
        return text(part.get("body"))
    if kind == "button":
        return text(part.get("text"))
    if kind == "reaction":
        return text(part.get("emoji"))
    if kind == "location":
        return text(part.get("name")) or text(part.get("address"))
    if kind == "interactive":
        for reply in ("button_reply", "list_reply"):
            title = get_path(part, reply, "title")
            if title is not None:
                return text(title)
        return text(get_path(part, "nfm_reply", "body"))
    return None


def _status(source_name: str, status: dict[str, Any], business: str | None) -> Event:
    wamid = ident(status.get("id"))
    name = STATUSES.get(text(status.get("status")) or "")
    if name is None:  # e.g. "deleted": not a delivery state, so a system event
        return _system(source_name, "statuses", status)
    event = Event(
        id=f"{wamid}:{name}" if wamid else content_id("statuses", status),
        source=source_name,
        provider="meta",
        kind="status",
        event="statuses",
        raw=status,
    )
    recipient = phone_digits(ident(status.get("recipient_id")))
    event.message_id = wamid
    event.status = name
    event.from_me = True
    event.sender = business
    event.to = recipient
    event.chat_id = recipient
    event.timestamp = timestamp(status.get("timestamp"))
    event.error = first_error(status.get("errors"))
    return event


def first_error(errors: Any) -> dict[str, Any] | None:
    """Meta's `errors[0]` (on failed statuses, unsupported messages, change values)."""
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return {
            "code": ident(first.get("code")),
            "title": text(first.get("title")),
            "message": text(first.get("message")) or text(get_path(first, "error_data", "details")),
        }
    return None


def _system(source_name: str, field: str, raw: Any) -> Event:
    event = Event(
        id=content_id(field, raw),
        source=source_name,
        provider="meta",
        kind="system",
        event=field,
        raw=raw,
    )
    event.timestamp = timestamp(get_path(raw, "value", "timestamp")) or timestamp(get_path(raw, "timestamp"))
    event.error = first_error(get_path(raw, "value", "errors"))
    return event
