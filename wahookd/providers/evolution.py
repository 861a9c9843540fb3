"""Evolution API (a self-hosted Baileys gateway).

Verification: Evolution signs nothing. A source configures a shared token; the request
carries it in the `source.token_header` header (default `apikey`) or in the body's `apikey`
field (Evolution puts the instance's API key there), compared in constant time against
every configured secret. Pair it with the source's `allow_ips` (checked by the core).

Body: `{"event", "instance", "data", "date_time", "sender", "server_url", "apikey"}`.
Event names arrive as `messages.upsert` or, with "webhook by events", `MESSAGES_UPSERT`;
both are read alike and `event` keeps the provider's spelling.
- `messages.upsert`, `send.message`: `data` is a Baileys message (or an array of them):
  id = `data.key.id`, `raw` = `data` (with `message.base64` when Evolution is set to
  include media), type/text/media from the Baileys content;
- `messages.update`: `data` is `{keyId, remoteJid, fromMe, status}` (v2) or
  `{key, update: {status}}` (v1), or an array: status events, id = `keyId:status`;
- everything else (`connection.update`, `qrcode.updated`, `messages.delete`, `chats.*`,
  `contacts.*`, `groups.*`, `presence.update`, `call`, future names): one `system` event.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, phone_digits
from wahookd.providers import InboundRequest, Provider, constant_time_in, get_path
from wahookd.providers.baileys import (
    MEDIA_TYPES,
    OTHER_TYPES,
    SAMPLE_MEDIA_URL,
    apply_parties,
    classify,
    parties,
    status_name,
)
from wahookd.providers.payload import (
    as_object,
    flag,
    header,
    ident,
    load_json,
    load_json_object,
    text,
    timestamp,
)
from wahookd.settings import SourceSettings

MESSAGE_EVENTS = ("messages.upsert", "send.message", "messages.set")


def event_key(name: str) -> str:
    """`MESSAGES_UPSERT` and `messages.upsert` alike."""
    return name.strip().lower().replace("_", ".")


class EvolutionProvider(Provider):
    name = "evolution"

    def session_up(self, event: Event) -> bool | None:
        # `connection.update` data.state: open, connecting, close
        if event.event.lower().replace("_", ".") != "connection.update" or not isinstance(event.raw, dict):
            return None
        data = event.raw.get("data")
        state = data.get("state") if isinstance(data, dict) else None
        return None if not isinstance(state, str) else state.lower() == "open"

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        secrets = source.secret_values()
        token = header(request.headers, source.token_header)
        if token and constant_time_in(token.encode(), secrets):
            return True
        try:
            body = load_json(request.body)
        except ParseError:
            return False
        apikey = body.get("apikey") if isinstance(body, dict) else None
        return isinstance(apikey, str) and bool(apikey) and constant_time_in(apikey.encode(), secrets)

    def parse(self, request: InboundRequest, source_name: str, source: SourceSettings) -> list[Event]:
        body = load_json_object(request.body)
        name = text(body.get("event"))
        if name is None:
            raise ParseError("no event name")
        key = event_key(name)
        data = body.get("data")
        items = data if isinstance(data, list) else [data]
        events: list[Event | None] = []
        if key in MESSAGE_EVENTS:
            events = [_message(source_name, name, item, body) for item in items]
        elif key == "messages.update":
            events = [_status(source_name, name, item, body) for item in items]
        found = [event for event in events if event is not None]
        if found:
            return found
        # Redeliveries are identical; `date_time` tells two equal updates apart.
        system = Event(
            id=content_id(name, body.get("instance"), body.get("date_time"), data),
            source=source_name,
            provider="evolution",
            kind="system",
            event=name,
            # The envelope's `apikey` is the instance's API credential (and our shared
            # token): it must never reach a sink.
            raw={k: v for k, v in body.items() if k != "apikey"},
        )
        system.timestamp = timestamp(body.get("date_time"))
        return [system]

    def sample(self, kind: str) -> tuple[bytes, str]:
        message_id = "3EB0" + uuid.uuid4().hex[:16].upper()
        now = int(time.time())
        jid = "5511999999999@s.whatsapp.net"
        if kind == "status":
            event = "messages.update"
            data: dict[str, Any] = {
                "keyId": message_id,
                "remoteJid": jid,
                "fromMe": True,
                "status": "DELIVERY_ACK",
                "instanceId": "wahookd",
            }
        else:
            event = "messages.upsert"
            message: dict[str, Any] = {"conversation": "wahookd send-test"}
            message_type = "conversation"
            if kind == "image":
                message_type = "imageMessage"
                message = {
                    "imageMessage": {
                        "url": SAMPLE_MEDIA_URL,
                        "mimetype": "image/jpeg",
                        "caption": "wahookd send-test image",
                        "fileLength": "13",
                    }
                }
            data = {
                "key": {"remoteJid": jid, "fromMe": False, "id": message_id},
                "pushName": "wahookd",
                "message": message,
                "messageType": message_type,
                "messageTimestamp": now,
                "instanceId": "wahookd",
                "source": "android",
            }
        body = {
            "event": event,
            "instance": "wahookd",
            "data": data,
            "date_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)),
            "sender": "5511888888888@s.whatsapp.net",
            "apikey": None,
        }
        return json.dumps(body).encode(), "application/json"

    def sign(self, body: bytes, url: str, source: SourceSettings) -> dict[str, str]:
        secrets = source.secret_values()
        return {source.token_header: secrets[0].decode()} if secrets else {}


def _message(source_name: str, name: str, data: Any, body: dict[str, Any]) -> Event | None:
    if not isinstance(data, dict):
        return None
    who = parties(data.get("key"))
    content = classify(data.get("message"))
    event = Event(
        id=who.message_id or content_id(name, data),
        source=source_name,
        provider="evolution",
        kind="message",
        event=name,
        raw=data,
    )
    apply_parties(event, who)
    if event.from_me is None and event_key(name) == "send.message":
        event.from_me = True
    if event.from_me:
        # The envelope's `sender` is the instance's own number: who sent it.
        event.sender = phone_digits(text(body.get("sender")))
    event.sender_name = text(data.get("pushName"))
    event.type, event.text, event.media = content.type, content.text, content.media
    if event.type == "unknown":
        # Evolution names the content key in `messageType` even when `message` is trimmed.
        declared = text(data.get("messageType")) or ""
        event.type = {**OTHER_TYPES, **MEDIA_TYPES}.get(declared, "unknown")
    event.timestamp = timestamp(data.get("messageTimestamp")) or timestamp(body.get("date_time"))
    return event


def _status(source_name: str, name: str, data: Any, body: dict[str, Any]) -> Event | None:
    if not isinstance(data, dict):
        return None
    raw_status = data.get("status")
    if raw_status is None:
        raw_status = get_path(data, "update", "status")
    status = status_name(raw_status)
    if status is None:
        return None  # DELETED, an edit, ...: a system event
    key = as_object(data.get("key"))
    message_id = ident(data.get("keyId")) or ident(key.get("id"))
    remote = text(data.get("remoteJid")) or text(key.get("remoteJid"))
    event = Event(
        id=f"{message_id}:{status}" if message_id else content_id(name, data),
        source=source_name,
        provider="evolution",
        kind="status",
        event=name,
        raw=data,
    )
    event.message_id = message_id
    event.status = status
    event.chat_id = phone_digits(remote)
    event.to = event.chat_id
    event.from_me = flag(data.get("fromMe"))
    if event.from_me is None:
        event.from_me = flag(key.get("fromMe"))
    if event.from_me:
        event.sender = phone_digits(text(body.get("sender")))
    event.timestamp = timestamp(data.get("dateTime")) or timestamp(body.get("date_time"))
    if status == "failed":
        event.error = {"code": "ERROR", "message": None}
    return event
