"""Twilio Programmable Messaging for WhatsApp.

Verification (Twilio's "Webhooks security"): `X-Twilio-Signature` is the base64 HMAC-SHA1,
keyed with the auth token, of the public URL followed by every POST parameter's name and
value, sorted by name. JSON bodies instead carry `bodySHA256` (hex SHA-256 of the raw body)
in the URL query, and the signature covers the URL only. When a Webhook Rule applies a
Webhook Setting, Twilio adds `X-Twilio-Webhooks-Signature-Settings: key=...,algorithm=
HMAC_SHA256` and signs the same string with HMAC-SHA256 and the Setting's shared key
(configure that key as one of the source's secrets).

Twilio signs the URL it called: behind a proxy the core rebuilds it from trusted
`X-Forwarded-Proto/Host` or `public_url`. Twilio's own validators (`RequestValidator` in its
SDKs) try the URL as given, with its port removed, whatever the port (`https://host:8443/x`
also validates as `https://host/x`), and with the default port (`:443`/`:80`) added when it
has none; so do we.

`raw` is the flat dict of the form fields (strings). Inbound messages become `message`
events (id `MessageSid`; `reply_to` from `OriginalRepliedMessageSid`; `referral` from the
Click-to-WhatsApp `Referral*` parameters in snake_case), status callbacks (`MessageStatus`
other than `received`) become `status` events (id `MessageSid:status`, `error` from
`ErrorCode`/`ErrorMessage`). Media: `MediaUrl0` with HTTP basic auth (the message's
AccountSid and the source's `access_token`, else its auth token), following Twilio's redirect
to its CDN (credentials are never sent to another origin).
The 200 answer is an empty TwiML `<Response/>` as `text/xml`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from wahookd.errors import ParseError
from wahookd.events import Event, content_id, dump_json, new_media, phone_digits, snake_case
from wahookd.media import retrieval
from wahookd.media.errors import MediaError
from wahookd.media.retrieval import MediaFetch, Retrieved, secret_text
from wahookd.providers import InboundRequest, Provider, Reply, get_path
from wahookd.providers.payload import form_pairs, header, integer, load_form, load_json_object, text
from wahookd.settings import SourceSettings

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
FORM = "application/x-www-form-urlencoded"
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
DEFAULT_PORTS = {"https": 443, "http": 80}
STATUSES = {
    "queued": "pending",
    "accepted": "pending",
    "scheduled": "pending",
    "sending": "pending",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "undelivered": "failed",
    "canceled": "failed",
}
# Twilio's `MessageType` names that differ from the SPEC types.
MESSAGE_TYPES = {
    "text": "text",
    "image": "image",
    "video": "video",
    "audio": "audio",
    "document": "document",
    "sticker": "sticker",
    "location": "location",
    "contacts": "contacts",
    "contact": "contacts",
    "button": "button",
    "interactive": "interactive",
    "reaction": "reaction",
    "poll": "poll",
}


def signature_of(secret: bytes, url: str, params: list[tuple[str, str]], algorithm: str) -> str:
    """Twilio's signature of `url` and form `params` (pass [] for JSON bodies)."""
    message = url
    names = sorted({name for name, _ in params})
    for name in names:
        # Repeated names: Twilio's SDKs sort each name's values too.
        for value in sorted({value for key, value in params if key == name}):
            message += name + value
    digest = hmac.new(secret, message.encode("utf-8"), getattr(hashlib, algorithm)).digest()
    return base64.b64encode(digest).decode()


