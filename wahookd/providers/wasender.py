"""WasenderAPI: a hosted Baileys gateway.

Verification: the `X-Webhook-Signature` header carries the webhook secret itself (it is not
an HMAC), compared in constant time against every configured secret.

Body: `{"event": ..., "timestamp": ..., "sessionId": ..., "data": ...}`. Wasender's shapes
vary (SPEC §3), all accepted:
- message events (`messages.received`, `messages.upsert`, `messages-personal.received` /
  `message.personal.received`, `messages-group.received`, `messages-newsletter.received`,
  `message.sent`, ...): the Baileys message(s) are in `data.messages` as an array or a single
  object, or directly in `data`. Edits, deletions for everyone and poll votes arrive as such
  messages too (`protocolMessage`, `pollUpdateMessage`; see `wahookd.providers.baileys`);
- `messages.update`: `data` is `{key, update: {...}}` or an array of them: a `status` (0-5 or
  its Baileys name) is a status event, an edited `message` an `edit`, a `message: null` or
  `messageStubType: 1` a `revoke`, `pollUpdates` a `poll_vote`;
- `messages.delete`: the deleted message's key (`data.key`, `data.keys[]`, or `data` itself):
  `revoke` messages;
- `message-receipt.update`: `{key, receipt: {readTimestamp | receiptTimestamp | ...}}`, or
  the same under `data.message` (the shape on Wasender's own page); in a group each member's
  receipt is its own status event naming the group in `chat_id` and the member in `to`;
- `messages.reaction`: `{key, reaction: {text, key}}` (an empty `text` removes it);
- `call*` events with Baileys call objects (`{id, from, status, isVideo, ...}`): `call` events;
- anything else (`session.status`, `qrcode.updated`, `chats.*`, `contacts.*`, `groups.*`,
  `group-participants.update`, `presence.update`, `webhook.test`, future names) is one
  `system` event (`chat_id` names the group or chat it concerns when `data` says).
`timestamp` is seconds in some events and milliseconds in others; `rfc3339` tells them apart.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, new_call, new_poll, phone_digits
from wahookd.media.retrieval import MediaFetch, Retrieved
from wahookd.providers import InboundRequest, Provider, baileys, constant_time_in, get_path
from wahookd.providers.baileys import (
    CALL_STATUSES,
    SAMPLE_MEDIA_URL,
    apply_parties,
    classify,
    is_lid,
    parties,
    phone_of,
    status_name,
    system_chat,
)
from wahookd.providers.payload import flag, header, ident, integer, load_json_object, text, timestamp
from wahookd.settings import SourceSettings

SIGNATURE_HEADER = "X-Webhook-Signature"
STUB_REVOKE = 1  # Baileys `WAMessageStubType.REVOKE`


def as_list(value: Any) -> list[Any]:
    """Wasender sends one item or an array of them."""
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


class WasenderProvider(Provider):
    name = "wasender"
    media_hosts = baileys.WHATSAPP_MEDIA_HOSTS

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
        elif "delete" in words and ("messages" in words or "message" in words):
            found = [builder.deleted(key) for key in _keys_of(data)]
        elif "reaction" in words or "reactions" in words:
            found = [builder.reaction(item) for item in as_list(data)]
        elif words[0] in ("call", "calls"):
            found = [builder.call(item) for item in as_list(data)]
        elif "messages" in words or "message" in words:
            found = [builder.message(item) for item in _messages_of(data)]
        else:
            found = []
        events = [event for event in found if event is not None]
        if not events:
            events = [builder.system(data)]
        return events

    async def fetch_media(self, event: dict[str, Any], fetch: MediaFetch) -> Retrieved:
        return await baileys.fetch_media(event.get("raw"), fetch)

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


def _keys_of(data: Any) -> list[Any]:
    """The keys of deleted messages: `data.keys[]`, `data.key`, `data` itself, or a list."""
    if isinstance(data, list):
        return [key for item in data for key in _keys_of(item)]
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("keys"), list):
        return data["keys"]
    if isinstance(data.get("key"), dict):
        return [data["key"]]
    return [data] if "id" in data else []


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
        flattened = text(item.get("messageBody"))
        event.text = content.text if content.type == "reaction" else content.text or flattened
        event.media = content.media
        event.ref_message_id, event.reply_to = content.ref_message_id, content.reply_to
        event.poll, event.referral = content.poll, content.referral
        event.timestamp = timestamp(item.get("messageTimestamp")) or timestamp(self.envelope_time)
        return event

    def _status(self, item: dict[str, Any], status: str, moment: Any, member: str | None = None) -> Event:
        who = parties(item.get("key"))
        if who.message_id:
            # Each member of a group reads a message on their own: one event per member.
            event_id = f"{who.message_id}:{status}" + (f":{member}" if member else "")
        else:
            event_id = content_id(self.event, item)
        event = self._event(event_id, "status", item)
        event.message_id = who.message_id
        event.chat_id, event.to, event.from_me = who.chat_id, member or who.chat_id, who.from_me
        event.status = status
        event.timestamp = timestamp(moment) or timestamp(self.envelope_time)
        return event

    def update(self, item: Any) -> Event | None:
        if not isinstance(item, dict):
            return None
        update = item.get("update")
        raw_status = update.get("status") if isinstance(update, dict) else item.get("status")
        status = status_name(raw_status)
        if status is not None:
            event = self._status(item, status, None)
            if status == "failed" and isinstance(update, dict):
                event.error = {"code": ident(update.get("statusCode")) or "ERROR", "message": None}
            return event
        if isinstance(update, dict):
            return self._changed(item, update)
        return None

    def _changed(self, item: dict[str, Any], update: dict[str, Any]) -> Event | None:
        """An edit, a deletion for everyone or a poll vote reported as a message update."""
        who = parties(item.get("key"))
        target = who.message_id
        if target is None:
            return None
        message = update.get("message")
        if ("message" in update and message is None) or integer(update.get("messageStubType")) == STUB_REVOKE:
            event = self._event(f"{target}:revoke", "message", item)
            event.type = "revoke"
        elif isinstance(message, dict) and (content := classify(message)).type == "edit":
            target = content.ref_message_id or target
            moment = get_path(baileys.unwrap(message), "protocolMessage", "timestampMs")
            marker = ident(moment) or content_id(content.text)
            event = self._event(f"{target}:edit:{marker}", "message", item)
            event.type, event.text = "edit", content.text
            event.timestamp = timestamp(moment)
        elif isinstance(update.get("pollUpdates"), list):
            event = self._event(content_id("poll_vote", target, update["pollUpdates"]), "message", item)
            # Baileys reports the chosen options as hashes of their names: not names.
            event.type, event.poll = "poll_vote", new_poll(None, None, None)
        else:
            return None
        event.ref_message_id = target
        event.chat_id, event.from_me, event.from_lid = who.chat_id, who.from_me, who.from_lid
        event.sender = who.sender
        event.to = who.to
        event.timestamp = event.timestamp or timestamp(self.envelope_time)
        return event

    def deleted(self, key: Any) -> Event | None:
        if not isinstance(key, dict):
            return None
        who = parties(key)
        if who.message_id is None:
            return None
        event = self._event(f"{who.message_id}:revoke", "message", key)
        event.type, event.ref_message_id = "revoke", who.message_id
        event.chat_id, event.from_me, event.sender, event.to = who.chat_id, who.from_me, who.sender, who.to
        event.from_lid = who.from_lid
        event.timestamp = timestamp(self.envelope_time)
        return event

    def receipt(self, item: Any) -> Event | None:
        if not isinstance(item, dict):
            return None
        if not isinstance(item.get("receipt"), dict) and isinstance(item.get("message"), dict):
            # Wasender's page shows the receipt one level down: `data.message.{key, receipt}`.
            inner = item["message"]
            if isinstance(inner.get("receipt"), dict):
                item = {**inner, **{k: v for k, v in item.items() if k != "message"}}
        receipt = item.get("receipt")
        if not isinstance(receipt, dict):
            return None
        for field, status in (
            ("playedTimestamp", "played"),
            ("readTimestamp", "read"),
            ("receiptTimestamp", "delivered"),
        ):
            if receipt.get(field) is not None:
                # In a group each member's receipt names that member.
                user = text(receipt.get("userJid"))
                member = phone_of(user) or (user if is_lid(user) else None)
                return self._status(item, status, receipt.get(field), member)
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
        event.from_lid = own.from_lid if own.chat_id else target.from_lid
        event.from_me = own.from_me
        event.type = "reaction"
        event.ref_message_id = target.message_id
        # No emoji is a reaction taken back (SPEC §4: `text` is "").
        event.text = reaction.get("text") if isinstance(reaction.get("text"), str) else ""
        event.timestamp = timestamp(reaction.get("senderTimestampMs")) or timestamp(self.envelope_time)
        return event

    def call(self, item: Any) -> Event | None:
        """A Baileys call object: `{id, from, chatId, status, isVideo, isGroup, date}`."""
        if not isinstance(item, dict):
            return None
        call_id = ident(item.get("id"))
        status = CALL_STATUSES.get((text(item.get("status")) or "").lower())
        if call_id is None or status is None:
            return None
        event = self._event(f"{call_id}:{status}", "call", item)
        caller = text(item.get("from"))
        group = text(item.get("groupJid"))
        event.chat_id = phone_digits(group or text(item.get("chatId")) or caller)
        event.sender = phone_of(caller)
        event.from_lid = caller if is_lid(caller) else None
        event.from_me = flag(item.get("fromMe"))
        event.call = new_call(call_id, status, flag(item.get("isVideo")), None)
        event.timestamp = timestamp(item.get("date")) or timestamp(self.envelope_time)
        return event

    def system(self, data: Any) -> Event:
        # The whole body identifies a system event: a redelivery is identical, while the same
        # status reported twice at different times differs in its envelope timestamp.
        event = self._event(content_id(self.body), "system", data)
        moment = data.get("timestamp") if isinstance(data, dict) else None
        event.timestamp = timestamp(moment) or timestamp(self.envelope_time)
        event.chat_id = system_chat(data)
        return event
