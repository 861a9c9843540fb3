"""The normalized event (SPEC §4) and the small conversions every provider shares."""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

KINDS = ("message", "status", "call", "system")
MESSAGE_TYPES = (
    "text",
    "image",
    "video",
    "audio",
    "voice",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "poll",
    "poll_vote",
    "edit",
    "revoke",
    "order",
    "unknown",
)
YEAR_10000 = 253_402_300_800  # epoch seconds; datetime's range ends just before
STATUSES = ("pending", "sent", "delivered", "read", "played", "failed")
CALL_STATUSES = ("offer", "ringing", "accepted", "rejected", "missed", "ended", "failed")
# Order of outbound statuses; `failed` is terminal and handled apart.
STATUS_RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}


@dataclass(slots=True)
class Event:
    """One provider event, normalized. `to_dict()` gives the SPEC §4 JSON object."""

    id: str
    source: str
    provider: str
    kind: str
    event: str
    raw: Any
    message_id: str | None = None
    chat_id: str | None = None
    sender: str | None = None  # serialized as "from" (a Python keyword)
    to: str | None = None
    from_me: bool | None = None
    sender_name: str | None = None
    type: str | None = None
    text: str | None = None
    media: dict[str, Any] | None = None
    status: str | None = None
    error: dict[str, Any] | None = None
    ref_message_id: str | None = None  # the message a reaction, edit, revoke or vote acts on
    reply_to: str | None = None  # the quoted message of a reply
    from_lid: str | None = None  # the sender's WhatsApp LID, the full `…@lid` address
    from_user_id: str | None = None  # Meta's business-scoped user id (BSUID)
    poll: dict[str, Any] | None = None  # {question, options, votes}
    call: dict[str, Any] | None = None  # {id, status, video, duration}
    referral: dict[str, Any] | None = None  # the Click-to-WhatsApp ad, snake_case keys
    timestamp: str | None = None
    received_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "provider": self.provider,
            "kind": self.kind,
            "event": self.event,
            "message_id": self.message_id,
            "chat_id": self.chat_id,
            "from": self.sender,
            "to": self.to,
            "from_me": self.from_me,
            "sender_name": self.sender_name,
            "type": self.type,
            "text": self.text,
            "media": self.media,
            "status": self.status,
            "error": self.error,
            "ref_message_id": self.ref_message_id,
            "reply_to": self.reply_to,
            "from_lid": self.from_lid,
            "from_user_id": self.from_user_id,
            "poll": self.poll,
            "call": self.call,
            "referral": self.referral,
            "timestamp": self.timestamp,
            "received_at": self.received_at,
            "raw": self.raw,
        }


# Every field of every event, in the order `to_dict` writes them (SPEC §4).
EVENT_FIELDS = tuple(Event(id="", source="", provider="", kind="", event="", raw=None).to_dict())


def new_media(
    mime_type: str | None = None,
    filename: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """The `media` object before the media stage fills `stored` (or `error`)."""
    return {
        "mime_type": mime_type,
        "filename": filename,
        "size": size,
        "sha256": sha256,
        "stored": None,
        "error": None,
    }


def new_poll(
    question: str | None = None, options: list[Any] | None = None, votes: list[str] | None = None
) -> dict[str, Any]:
    """The `poll` object: option names (or a provider's results as `[{name, votes}]`) and,
    for a vote, the names chosen in it; what the provider does not say is null."""
    return {"question": question, "options": options, "votes": votes}


def new_call(
    call_id: str | None, status: str | None, video: bool | None = None, duration: int | None = None
) -> dict[str, Any]:
    """The `call` object of a `kind = "call"` event (`status` one of `CALL_STATUSES`,
    `duration` in seconds, `video` null when the provider does not say)."""
    return {"id": call_id, "status": status, "video": video, "duration": duration}


def snake_case(name: str) -> str:
    """`sourceUrl`, `SourceURL`, `CtwaClid` -> `source_url`, `source_url`, `ctwa_clid`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return spaced.replace("-", "_").lower()


def rfc3339(value: Any) -> str | None:
    """Provider timestamps (seconds, milliseconds, numeric strings, ISO 8601) as RFC 3339 UTC.

    Wasender sends seconds in some events and milliseconds in others; anything past
    year 5138 in seconds is taken as milliseconds.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dict) and "low" in value:  # protobuf Long from Baileys
        value = value["low"]
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            parsed = parse_iso(text)
            return format_time(parsed) if parsed else None
    if not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
        if seconds > 1e11:
            seconds /= 1000.0
        if seconds.is_integer() and 0 <= seconds < YEAR_10000:
            # Whole seconds, the usual case: time.strftime is a quarter of datetime's cost.
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
        return format_time(datetime.fromtimestamp(seconds, tz=UTC))
    except (OverflowError, OSError, ValueError):
        return None


