"""WasenderAPI: a hosted Baileys gateway.

Verification: the `X-Webhook-Signature` header carries the webhook secret itself (it is not
an HMAC), compared in constant time against every configured secret.

Body: `{"event": ..., "timestamp": ..., "sessionId": ..., "data": ...}`. Wasender's shapes
vary (SPEC §3), all accepted:
- message events (`messages.received`, `messages.upsert`, `messages-personal.received` /
  `message.personal.received`, `messages-group.received`, `message.sent`, ...): the Baileys
  message(s) are in `data.messages` as an array or a single object, or directly in `data`;
- `messages.update`: `data` is `{key, update: {status}}` or an array of them; status 0-5 or
  its Baileys name;
- `message-receipt.update`: `{key, receipt: {readTimestamp | receiptTimestamp | ...}}`;
- `messages.reaction`: `{key, reaction: {text, key}}`;
- anything else (`session.status`, `qrcode.updated`, `chats.*`, `contacts.*`, `groups.*`,
  `call.*`, `webhook.test`, future names) is one `system` event.
`timestamp` is seconds in some events and milliseconds in others; `rfc3339` tells them apart.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, phone_digits
from wahookd.providers import InboundRequest, Provider, constant_time_in
from wahookd.providers.baileys import SAMPLE_MEDIA_URL, apply_parties, classify, parties, status_name
from wahookd.providers.payload import header, ident, load_json_object, text, timestamp
from wahookd.settings import SourceSettings

SIGNATURE_HEADER = "X-Webhook-Signature"


def as_list(value: Any) -> list[Any]:
    """Wasender sends one item or an array of them."""
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


class WasenderProvider(Provider):
    name = "wasender"

    def session_up(self, event: Event) -> bool | None:
        # `session.status` data.status: connected, disconnected, need_scan, logged_out, ...
        if event.event != "session.status" or not isinstance(event.raw, dict):
            return None
        status = event.raw.get("status")
        return None if not isinstance(status, str) else status.lower() == "connected"

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        signature = header(request.headers, SIGNATURE_HEADER)
        if not signature:
            return False
        return constant_time_in(signature.encode(), source.secret_values())

    def parse(self, request: InboundRequest, source_name: str, source: SourceSettings) -> list[Event]:
        body = load_json_object(request.body)
        event_name = text(body.get("event"))
        if event_name is None:
            raise ParseError("no event name")
        data = body.get("data")
        envelope_time = body.get("timestamp")
        words = event_name.lower().replace("-", ".").split(".")
        builder = _Builder(source_name, event_name, envelope_time, body)
        found: list[Event | None]
        if "receipt" in event_name.lower():
            found = [builder.receipt(item) for item in as_list(data)]
        elif "update" in words and ("messages" in words or "message" in words):
            found = [builder.update(item) for item in as_list(data)]
        elif "reaction" in words or "reactions" in words:
            found = [builder.reaction(item) for item in as_list(data)]
        elif "messages" in words or "message" in words:
            found = [builder.message(item) for item in _messages_of(data)]
        else:
            found = []
        events = [event for event in found if event is not None]
        if not events:
            events = [builder.system(data)]
        return events

    def sample(self, kind: str) -> tuple[bytes, str]:
        message_id = "3EB0" + uuid.uuid4().hex[:16].upper()
        now = int(time.time())
        key = {"id": message_id, "fromMe": False, "remoteJid": "15550001111@s.whatsapp.net"}
        if kind == "status":
            key["fromMe"] = True
            body: dict[str, Any] = {
                "event": "messages.update",
                "timestamp": now * 1000,
                "data": {"key": key, "update": {"status": 3}},
            }
        else:
            if kind == "image":
                content: dict[str, Any] = {
                    "imageMessage": {
                        "url": SAMPLE_MEDIA_URL,
                        "mimetype": "image/jpeg",
                        "caption": "wahookd send-test image",
                        "fileLength": "13",
                        "mediaKey": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                    }
                }
            else:
                content = {"conversation": "wahookd send-test"}
            body = {
                "event": "messages.received",
                "timestamp": now,
                "data": {
                    "messages": {
                        "key": key,
                        "pushName": "wahookd",
                        "messageTimestamp": now,
                        "message": content,
                    }
                },
            }
        return json.dumps(body).encode(), "application/json"

    def sign(self, body: bytes, url: str, source: SourceSettings) -> dict[str, str]:
        secrets = source.secret_values()
        return {SIGNATURE_HEADER: secrets[0].decode()} if secrets else {}


def _messages_of(data: Any) -> list[Any]:
    if not isinstance(data, dict):
        return as_list(data) if isinstance(data, list) else []
    if "messages" in data:
        return as_list(data["messages"])
    if "key" in data or "message" in data:
        return [data]  # the message directly under `data`
    return []


class _Builder:
    """Makes the events of one Wasender request."""

    def __init__(self, source_name: str, event_name: str, envelope_time: Any, body: dict[str, Any]) -> None:
        self.body = body
        self.source = source_name
        self.event = event_name
        self.envelope_time = envelope_time

    def _event(self, event_id: str, kind: str, raw: Any) -> Event:
        return Event(
            id=event_id,
            source=self.source,
            provider="wasender",
            kind=kind,
            event=self.event,
            raw=raw,
        )

    def message(self, item: Any) -> Event | None:
        if not isinstance(item, dict):
            return None
        who = parties(item.get("key"))
        content = classify(item.get("message"))
        event = self._event(who.message_id or content_id(self.event, item), "message", item)
        apply_parties(event, who)
        event.sender_name = text(item.get("pushName"))
        event.type = content.type
        # `messageBody` is Wasender's own flattening of the text.
        event.text = content.text or text(item.get("messageBody"))
        event.media = content.media
        event.timestamp = timestamp(item.get("messageTimestamp")) or timestamp(self.envelope_time)
        return event

    def _status(self, item: dict[str, Any], status: str, moment: Any) -> Event:
        who = parties(item.get("key"))
        event_id = f"{who.message_id}:{status}" if who.message_id else content_id(self.event, item)
        event = self._event(event_id, "status", item)
        event.message_id = who.message_id
        event.chat_id, event.to, event.from_me = who.chat_id, who.chat_id, who.from_me
        event.status = status
        event.timestamp = timestamp(moment) or timestamp(self.envelope_time)
        return event

    def update(self, item: Any) -> Event | None:
        if not isinstance(item, dict):
            return None
        update = item.get("update")
        raw_status = update.get("status") if isinstance(update, dict) else item.get("status")
        status = status_name(raw_status)
        if status is None:
            return None  # an edit or a poll update: kept as a system event
        event = self._status(item, status, None)
        if status == "failed" and isinstance(update, dict):
            event.error = {"code": ident(update.get("statusCode")) or "ERROR", "message": None}
        return event

    def receipt(self, item: Any) -> Event | None:
        if not isinstance(item, dict):
            return None
        receipt = item.get("receipt")
        if not isinstance(receipt, dict):
            return None
        for field, status in (
            ("playedTimestamp", "played"),
            ("readTimestamp", "read"),
            ("receiptTimestamp", "delivered"),
        ):
            if receipt.get(field) is not None:
                event = self._status(item, status, receipt.get(field))
                # In a group each member's receipt names that member.
                event.to = phone_digits(text(receipt.get("userJid"))) or event.to
                return event
        return None

    def reaction(self, item: Any) -> Event | None:
        if not isinstance(item, dict):
            return None
        reaction = item.get("reaction")
        if not isinstance(reaction, dict):
            return self.message(item)
        # `key` is the message reacted to; `reaction.key` is the reaction message itself.
        own = parties(reaction.get("key"))
        target = parties(item.get("key"))
        event_id = own.message_id or content_id(self.event, item)
        event = self._event(event_id, "message", item)
        event.message_id = own.message_id
        event.chat_id = target.chat_id
        event.sender = own.sender if own.chat_id else target.sender
        event.from_me = own.from_me
        event.type = "reaction"
        event.text = text(reaction.get("text"))
        event.timestamp = timestamp(reaction.get("senderTimestampMs")) or timestamp(self.envelope_time)
        return event

    def system(self, data: Any) -> Event:
        # The whole body identifies a system event: a redelivery is identical, while the same
        # status reported twice at different times differs in its envelope timestamp.
        event = self._event(content_id(self.body), "system", data)
        moment = data.get("timestamp") if isinstance(data, dict) else None
        event.timestamp = timestamp(moment) or timestamp(self.envelope_time)
        return event
