"""Standard Webhooks (standardwebhooks.com): any sender that signs this way, including another
wahookd's `forward` sink.

Verification: the secret is `whsec_<base64>` (the prefix is stripped and the rest
base64-decoded; a secret that is not base64 is used as its raw bytes). The signed content is
`{webhook-id}.{webhook-timestamp}.{raw body}`; `webhook-signature` holds space-separated
`v1,<base64 HMAC-SHA256>` entries, any one of which may match. A timestamp more than 300 s
from now, in either direction, fails, so captured requests cannot be replayed later.

Mapping (one request is one event; id = `webhook-id`, `raw` = the whole body):
- a body that already is a SPEC §4 event (it has `kind` message/status/call/system: what
  wahookd's `forward` sink sends, the event itself) keeps every normalized field exactly as
  sent, `event`, `timestamp` and `media` included (the media stage does not fetch media that
  was stored upstream); only `id`, `source`, `provider`, `received_at` and `raw` are this
  daemon's own. The same holds for such an event as the `data` of an envelope;
- otherwise the body is usually an envelope `{"type", "timestamp", "data"}`; `data` is read,
  or the body itself when there is no object `data`;
- otherwise `data.status` being a SPEC status with a message id makes a `status` event; a
  `type` starting with `message` (or `data.text`/`data.body`) makes a `message` event with
  `message_id` = `data.message_id`/`data.id`, `text` = `data.text`/`data.body`, `type` =
  `data.type` when it is a SPEC type (else text when there is text, else unknown);
- anything else is a `system` event. `event` is the envelope `type`; `timestamp` the
  envelope's or `data`'s, else `webhook-timestamp`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import uuid
from typing import Any

from wahookd.events import KINDS, MESSAGE_TYPES, STATUSES, Event, content_id, phone_digits
from wahookd.providers import InboundRequest, Provider
from wahookd.providers.payload import (
    as_object,
    flag,
    header,
    hmac_digest,
    ident,
    load_json_object,
    text,
    timestamp,
)
from wahookd.settings import SourceSettings

TOLERANCE_SECONDS = 300
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format marker, not a secret


def secret_key(secret: bytes) -> bytes:
    """The HMAC key of a Standard Webhooks secret."""
    value = secret.decode("utf-8", "replace").strip()
    if value.startswith(SECRET_PREFIX):
        value = value[len(SECRET_PREFIX) :]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return secret


def signature_of(key: bytes, msg_id: str, stamp: str, body: bytes) -> str:
    signed = f"{msg_id}.{stamp}.".encode() + body
    return "v1," + base64.b64encode(hmac_digest(key, signed, "sha256")).decode()


def verify_signature(
    secrets: list[bytes],
    msg_id: str | None,
    stamp: str | None,
    signatures: str | None,
    body: bytes,
    now: float | None = None,
) -> bool:
    if not msg_id or not stamp or not signatures:
        return False
    stamp = stamp.strip()
    if not (stamp.isascii() and stamp.isdigit()):  # isdigit() alone admits "²"
        return False
    if len(stamp) > 15:
        return False
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > TOLERANCE_SECONDS:
        return False
    given = [entry.encode("ascii", "replace") for entry in signatures.split() if entry]
    found = False
    for secret in secrets:
        expected = signature_of(secret_key(secret), msg_id, stamp, body).encode()
        for entry in given:
            found |= hmac.compare_digest(entry, expected)
    return found


class StandardProvider(Provider):
    name = "standard"

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        return verify_signature(
            source.secret_values(),
            header(request.headers, "webhook-id"),
            header(request.headers, "webhook-timestamp"),
            header(request.headers, "webhook-signature"),
            request.body,
        )

    def parse(self, request: InboundRequest, source_name: str, source: SourceSettings) -> list[Event]:
        body = load_json_object(request.body)
        msg_id = header(request.headers, "webhook-id") or content_id("standard", body)
        forwarded = body.get("kind") in KINDS  # a wahookd event, not an envelope
        name = text(body.get("type")) or "webhook"
        data = body if forwarded else as_object(body.get("data"), body)
        event = Event(id=msg_id, source=source_name, provider="standard", kind="system", event=name, raw=body)
        event.timestamp = (
            (None if forwarded else timestamp(body.get("timestamp")))
            or timestamp(data.get("timestamp"))
            or timestamp(header(request.headers, "webhook-timestamp"))
        )
        if data.get("kind") in KINDS:
            _adopt(event, data)
        elif data.get("status") in STATUSES and _message_id(data):
            event.kind, event.status = "status", data["status"]
            event.message_id = _message_id(data)
            event.chat_id = phone_digits(text(data.get("chat_id")))
            event.to = phone_digits(text(data.get("to")))
        elif name.startswith("message") or text(data.get("text")) or text(data.get("body")):
            event.kind = "message"
            event.message_id = _message_id(data)
            event.text = text(data.get("text")) or text(data.get("body"))
            declared = data.get("type")
            event.type = declared if declared in MESSAGE_TYPES else ("text" if event.text else "unknown")
            event.chat_id = phone_digits(text(data.get("chat_id")))
            event.sender = phone_digits(text(data.get("from")))
            event.to = phone_digits(text(data.get("to")))
        return [event]

    def sample(self, kind: str) -> tuple[bytes, str]:
        message_id = "msg_" + uuid.uuid4().hex
        now = int(time.time())
        data: dict[str, Any]
        if kind == "status":
            event_type = "message.status"
            data = {"message_id": message_id, "status": "delivered", "to": "15550001111"}
        else:
            event_type = "message.received"
            data = {
                "id": message_id,
                "from": "15550001111",
                "chat_id": "15550001111",
                "type": "text",
                "text": "wahookd send-test",
            }
            if kind == "image":
                data |= {"type": "image", "text": "wahookd send-test image"}
        body = {"type": event_type, "timestamp": now, "data": data}
        return json.dumps(body).encode(), "application/json"

    def sign(self, body: bytes, url: str, source: SourceSettings) -> dict[str, str]:
        secrets = source.secret_values()
        msg_id = "msg_" + uuid.uuid4().hex
        stamp = str(int(time.time()))
        headers = {"webhook-id": msg_id, "webhook-timestamp": stamp}
        if secrets:
            headers["webhook-signature"] = signature_of(secret_key(secrets[0]), msg_id, stamp, body)
        return headers


def _message_id(data: dict[str, Any]) -> str | None:
    return ident(data.get("message_id")) or ident(data.get("id"))


# The normalized fields a relayed wahookd event keeps, by their JSON type.
ADOPTED_TEXT = (
    "message_id",
    "chat_id",
    "to",
    "sender_name",
    "text",
    "ref_message_id",
    "reply_to",
    "from_lid",
    "from_user_id",
)
ADOPTED_OBJECTS = ("media", "error", "poll", "call", "referral")


def _adopt(event: Event, data: dict[str, Any]) -> None:
    """Keep every normalized field of a relayed SPEC §4 event exactly as sent (types checked,
    not trusted: a field of the wrong JSON type is null)."""
    event.kind = data["kind"]
    if isinstance(data.get("event"), str):
        event.event = data["event"]
    for name in ADOPTED_TEXT:
        value = data.get(name)
        setattr(event, name, value if isinstance(value, str) else None)
    for name in ADOPTED_OBJECTS:
        value = data.get(name)
        setattr(event, name, value if isinstance(value, dict) else None)
    sender = data.get("from")
    event.sender = sender if isinstance(sender, str) else None
    event.from_me = flag(data.get("from_me"))
    event.type = data.get("type") if data.get("type") in MESSAGE_TYPES else None
    event.status = data.get("status") if data.get("status") in STATUSES else None
    if "timestamp" in data:
        # Exactly as the upstream wrote it (RFC 3339 already, or null); a number is converted.
        moment = data["timestamp"]
        event.timestamp = moment if isinstance(moment, str) else timestamp(moment)
    if event.kind == "message" and event.type is None:
        event.type = "unknown"
    if event.kind == "status" and event.status is None:
        event.kind = "system"
