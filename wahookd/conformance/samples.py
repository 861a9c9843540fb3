"""The conformance suite's events, and how what a target gave back is compared with them.

`schema_events` holds one event of every kind, message type, status and call status of
SPEC §4; `unicode_events` text in every script with NUL and emoji, and ``raw`` with the numbers
no float holds; `big_event` one 3 MB event. They are what the daemon hands a sink: read from
the journal's JSON with `wahookd.events.load_json`, so `raw` numbers are exact.
"""

from __future__ import annotations

import uuid
from typing import Any

from wahookd.events import EVENT_FIELDS, ExactFloat, dump_json, load_json

THREE_MB = 3 * 1024 * 1024  # server.max_body_bytes by default: the largest event there is
# The numbers a provider can send that a float cannot hold (SPEC §4: `raw` is unchanged).
EXACT_NUMBERS_JSON = (
    '{"big": 123456789012345678901234567890, "negative_big": -123456789012345678901234567890,'
    ' "past_2_64": 18446744073709551616, "past_2_53": 9007199254740993,'
    ' "precise": 0.1000000000000000055511151231257827, "huge": 1e400, "tiny": 1e-400,'
    ' "negative_zero": -0.0, "plain": 1.5, "zero": 0, "exponent": 6.02214076e23,'
    ' "in_a_list": [123456789012345678901234567890, 1e400, 7]}'
)
UNICODE_TEXTS = {
    "accents": "olá, ça va? Grüße aus Köln, ß, ñ",
    "emoji": "👍🏽 🎉 🇧🇷 👩‍👩‍👧‍👦 ❤️‍🔥",
    "scripts": "你好，世界 · こんにちは · 안녕하세요 · नमस्ते · Привет · Γειά",  # noqa: RUF001 - the look-alikes are the point
    "right_to_left": "مرحبا بالعالم · שלום עולם",
    "combining": "e\u0301 a\u030a \u1e9b\u0323 Z\u0351\u0323\u0353",
    "invisible": "zero\u200bwidth \u200cnon\u200djoiner \ufeffbom \u2028line\u2029para",
    "control": "NUL \u0000 inside, tab\tnew\nline\r\nand \u001b escape",
    "quoting": "quotes \" ' ` backslash \\ </script> ${x} %s {0} ; DROP TABLE events; --",
    "astral": "𝕳𝖊𝖑𝖑𝖔 𓀀 🀄 \U0010fffd",  # noqa: RUF001 - the look-alikes are the point
}


def blank_event(tag: str, label: str, **fields: Any) -> dict[str, Any]:
    """An inbound text message with every SPEC §4 field; `fields` replace some (``from_``
    for ``from``)."""
    message_id = f"3EB0{uuid.uuid4().hex[:16].upper()}"
    event: dict[str, Any] = dict.fromkeys(EVENT_FIELDS)
    event.update(
        id=f"conformance:{tag}:{label}",
        source="conformance",
        provider="wasender",
        kind="message",
        event="messages.upsert",
        message_id=message_id,
        chat_id="15550000001@s.whatsapp.net",
        to="15550000002",
        from_me=False,
        sender_name="Conformance Sender",
        type="text",
        timestamp="2026-01-02T03:04:05Z",
        received_at="2026-01-02T03:04:06.123456Z",
        raw={"key": {"id": message_id}, "label": label},
    )
    event["from"] = "15550000001"
    if "from_" in fields:
        fields["from"] = fields.pop("from_")
    event.update(fields)
    return event


def media(mime_type: str, filename: str | None = None, error: str | None = None) -> dict[str, Any]:
    stored = (
        None
        if error
        else {
            "bucket": "whatsapp-media",
            "key": f"conformance/{uuid.uuid4().hex}",
            "url": "http://127.0.0.1:9000/whatsapp-media/conformance/x",
        }
    )
    return {
        "mime_type": mime_type,
        "filename": filename,
        "size": 48213,
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "stored": stored,
        "error": error,
    }