def parse_iso(text: str) -> datetime | None:
    """ISO 8601 (with a Z or an offset; naive means UTC) as an aware datetime, or None."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, milliseconds only when there are any."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    return format_time(datetime.now(UTC))


def phone_digits(address: Any) -> str | None:
    """`whatsapp:+1415...`, `1415...@s.whatsapp.net`, `1415...@c.us` -> `1415...`.

    Group (`@g.us`), LID (`@lid`) and other ids that are not phone numbers stay as they are.
    """
    if not isinstance(address, str) or not address:
        return None
    text = address.strip()
    if text.startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    for suffix in ("@s.whatsapp.net", "@c.us"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            text = text.split(":", 1)[0]  # device suffix: 1234:5@s.whatsapp.net
            break
    else:
        if "@" in text:
            return text
    digits = text.lstrip("+")
    return digits if digits.isdigit() else text


def content_id(*parts: Any) -> str:
    """A stable id for events the provider gives no id for: a hash of what identifies them."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# -- JSON, numbers exactly as sent ---------------------------------------------------
#
# `raw` must reach every sink as the provider sent it, numerically (SPEC §4). A float holds
# neither 1e400 nor 0.1000000000000000055511151231257827, and orjson reads integers beyond
# 64 bits as floats (123456789012345678901234567890 -> 1.2345678901234568e+29). So a number
# a float cannot hold is read as an `ExactFloat` that keeps its text, integers stay Python
# ints (exact at any size), and `dump_json` writes both back verbatim.


class ExactFloat(float):
    """A JSON number no float holds exactly (1e400, -1e400, 1e-400, more digits than a double
    keeps). It is the nearest float for arithmetic and comparisons (1e400 is inf), so a
    normalizer treats it as the float it would have got; `text` is the number as sent, and
    `dump_json` writes it back verbatim. (The stdlib `json.dumps` writes any float subclass
    as its float value, `Infinity` included: events are encoded with `dump_json` only.)"""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactFloat:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __reduce__(self) -> tuple[type[ExactFloat], tuple[str]]:
        return ExactFloat, (self.text,)

    def __repr__(self) -> str:
        return self.text


def exact_float(text: str) -> float:
    """`json`'s ``parse_float``: a float when writing it back gives the same number, else an
    `ExactFloat`. ``1.50`` and ``1E2`` are floats (1.5 and 100.0 are the same numbers)."""
    number = float(text)
    if repr(number) == text:  # the usual case, and the cheap test
        return number
    if math.isfinite(number) and Decimal(repr(number)) == Decimal(text):
        return number
    return ExactFloat(text)


# Made once: `json.loads` with any keyword builds a new decoder (and its scanner) per call.
EXACT_DECODER = json.JSONDecoder(parse_float=exact_float)


SMALLEST_NORMAL = 2.2250738585072014e-308  # below it a double has fewer than 15 digits


def float_kind(value: Any) -> int:
    """0 when a decoded JSON value holds no float, 2 when it holds a zero or subnormal one
    (which may be what is left of 1e-400), else 1. Iterative: the value may be deep; only
    containers go on the stack (12% faster than stacking every value)."""
    if type(value) is not dict and type(value) is not list:
        value = [value]
    found = 0
    stack = [value]
    while stack:
        container = stack.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append(item)
            elif kind is float:
                if -SMALLEST_NORMAL < item < SMALLEST_NORMAL:
                    return 2
                found = 1
    return found


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789.", b"0000000000")
_LONG_RUN = b"0" * 16


def long_number_possible(text: bytes) -> bool:
    """Whether the JSON `text` may hold a number of 16 or more digits: a run of 16 digits
    (or points) that does not start right after a quote, where only a string starts
    (WhatsApp group ids are 18 digits)."""
    shape = text.translate(_DIGITS_AS_ZERO)
    at = shape.find(_LONG_RUN)
    while at != -1:
        if at == 0 or shape[at - 1] != ord('"'):
            return True
        at = shape.find(_LONG_RUN, at + len(_LONG_RUN))
    return False


def orjson_is_exact(value: Any, data: bytes | str) -> bool:
    """Whether `value`, orjson's reading of `data`, has every number as `data` wrote it.

    orjson's ints are the integers written: it reads one beyond 64 bits as a float and
    refuses a float beyond the largest double (1e400). So only a float can be wrong, and
    only when its number has 16 or more digits, or is so small that the double is zero or
    subnormal (1e-400): a number of at most 15 digits between the smallest and largest normal
    double is the one its double's shortest repr writes (DBL_DIG is 15). The text tests are
    loose (digits after a space in a string count, as does any "e-" next to a zero float):
    then the caller reads the text again exactly, which is slower but never wrong."""
    kind = float_kind(value)  # first: walking a value without floats is the cheapest test
    if not kind:
        return True
    text = data.encode() if isinstance(data, str) else data
    if long_number_possible(text):
        return False
    return kind == 1 or (b"e-" not in text and b"E-" not in text)