def url_variants(url: str) -> list[str]:
    """The URL as given, without its port (any port, as Twilio's validators try it), and with
    the default port added when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return [url]
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    variants = [url]
    if port is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    elif (default := DEFAULT_PORTS.get(parts.scheme)) is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    return variants


def algorithm_of(settings_header: str | None) -> str | None:
    """The hash the signature settings header names; None for one we do not know."""
    if not settings_header:
        return "sha1"
    for part in settings_header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "algorithm":
            return {"HMAC_SHA256": "sha256", "HMAC_SHA1": "sha1"}.get(value.strip().upper())
    return "sha1"


class TwilioProvider(Provider):
    name = "twilio"
    # Media URLs are on the REST API, which redirects to Twilio's CDN.
    media_hosts = ("api.twilio.com", "media.twiliocdn.com", "*.twiliocdn.com")
    signs_url = True  # the core rebuilds the public URL only for such providers
    content_types = frozenset({FORM, "application/json"})

    def verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        try:
            return self._verify(request, source)
        except ValueError:  # a URL that does not parse: never a 500 for a forged request
            return False

    def _verify(self, request: InboundRequest, source: SourceSettings) -> bool:
        signature = header(request.headers, SIGNATURE_HEADER)
        algorithm = algorithm_of(header(request.headers, SETTINGS_HEADER))
        if not signature or algorithm is None:
            return False
        query = urlsplit(request.url).query if "?" in request.url else ""
        body_hash = parse_qs(query).get("bodySHA256") if query else None
        # Twilio posts forms unless it says JSON; the core lets a missing Content-Type through.
        if request.content_type != "application/json" and not body_hash:
            params = form_pairs(request.body)
            if params is None:
                return False
        else:
            if not body_hash:
                return False  # a JSON body is only signed through bodySHA256
            actual = hashlib.sha256(request.body).hexdigest()
            if not hmac.compare_digest(body_hash[0].lower().encode(), actual.encode()):
                return False
            params = []
        given = signature.strip().encode("ascii", "replace")
        found = False
        for url in url_variants(request.url):
            for secret in source.secret_values():
                expected = signature_of(secret, url, params, algorithm).encode()
                found |= hmac.compare_digest(given, expected)
        return found

    def parse(self, request: InboundRequest, source_name: str, source: SourceSettings) -> list[Event]:
        # JSON exactly when verify() took it as JSON: said so, or signed through bodySHA256.
        signed_body = "bodySHA256=" in (urlsplit(request.url).query if request.url else "")
        if request.content_type == "application/json" or (not request.content_type and signed_body):
            body = load_json_object(request.body)
            fields = {
                key: value if isinstance(value, str) else dump_json(value).decode()
                for key, value in body.items()
            }
        else:
            fields = load_form(request.body)
        return [_event(source_name, fields)]

    async def fetch_media(self, event: dict[str, Any], fetch: MediaFetch) -> Retrieved:
        raw = event.get("raw")
        url = get_path(raw, "MediaUrl0")
        if not isinstance(url, str) or not url:
            raise MediaError("no MediaUrl0 in the message")
        headers: dict[str, str] = {}
        account = get_path(raw, "AccountSid")
        secrets = fetch.source.secret_values()
        password = secret_text(fetch.source.access_token) or (secrets[0].decode() if secrets else None)
        if isinstance(account, str) and re.fullmatch(r"AC[0-9a-fA-F]{32}", account) and password:
            token = base64.b64encode(f"{account}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return await retrieval.download(fetch, url, headers)

    def reply(self, accepted: int, duplicates: int) -> Reply | None:
        return Reply("text/xml; charset=utf-8", TWIML_EMPTY)

    def sample(self, kind: str) -> tuple[bytes, str]:
        sid = ("MM" if kind == "image" else "SM") + uuid.uuid4().hex
        fields = {
            "MessageSid": sid,
            "SmsSid": sid,
            "AccountSid": "AC" + "0" * 32,
            "From": "whatsapp:+14155238886",
            "To": "whatsapp:+15005550006",
        }
        if kind == "status":
            fields |= {
                "MessageStatus": "delivered",
                "SmsStatus": "delivered",
                "From": "whatsapp:+15005550006",
                "To": "whatsapp:+14155238886",
            }
        elif kind == "image":
            fields |= {
                "Body": "wahookd send-test image",
                "NumMedia": "1",
                "MediaContentType0": "image/jpeg",
                "MessageType": "image",
                "MediaUrl0": f"https://api.twilio.invalid/2010-04-01/Accounts/AC{'0' * 32}"
                f"/Messages/{sid}/Media/ME{uuid.uuid4().hex}",
                "ProfileName": "wahookd",
                "WaId": "14155238886",
            }
        else:
            fields |= {
                "Body": "wahookd send-test",
                "NumMedia": "0",
                "MessageType": "text",
                "ProfileName": "wahookd",
                "WaId": "14155238886",
            }
        return urlencode(fields).encode(), FORM

    def sign(self, body: bytes, url: str, source: SourceSettings) -> dict[str, str]:
        secrets = source.secret_values()
        # With `bodySHA256` in the URL (JSON bodies) the signature covers the URL only.
        params = [] if "bodySHA256=" in url else form_pairs(body) or []
        return {SIGNATURE_HEADER: signature_of(secrets[0], url, params, "sha1")} if secrets else {}


def _event(source_name: str, fields: dict[str, str]) -> Event:
    sid = text(fields.get("MessageSid")) or text(fields.get("SmsMessageSid")) or text(fields.get("SmsSid"))
    raw_status = (text(fields.get("MessageStatus")) or "").lower()
    status = STATUSES.get(raw_status)
    if sid is None and not fields:
        raise ParseError("an empty form body")
    if status is not None:
        event = Event(
            id=f"{sid}:{status}" if sid else content_id("status", fields),
            source=source_name,
            provider="twilio",
            kind="status",
            event="status",
            raw=fields,
        )
        event.status = status
        event.from_me = True
        event.sender = phone_digits(text(fields.get("From")))
        event.to = phone_digits(text(fields.get("To")))
        event.chat_id = event.to
        code, message = text(fields.get("ErrorCode")), text(fields.get("ErrorMessage"))
        if code or message:
            event.error = {"code": code, "message": message}
    elif sid is None or raw_status not in ("", "received", "receiving"):
        # No message id, or a status Twilio may add later: keep it, as a system event.
        return Event(
            id=content_id("twilio", fields),
            source=source_name,
            provider="twilio",
            kind="system",
            event=raw_status or "unknown",
            raw=fields,
        )
    else:
        event = Event(
            id=sid,
            source=source_name,
            provider="twilio",
            kind="message",
            event="message",
            raw=fields,
        )
        sender = text(fields.get("From"))
        event.sender = phone_digits(sender)
        user_id = business_user_id(sender)
        if user_id is not None:
            # A user known only by a business-scoped user id (no phone number to give).
            event.sender, event.from_user_id = None, user_id
        event.to = phone_digits(text(fields.get("To")))
        event.chat_id = event.sender or user_id
        event.from_me = False
        event.sender_name = text(fields.get("ProfileName"))
        event.reply_to = text(fields.get("OriginalRepliedMessageSid"))
        event.referral = referral_of(fields)
        event.text = text(fields.get("Body"))
        event.type, event.media = _content(fields)
        event.text = event.text or text(fields.get("ButtonText"))
        if event.type == "location":
            event.text = event.text or text(fields.get("Label")) or text(fields.get("Address"))
    event.message_id = sid
    return event


def business_user_id(address: str | None) -> str | None:
    """A business-scoped user id (`US.13491208655302741918`) where a phone number would be."""
    if not address:
        return None
    bare = address.removeprefix("whatsapp:")
    return bare if re.fullmatch(r"[A-Z]{2}\.[A-Za-z0-9.]+", bare) else None


def referral_of(fields: dict[str, str]) -> dict[str, Any] | None:
    """The Click-to-WhatsApp `Referral*` parameters in snake_case (`ReferralSourceUrl` ->
    `source_url`, `ReferralCtwaClid` -> `ctwa_clid`), or None when there are none."""
    found = {
        snake_case(name.removeprefix("Referral")): value
        for name, value in fields.items()
        if name.startswith("Referral") and len(name) > len("Referral") and value != ""
    }
    return found or None


def _content(fields: dict[str, str]) -> tuple[str, dict[str, Any] | None]:
    declared = MESSAGE_TYPES.get((text(fields.get("MessageType")) or "").lower())
    media = None
    if (integer(fields.get("NumMedia")) or 0) > 0 and text(fields.get("MediaUrl0")):
        mime = text(fields.get("MediaContentType0"))
        media = new_media(mime, None, None)
        if declared is None:
            major = (mime or "").split("/", 1)[0]
            declared = major if major in ("image", "video", "audio") else "document"
            if mime == "image/webp":
                declared = "sticker"
    if declared is None:
        if text(fields.get("Latitude")) and text(fields.get("Longitude")):
            declared = "location"
        elif text(fields.get("ButtonPayload")) or text(fields.get("ButtonText")):
            declared = "button"
        elif text(fields.get("Body")):
            declared = "text"
        else:
            declared = "unknown"
    return declared, media