def schema_events(tag: str) -> list[dict[str, Any]]:
    """One event of every kind, message type, status and call status of SPEC §4, each with
    the fields that kind carries filled in the way the providers fill them."""
    target = f"3EB0TARGET{tag.upper()}"
    poll = {"question": "Which day?", "options": ["Monday", "Tuesday"], "votes": None}
    events = [
        blank_event(
            tag,
            "message/text",
            text="hello from the conformance suite",
            reply_to="3EB0QUOTED0001",
            referral={
                "source_url": "https://fb.me/ad",
                "source_id": "120201",
                "source_type": "ad",
                "headline": "Spring sale",
                "body": "Tap to chat",
                "media_url": "https://example.invalid/ad.jpg",
                "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
            },
        ),
        blank_event(tag, "message/image", type="image", text="a caption", media=media("image/jpeg")),
        blank_event(tag, "message/video", type="video", media=media("video/mp4")),
        blank_event(tag, "message/audio", type="audio", media=media("audio/mpeg")),
        blank_event(tag, "message/voice", type="voice", media=media("audio/ogg; codecs=opus")),
        blank_event(
            tag, "message/document", type="document", media=media("application/pdf", "report (v2).pdf")
        ),
        blank_event(
            tag, "message/sticker", type="sticker", media=media("image/webp", error="download failed: 404")
        ),
        blank_event(
            tag,
            "message/location",
            type="location",
            text="Brandenburger Tor",
            raw={"location": {"degreesLatitude": 52.516275, "degreesLongitude": 13.377704}},
        ),
        blank_event(
            tag,
            "message/contacts",
            type="contacts",
            raw={"contacts": [{"vcard": "BEGIN:VCARD\nVERSION:3.0\nFN:Ana\nTEL:+15550000003\nEND:VCARD"}]},
        ),
        blank_event(
            tag,
            "message/interactive",
            type="interactive",
            text="Option B",
            raw={"interactive": {"type": "button_reply", "button_reply": {"id": "b", "title": "Option B"}}},
        ),
        blank_event(tag, "message/button", type="button", text="Yes"),
        blank_event(tag, "message/reaction", type="reaction", text="👍", ref_message_id=target),
        blank_event(tag, "message/reaction-removed", type="reaction", text="", ref_message_id=target),
        blank_event(tag, "message/poll", type="poll", text="Which day?", poll=poll),
        blank_event(
            tag,
            "message/poll_vote",
            type="poll_vote",
            ref_message_id=target,
            poll={**poll, "votes": ["Tuesday"]},
        ),
        blank_event(tag, "message/edit", type="edit", text="the corrected text", ref_message_id=target),
        blank_event(tag, "message/revoke", type="revoke", ref_message_id=target),
        blank_event(
            tag,
            "message/order",
            type="order",
            raw={"order": {"product_items": [{"retailer_id": "sku-1", "quantity": 2, "item_price": 12.5}]}},
        ),
        blank_event(tag, "message/unknown", type="unknown", raw={"mystery": [1, {"deep": [True, None]}]}),
        blank_event(
            tag,
            "message/group-by-lid",
            chat_id="120363025246125486@g.us",
            from_=None,
            from_lid="123456789012345@lid",
            text="sent from a LID, no phone",
        ),
        blank_event(tag, "message/channel", chat_id="120363025246125999@newsletter", text="a channel post"),
        blank_event(
            tag,
            "message/meta-outbound",
            provider="meta",
            from_me=True,
            from_user_id="US.13491208655302741918",
            text="sent by us",
        ),
    ]
    for status in ("pending", "sent", "delivered", "read", "played", "failed"):
        events.append(
            blank_event(
                tag,
                f"status/{status}",
                kind="status",
                event="messages.update",
                message_id=target,
                from_me=True,
                sender_name=None,
                type=None,
                status=status,
                error={"code": 131026, "message": "Message undeliverable"} if status == "failed" else None,
            )
        )
    events.append(
        blank_event(
            tag,
            "status/group-read",
            kind="status",
            event="messages.update",
            message_id=target,
            chat_id="120363025246125486@g.us",
            to="15550000004",
            from_me=True,
            type=None,
            status="read",
        )
    )
    for status in ("offer", "ringing", "accepted", "rejected", "missed", "ended", "failed"):
        events.append(
            blank_event(
                tag,
                f"call/{status}",
                kind="call",
                event="call",
                message_id=None,
                type=None,
                call={
                    "id": f"call-{tag}",
                    "status": status,
                    "video": {"offer": True, "ended": False}.get(status),
                    "duration": 42 if status == "ended" else None,
                },
            )
        )
    for name, raw in (
        ("session.status", {"status": "WORKING"}),
        (
            "presence.update",
            {"presences": {"15550000001@s.whatsapp.net": {"lastKnownPresence": "composing"}}},
        ),
        ("groups.upsert", {"subject": "Team", "participants": ["15550000001@s.whatsapp.net"]}),
        ("message_template_status_update", {"event": "APPROVED", "message_template_id": 1234567890123}),
    ):
        events.append(
            blank_event(
                tag,
                f"system/{name}",
                kind="system",
                event=name,
                message_id=None,
                chat_id=None,
                from_=None,
                to=None,
                from_me=None,
                sender_name=None,
                type=None,
                raw=raw,
            )
        )
    return as_delivered(events)