def load_json(data: bytes | str) -> Any:
    """Parse JSON with every number exact (see `ExactFloat`); raises ValueError when invalid.

    orjson first; `json` with `exact_float` only when orjson refuses the text (1e400, lone
    surrogates) or may have read a number wrong (`orjson_is_exact`). Measured per body, on
    this machine: the 37 JSON fixtures without a float, 1.0 us for orjson alone, 2.4 us with
    the check (the walk for floats is most of it; `json` alone took 3.9 us); a 5.4 KB Meta
    batch with floats, 6.4 us alone, 15 us with the check's text tests (`json`: 22 us). A
    body with floats that the text tests cannot clear is read by both (~4 us per KB more).
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    else:
        if orjson_is_exact(value, data):
            return value
    return EXACT_DECODER.decode(data if isinstance(data, str) else data.decode("utf-8"))


INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1  # the integers orjson writes itself


def dump_json(value: Any) -> bytes:
    """UTF-8 JSON, fast (orjson), every number as it was read (`ExactFloat`, ints beyond 64
    bits) and lone surrogates, which orjson refuses, as JSON escapes."""
    try:
        return orjson.dumps(value, default=_verbatim)
    except TypeError:  # an int beyond 64 bits or a lone surrogate: rare, so the copy is too
        return orjson.dumps(_writable(value), default=_verbatim, option=orjson.OPT_NON_STR_KEYS)


def _verbatim(value: Any) -> Any:
    if isinstance(value, ExactFloat):
        return orjson.Fragment(value.text)
    return str(value)  # as `json.dumps(default=str)` did for types orjson cannot write


def _writable(value: Any) -> Any:
    """A copy of `value` that orjson writes: what it refuses replaced by its JSON text."""
    if isinstance(value, dict):
        if all(not isinstance(key, str) or _utf8(key) for key in value):
            return {key: _writable(item) for key, item in value.items()}
        # A key with a lone surrogate: a key cannot be a Fragment, so the object is one.
        members = (json.dumps(str(key)) + ":" + dump_json(item).decode() for key, item in value.items())
        return orjson.Fragment("{" + ",".join(members) + "}")
    if isinstance(value, list | tuple):
        return [_writable(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value if INT64_MIN <= value <= UINT64_MAX else orjson.Fragment(str(value))
    if isinstance(value, str) and not _utf8(value):
        return orjson.Fragment(json.dumps(value))  # ASCII, the surrogate as \udXXX
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def event_ref(event_id: str) -> str:
    """How a log line names an event: a short hash of its id, because ids of some providers
    carry a phone number or a WhatsApp address (WAHA's `false_4915...@c.us_...`), and logs
    must not. `wahookd trace` accepts it in place of the id."""
    return hashlib.blake2b(event_id.encode(), digest_size=6).hexdigest()


# -- templates over event fields (broker subjects, routing keys) ------------------------

# The event fields a template may name: the scalar ones. A template over `text` or `raw`
# would make a subject per message; `from`, `to`, `chat_id` put phone numbers into subjects
# and routing keys (a sink's `redact` hashes them).
TEMPLATE_FIELDS = frozenset(
    {
        "id", "source", "provider", "kind", "event", "type", "status", "message_id",
        "chat_id", "from", "to", "from_me", "from_lid", "from_user_id", "ref_message_id",
        "reply_to",
    }
)  # fmt: skip
_TEMPLATE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def parse_event_template(text: str, what: str) -> list[tuple[str, str | None]]:
    """``wa.{source}.{kind}`` as (literal text, field name or None) parts, for plugins that
    name where an event goes (`what`: "a subject", "a routing key"); `ValueError` says what
    is wrong."""
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in string.Formatter().parse(text):
        if name is not None and name not in TEMPLATE_FIELDS:
            raise ValueError(f"{{{name}}} is not an event field {what} can use: {sorted(TEMPLATE_FIELDS)}")
        if spec or conversion:
            raise ValueError(f"{{{name}}}: no format specs or conversions, only field names")
        parts.append((literal, name))
    return parts


def template_word(value: Any, cut: int) -> str:
    """One field's value as one word of a subject or routing key: characters other than
    ``A-Z a-z 0-9 _ -`` become ``_`` (``messages.upsert`` is one word, ``messages_upsert``),
    at most `cut` characters, an empty or missing value ``_``."""
    if value is None or value == "":
        return "_"
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return _TEMPLATE_UNSAFE.sub("_", text[:cut])
