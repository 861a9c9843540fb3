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
  include media), type/text/media/references from the Baileys content (reactions, polls,
  poll votes, edits and deletions as Baileys carries them, `wahookd.providers.baileys`);
- `messages.update`: `data` is `{keyId, remoteJid, fromMe, status}` (v2) or
  `{key, update: {status}}` (v1), or an array: status events, id = `keyId:status`; status
  `DELETED` is a `revoke` of `keyId`; `pollUpdates` (Evolution's tally, `[{name, voters}]`) a
  `poll_vote` whose `poll.options` are the results;
- `messages.edited`: `data` is the Baileys `protocolMessage` `{key, editedMessage,
  timestampMs}`: an `edit` of `key.id`;
- `messages.delete`: `data` is the deleted message's key: a `revoke` of `key.id`;
- `call`: `data` is a Baileys call `{id, from, status, isVideo, isGroup, date}`: a `call`;
- everything else (`connection.update`, `qrcode.updated`, `chats.*`, `contacts.*`,
  `groups.*`, `group-participants.update`, `presence.update`, `labels.*`, future names): one
  `system` event, `chat_id` naming the group or chat when `data` does.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, new_call, new_poll, phone_digits
from wahookd.media import retrieval
from wahookd.media.retrieval import MediaFetch, Retrieved
from wahookd.providers import InboundRequest, Provider, baileys, constant_time_in, get_path
from wahookd.providers.baileys import (
    CALL_STATUSES,
    MEDIA_TYPES,
    OTHER_TYPES,
    SAMPLE_MEDIA_URL,
    apply_parties,
    classify,
    is_lid,
    parties,
    phone_of,
    status_name,
    system_chat,
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
    media_hosts = baileys.WHATSAPP_MEDIA_HOSTS

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
            events = [_update(source_name, name, item, body) for item in items]
        elif key == "messages.edited":
            events = [_edited(source_name, name, item, body) for item in items]
        elif key == "messages.delete":
            events = [_deleted(source_name, name, item, body) for item in items]
        elif key == "call":
            events = [_call(source_name, name, item, body) for item in items]
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
        system.chat_id = system_chat(data)
        return [system]

    async def fetch_media(self, event: dict[str, Any], fetch: MediaFetch) -> Retrieved:
        raw = event.get("raw")
        # With `webhook_base64` Evolution inlines the file as `message.base64`.
        for path in (("message", "base64"), ("data", "message", "base64")):
            inline = get_path(raw, *path)
            if isinstance(inline, str) and inline:
                return await retrieval.save_base64(fetch, inline)
        return await baileys.fetch_media(raw, fetch)

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
    event.ref_message_id, event.reply_to = content.ref_message_id, content.reply_to
    event.poll, event.referral = content.poll, content.referral
    if event.reply_to is None:
        # Evolution copies the message's `contextInfo` next to it.
        event.reply_to = ident(get_path(data, "contextInfo", "stanzaId"))
    if event.type == "unknown":
        # Evolution names the content key in `messageType` even when `message` is trimmed.
        declared = text(data.get("messageType")) or ""
        event.type = {**OTHER_TYPES, **MEDIA_TYPES}.get(declared, "unknown")
    event.timestamp = timestamp(data.get("messageTimestamp")) or timestamp(body.get("date_time"))
    return event


def _update(source_name: str, name: str, data: Any, body: dict[str, Any]) -> Event | None:
    if not isinstance(data, dict):
        return None
    raw_status = data.get("status")
    if raw_status is None:
        raw_status = get_path(data, "update", "status")
    if isinstance(raw_status, str) and raw_status.strip().upper() == "DELETED":
        return _deleted(source_name, name, data, body)
    if isinstance(data.get("pollUpdates"), list):
        return _poll_vote(source_name, name, data, body)
    status = status_name(raw_status)
    if status is None:
        return None  # an edit reported as an update, ...: a system event
    key = as_object(data.get("key"))
    message_id = ident(data.get("keyId")) or ident(key.get("id"))
    remote = text(data.get("remoteJid")) or text(key.get("remoteJid"))
    chat = phone_digits(remote)
    participant = text(data.get("participant")) or text(key.get("participant"))
    # In a group each member's receipt names that member: one event per member.
    member = None
    if (remote or "").endswith("@g.us") and participant and "@g.us" not in participant:
        member = phone_of(participant) or (participant if is_lid(participant) else None)
    event_id = f"{message_id}:{status}" + (f":{member}" if member else "")
    event = Event(
        id=event_id if message_id else content_id(name, data),
        source=source_name,
        provider="evolution",
        kind="status",
        event=name,
        raw=data,
    )
    event.message_id = message_id
    event.status = status
    event.chat_id = chat
    event.to = member or chat
    event.from_me = _from_me(data, key)
    if event.from_me:
        event.sender = phone_digits(text(body.get("sender")))
    event.timestamp = timestamp(data.get("dateTime")) or timestamp(body.get("date_time"))
    if status == "failed":
        event.error = {"code": "ERROR", "message": None}
    return event


def _from_me(data: dict[str, Any], key: dict[str, Any]) -> bool | None:
    found = flag(data.get("fromMe"))
    return flag(key.get("fromMe")) if found is None else found


def _acted_on(
    source_name: str, name: str, data: dict[str, Any], body: dict[str, Any], event_id: str, kind: str
) -> Event:
    """A message event that acts on another message: `ref_message_id` is that message."""
    key = as_object(data.get("key")) or data
    who = parties(key)
    target = ident(data.get("keyId")) or who.message_id
    event = Event(id=event_id, source=source_name, provider="evolution", kind="message", event=name, raw=data)
    event.type, event.ref_message_id = kind, target
    remote = text(data.get("remoteJid"))
    event.chat_id = phone_digits(remote) if remote else who.chat_id
    event.from_me = _from_me(data, key)
    event.sender, event.to, event.from_lid = who.sender, who.to, who.from_lid
    if event.from_me:
        event.sender = phone_digits(text(body.get("sender")))
    event.timestamp = timestamp(data.get("dateTime")) or timestamp(body.get("date_time"))
    return event


def _deleted(source_name: str, name: str, data: Any, body: dict[str, Any]) -> Event | None:
    """A deletion for everyone: the key (v2 `messages.delete`), `{key}` or a `DELETED` update."""
    if not isinstance(data, dict):
        return None
    key = as_object(data.get("key")) or data
    target = ident(data.get("keyId")) or ident(key.get("id"))
    if target is None:
        return None
    return _acted_on(source_name, name, data, body, f"{target}:revoke", "revoke")


def _edited(source_name: str, name: str, data: Any, body: dict[str, Any]) -> Event | None:
    """`messages.edited`: the Baileys `protocolMessage` of the edit."""
    if not isinstance(data, dict) or not isinstance(data.get("key"), dict):
        return None
    target = ident(get_path(data, "key", "id"))
    if target is None:
        return None
    edited = classify(data.get("editedMessage") or data.get("message"))
    moment = data.get("timestampMs") or data.get("messageTimestamp")
    marker = ident(moment) if ident(moment) else content_id(edited.text)
    event = _acted_on(source_name, name, data, body, f"{target}:edit:{marker}", "edit")
    event.text = edited.text
    event.timestamp = timestamp(moment) or event.timestamp
    return event


def _poll_vote(source_name: str, name: str, data: dict[str, Any], body: dict[str, Any]) -> Event | None:
    """Evolution's poll tally on an update: `pollUpdates: [{name, voters: [jid, ...]}]`."""
    key = as_object(data.get("key"))
    target = ident(data.get("keyId")) or ident(key.get("id"))
    if target is None:
        return None
    results, chosen = [], []
    voter = text(data.get("participant")) or text(key.get("participant")) or text(data.get("remoteJid"))
    for option in data["pollUpdates"]:
        option_name = text(get_path(option, "name"))
        voters = get_path(option, "voters")
        voters = voters if isinstance(voters, list) else []
        results.append({"name": option_name, "votes": len(voters)})
        if voter and voter in voters and option_name:
            chosen.append(option_name)
    event_id = content_id("poll_vote", target, data["pollUpdates"])
    event = _acted_on(source_name, name, data, body, event_id, "poll_vote")
    event.poll = new_poll(None, results, chosen if voter else None)
    return event


def _call(source_name: str, name: str, data: Any, body: dict[str, Any]) -> Event | None:
    """A Baileys call object, as Evolution forwards it."""
    if not isinstance(data, dict):
        return None
    call_id = ident(data.get("id"))
    status = CALL_STATUSES.get((text(data.get("status")) or "").lower())
    if call_id is None or status is None:
        return None  # a raw `CB:call` packet (websocket only) or a future shape: system
    event = Event(
        id=f"{call_id}:{status}", source=source_name, provider="evolution", kind="call", event=name, raw=data
    )
    caller = text(data.get("from"))
    event.chat_id = phone_digits(text(data.get("groupJid")) or text(data.get("chatId")) or caller)
    event.sender = phone_of(caller)
    event.from_lid = caller if is_lid(caller) else None
    event.from_me = False
    event.call = new_call(call_id, status, flag(data.get("isVideo")), None)
    event.timestamp = timestamp(data.get("date")) or timestamp(body.get("date_time"))
    return event