def unicode_events(tag: str) -> list[dict[str, Any]]:
    """Text in every field a person writes, and `raw` with the numbers no float holds."""
    events = [
        blank_event(
            tag,
            f"unicode/{name}",
            text=text,
            sender_name=text[:40],
            raw={"message": {"conversation": text}, "ключ 🔑": text, name: [text]},
        )
        for name, text in UNICODE_TEXTS.items()
    ]
    numbers = load_json(EXACT_NUMBERS_JSON)
    events.append(blank_event(tag, "numbers/raw", raw={"payment": numbers, "key": {"id": "n"}}))
    events.append(
        blank_event(tag, "numbers/deep", raw={"a": [{"b": [{"c": numbers}]}], "empty": {"o": {}, "l": []}})
    )
    return as_delivered(events)


def big_event(tag: str) -> dict[str, Any]:
    """One event whose JSON is 3 MB (the largest body wahookd accepts by default): a long
    `text`, and in `raw` one string of several megabytes (a provider's inline thumbnail or
    document text), mixed ASCII and multi-byte."""
    unit = "wahookd conformance ✓ ünïcödé 🧪 0123456789 "
    event = blank_event(tag, "big/3mb", text=unit * 2000)
    room = THREE_MB - len(dump_json(event))
    event["raw"] = {"key": {"id": "big"}, "blob": unit * (room // len(unit.encode()) + 1)}
    return as_delivered([event])[0]


def as_delivered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as a sink gets them: read from the journal's JSON (exact numbers)."""
    return [load_json(dump_json(event)) for event in events]


def label(event: dict[str, Any]) -> str:
    return str(event["id"]).split(":", 2)[-1]


# -- comparing what came back ----------------------------------------------------------


def number_text(value: Any) -> str:
    if isinstance(value, ExactFloat):
        return value.text
    if isinstance(value, float):
        return repr(value)
    return str(value)


def first_difference(expected: Any, got: Any, path: str = "") -> tuple[str, str] | None:
    """Where `got` first differs from `expected`: (field path, one sentence of what and
    how to fix), or None when they are the same JSON value, number for number."""
    where = path or "the event"
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return where, f"came back as {short(got)} instead of an object"
        for key, value in expected.items():
            if key not in got:
                return (
                    f"{path}.{key}" if path else key,
                    "is missing: store every field of the event, also those that are null",
                )
            found = first_difference(value, got[key], f"{path}.{key}" if path else key)
            if found:
                return found
        if path:  # extra top-level keys are the target's own (a stored_at); inside, a change
            for key in got:
                if key not in expected:
                    return f"{path}.{key}", "is not in the delivered event: store the event unchanged"
        return None
    if isinstance(expected, list):
        if not isinstance(got, list):
            return where, f"came back as {short(got)} instead of a list"
        if len(got) != len(expected):
            return where, f"came back with {len(got)} items instead of {len(expected)}"
        for index, (item, other) in enumerate(zip(expected, got, strict=True)):
            found = first_difference(item, other, f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(expected, bool) or expected is None or isinstance(got, bool) or got is None:
        if expected is got:
            return None
        return where, f"came back as {short(got)} instead of {short(expected)}"
    if isinstance(expected, int | float):
        if isinstance(got, int | float) and number_text(got) == number_text(expected):
            return None
        return where, (
            f"came back as {short(got)} instead of {number_text(expected)}: store events with "
            "wahookd.events.dump_json and read them back (in read_back() too) with "
            "wahookd.events.load_json, which keep every number exactly as the provider sent it"
        )
    if isinstance(expected, str):
        if got == expected:
            return None
        if isinstance(got, str) and len(got) != len(expected) and len(expected) > 10_000:
            return where, (
                f"came back {len(got)} characters long instead of {len(expected)}: lift the "
                "size limit that cut it (a column type, a message size), since wahookd accepts "
                "events of several megabytes"
            )
        return where, (
            f"came back as {short(got)} instead of {short(expected)}: store text as UTF-8 unchanged "
            "(NUL, emoji, every script), without transcoding or trimming"
        )
    if got == expected:
        return None
    return where, f"came back as {short(got)} instead of {short(expected)}"


def brief(error: str, limit: int = 160) -> str:
    """A sink's error, short enough for one sentence: its first line, cut."""
    line = error.strip().splitlines()[0] if error.strip() else error
    return line if len(line) <= limit else line[: limit - 3] + "..."


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
