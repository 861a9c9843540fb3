"""Meta WhatsApp Cloud API (also 360dialog, which forwards Meta's payloads unchanged).

Verification: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`. Meta
escapes non-ASCII as `\\uXXXX`, so only the raw bytes verify, never re-serialised JSON.
GET handshake: `hub.mode=subscribe`, `hub.verify_token`, echo `hub.challenge`.

One POST batches `entry[].changes[]`; each `messages` change holds `messages[]` and
`statuses[]`, each its own event:
- a message: id = `wamid`, `raw` = the message object unchanged, `event` = "messages",
  `to` = the business number (`metadata.display_phone_number`), `sender_name` and
  `from_user_id` (the business-scoped user id, BSUID) from the message and the matching
  `contacts[]` entry; `context.id` is the quoted message of a reply, `referral` the
  Click-to-WhatsApp ad. `reaction` (`reaction.message_id`; no emoji removes it), `edit` and
  `revoke` (`original_message_id`) act on another message; `order` is a cart; a `system`
  message (a user's new number or user id) is a `system` event; a Groups API message
  (`group_id`) has the group as its chat;
- a status: id = `wamid:status` (`:member` for a group member's), `raw` = the status object,
  `event` = "statuses", `error` = the first of `errors[]` (code, title, message); a group
  status names the group in `chat_id` and the member in `to`;
- `smb_message_echoes` (messages sent from the WhatsApp Business app, coexistence): messages
  with `from_me = true`;
- `calls` (Calling API): each `calls[]` item (`connect`, `terminate`) and each call status
  (`statuses[]` with `type: "call"`: RINGING, ACCEPTED, REJECTED) is a `call` event, id =
  `wacid:status`;
- any other change field (`message_template_status_update`, `account_update`,
  `phone_number_quality_update`, `group_*_update`, `user_preferences`, ...) and a change's
  `errors[]`: one `system` event named after the field, `raw` = the change.
Media: the id in the message is looked up on the Graph API (bearer `access_token`), then the
URL it answers is downloaded with the same token and checked against the lookup's `sha256`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
import uuid
from typing import Any

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, new_call, new_media, phone_digits
from wahookd.media import retrieval
from wahookd.media.errors import MediaError, MediaIntegrityError
from wahookd.media.retrieval import MediaFetch, Retrieved, secret_text
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
META_GRAPH = "https://graph.facebook.com/v21.0"
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
SIMPLE_TYPES = ("text", "location", "contacts", "interactive", "button")
CALL_STATUSES = {
    "ringing": "ringing",
    "accepted": "accepted",
    "rejected": "rejected",
    "completed": "ended",
    "failed": "failed",
    "missed": "missed",
}
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
    # The Graph API, and the CDN its media URLs point at.
    media_hosts = ("graph.facebook.com", "lookaside.fbsbx.com", "*.fbsbx.com", "*.fbcdn.net")

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
                events.extend(_change_events(source_name, change, entry.get("time")))
        return events

    async def fetch_media(self, event: dict[str, Any], fetch: MediaFetch) -> Retrieved:
        token = secret_text(fetch.source.access_token)
        if not token:
            raise MediaError("source has no access_token for the Graph API")
        headers = {"Authorization": f"Bearer {token}"}
        base = (fetch.source.api_url or META_GRAPH).rstrip("/")
        answer = await retrieval.get_json(fetch, f"{base}/{media_id(event.get('raw'))}", headers)
        url = answer.get("url") if isinstance(answer, dict) else None
        if not isinstance(url, str) or not url:
            raise MediaError("Graph API answer has no media url", retry=True)
        found = await retrieval.download(fetch, url, headers)
        expected = answer.get("sha256")
        if (
            isinstance(expected, str)
            and expected
            and not digest_matches(expected, bytes.fromhex(found.sha256))
        ):
            found.path.unlink(missing_ok=True)
            raise MediaIntegrityError("sha256 mismatch", retry=True)
        mime = answer.get("mime_type") if isinstance(answer.get("mime_type"), str) else None
        return Retrieved(found.path, found.sha256, found.size, mime or found.content_type)

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


def media_id(raw: Any) -> str:
    """The media id of a message (or of an edit's new content), digits as Meta issues them."""
    kind = get_path(raw, "type")
    candidates = [raw, get_path(raw, "edit", "message")]
    for message in candidates:
        declared = get_path(message, "type")
        kinds = (declared, kind, *MEDIA_TYPES) if isinstance(declared, str) else (kind, *MEDIA_TYPES)
        for name in kinds:
            found = get_path(message, name, "id") if isinstance(name, str) else None
            if found is not None:
                found = str(found)
                # The id becomes part of a URL path: digits only, as Meta issues them.
                if not re.fullmatch(r"[0-9]{1,40}", found):
                    raise MediaError("media id is not numeric")
                return found
    raise MediaError("no media id in the message")


def digest_matches(expected: str, digest: bytes) -> bool:
    """Meta's ``sha256`` has been seen both as hex and as base64: accept either."""
    given = expected.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", given):
        return hmac.compare_digest(given.lower(), digest.hex())
    try:
        decoded = base64.b64decode(given + "=" * (-len(given) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, digest)


def _change_events(source_name: str, change: dict[str, Any], entry_time: Any = None) -> list[Event]:
    field = text(change.get("field")) or "unknown"
    value = change.get("value")
    if field not in ("messages", "smb_message_echoes", "calls") or not isinstance(value, dict):
        return [_system(source_name, field, change, entry_time)]
    business = phone_digits(get_path(value, "metadata", "display_phone_number"))
    people = _contacts(value.get("contacts"))
    events: list[Event] = []
    for key, echo in (("messages", False), ("message_echoes", True)):
        messages = value.get(key)
        if isinstance(messages, list):
            for message in messages:
                if not isinstance(message, dict):
                    raise ParseError(f"a {key} item that is not an object")
                events.append(_message(source_name, message, business, people, echo, field))
    calls = value.get("calls")
    if isinstance(calls, list):
        for call in calls:
            if not isinstance(call, dict):
                raise ParseError("a calls item that is not an object")
            events.append(_call(source_name, call, business, people, value.get("errors")))
    statuses = value.get("statuses")
    if isinstance(statuses, list):
        for status in statuses:
            if not isinstance(status, dict):
                raise ParseError("a statuses item that is not an object")
            events.append(_status(source_name, status, business))
    if value.get("errors") is not None or not events:
        events.append(_system(source_name, field, change, entry_time))
    return events


class _Contacts:
    """The change's `contacts[]`: profile names and business-scoped user ids by `wa_id`."""

    def __init__(self, names: dict[str, str], user_ids: dict[str, str]) -> None:
        self.names = names
        self.user_ids = user_ids

    def name_of(self, wa_id: str | None) -> str | None:
        if wa_id and wa_id in self.names:
            return self.names[wa_id]
        return next(iter(self.names.values())) if len(self.names) == 1 else None

    def user_id_of(self, wa_id: str | None) -> str | None:
        if wa_id and wa_id in self.user_ids:
            return self.user_ids[wa_id]
        return next(iter(self.user_ids.values())) if len(self.user_ids) == 1 else None


def _contacts(contacts: Any) -> _Contacts:
    names: dict[str, str] = {}
    user_ids: dict[str, str] = {}
    if isinstance(contacts, list):
        for contact in contacts:
            wa_id = ident(get_path(contact, "wa_id")) or ident(get_path(contact, "user_id")) or ""
            name = text(get_path(contact, "profile", "name"))
            user_id = text(get_path(contact, "user_id"))
            if name:
                names[wa_id] = name
            if user_id:
                user_ids[wa_id] = user_id
    return _Contacts(names, user_ids)


def _message(
    source_name: str,
    message: dict[str, Any],
    business: str | None,
    people: _Contacts,
    echo: bool,
    field: str = "messages",
) -> Event:
    wamid = ident(message.get("id"))
    kind = text(message.get("type")) or "unknown"
    event = Event(
        id=wamid or content_id("messages", message),
        source=source_name,
        provider="meta",
        # A `system` message is WhatsApp telling of a change (a user's new number or user
        # id, a changed identity), not something the user wrote.
        kind="system" if kind == "system" else "message",
        event="smb_message_echoes" if echo else field,
        raw=message,
    )
    sender_id = ident(message.get("from"))
    sender = phone_digits(sender_id)
    group = text(message.get("group_id"))  # Groups API: a message in a group the business manages
    event.message_id = wamid
    event.from_me = echo
    if echo:
        # An echo is from the business to a customer: the chat is the customer.
        event.sender = sender or business
        event.to = phone_digits(ident(message.get("to")))
        event.chat_id = group or event.to
    else:
        user_id = text(message.get("from_user_id")) or people.user_id_of(sender_id)
        event.sender = sender
        event.from_user_id = user_id
        event.to = business
        # A user who adopted a username may come without a phone number: the BSUID names them.
        event.chat_id = group or sender or user_id
        event.sender_name = people.name_of(sender_id or user_id)
    event.timestamp = timestamp(message.get("timestamp"))
    context = as_object(message.get("context"))
    event.reply_to = ident(context.get("id")) if kind != "reaction" else None
    referral = message.get("referral")
    event.referral = referral if isinstance(referral, dict) else None
    _content(event, kind, message)
    event.error = first_error(message.get("errors"))  # e.g. 131051 "Unsupported message type"
    return event


def _content(event: Event, kind: str, message: dict[str, Any]) -> None:
    """Type and text (and media, references) of a message or an edit's new content."""
    part = as_object(message.get(kind))
    if kind in MEDIA_TYPES:
        event.type = "voice" if kind == "audio" and flag(part.get("voice")) else kind
        event.text = text(part.get("caption"))
        event.media = new_media(
            text(part.get("mime_type")), text(part.get("filename")), integer(part.get("file_size"))
        )
    elif kind == "reaction":
        event.type = "reaction"
        event.ref_message_id = ident(part.get("message_id"))
        emoji = part.get("emoji")
        event.text = emoji if isinstance(emoji, str) else ""  # no emoji: the reaction is removed
    elif kind in SIMPLE_TYPES:
        event.type = kind
        event.text = _text_of(kind, part)
    elif kind == "edit":
        # Coexistence: the user edited a message; `edit.message` is the new content.
        edited = Event(id="", source="", provider="", kind="", event="", raw=None)
        inner = as_object(part.get("message"))
        _content(edited, text(inner.get("type")) or "unknown", inner)
        event.type, event.text = "edit", edited.text
        event.ref_message_id = ident(part.get("original_message_id"))
    elif kind == "revoke":
        event.type = "revoke"
        event.ref_message_id = ident(part.get("original_message_id"))
    elif kind == "order":
        event.type = "order"
        event.text = text(part.get("text"))
    elif kind == "system":
        event.type = None
        event.text = text(part.get("body"))
    else:  # unsupported, request_welcome, and types Meta adds later
        event.type = "unknown"


def _text_of(kind: str, part: dict[str, Any]) -> str | None:
    if kind == "text":
        return text(part.get("body"))
    if kind == "button":
        return text(part.get("text"))
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
    if text(status.get("type")) == "call":
        return _call_status(source_name, status, business)
    name = STATUSES.get(text(status.get("status")) or "")
    if name is None:  # e.g. "deleted": not a delivery state, so a system event
        return _system(source_name, "statuses", status)
    recipient = phone_digits(ident(status.get("recipient_id"))) or text(status.get("recipient_user_id"))
    member = None
    if text(status.get("recipient_type")) == "group":
        # Groups API: the group is the recipient; a member's delivery or read names the member.
        member = phone_digits(ident(status.get("recipient_participant_id"))) or text(
            status.get("recipient_participant_user_id")
        )
    event = Event(
        id=(f"{wamid}:{name}" + (f":{member}" if member else ""))
        if wamid
        else content_id("statuses", status),
        source=source_name,
        provider="meta",
        kind="status",
        event="statuses",
        raw=status,
    )
    event.message_id = wamid
    event.status = name
    event.from_me = True
    event.sender = business
    event.to = member or recipient
    event.chat_id = recipient
    event.timestamp = timestamp(status.get("timestamp"))
    event.error = first_error(status.get("errors"))
    return event


def _call_direction(call: dict[str, Any]) -> bool:
    """True for a call the business placed."""
    return (text(call.get("direction")) or "").upper() == "BUSINESS_INITIATED"


def _call(
    source_name: str, call: dict[str, Any], business: str | None, people: _Contacts, errors: Any
) -> Event:
    """A `calls` change: `connect` (an offer, or the answer to the business's own call) or
    `terminate` (with `status`, `start_time`, `end_time` and `duration` in seconds)."""
    wacid = ident(call.get("id"))
    action = (text(call.get("event")) or "").lower()
    outbound = _call_direction(call)
    if action == "connect":
        status = "accepted" if outbound else "offer"
    elif action == "terminate":
        said = call.get("status")
        said = said[0] if isinstance(said, list) and said else said  # the docs show a list of options
        status = "failed" if (text(said) or "").lower() == "failed" else "ended"
    else:
        status = CALL_STATUSES.get((text(call.get("status")) or action).lower(), "ended")
    event = Event(
        id=f"{wacid}:{status}" if wacid else content_id("calls", call),
        source=source_name,
        provider="meta",
        kind="call",
        event="calls",
        raw=call,
    )
    caller, callee = ident(call.get("from")), ident(call.get("to"))
    event.sender, event.to = phone_digits(caller), phone_digits(callee)
    event.from_me = outbound
    user = callee if outbound else caller
    event.from_user_id = None if outbound else text(call.get("from_user_id")) or people.user_id_of(user)
    event.chat_id = phone_digits(user) or event.from_user_id
    event.sender_name = None if outbound else people.name_of(user)
    event.call = new_call(wacid, status, None, integer(call.get("duration")))
    event.timestamp = timestamp(call.get("timestamp"))
    event.error = first_error(call.get("errors")) or first_error(errors)
    return event


def _call_status(source_name: str, status: dict[str, Any], business: str | None) -> Event:
    """A call status (`statuses[]` with `type: "call"`) of a call the business placed."""
    wacid = ident(status.get("id"))
    name = CALL_STATUSES.get((text(status.get("status")) or "").lower(), "failed")
    event = Event(
        id=f"{wacid}:{name}" if wacid else content_id("calls", status),
        source=source_name,
        provider="meta",
        kind="call",
        event="calls",
        raw=status,
    )
    recipient = phone_digits(ident(status.get("recipient_id")))
    event.sender, event.to, event.chat_id, event.from_me = business, recipient, recipient, True
    event.call = new_call(wacid, name, None, None)
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


def _system(source_name: str, field: str, raw: Any, entry_time: Any = None) -> Event:
    event = Event(
        id=content_id(field, raw),
        source=source_name,
        provider="meta",
        kind="system",
        event=field,
        raw=raw,
    )
    event.timestamp = (
        timestamp(get_path(raw, "value", "timestamp"))
        or timestamp(get_path(raw, "timestamp"))
        or timestamp(get_path(raw, "value", "groups", 0, "timestamp"))
        or timestamp(entry_time)
    )
    event.error = first_error(get_path(raw, "value", "errors"))
    group = get_path(raw, "value", "groups", 0, "group_id")
    event.chat_id = group if isinstance(group, str) and group else None
    return event
