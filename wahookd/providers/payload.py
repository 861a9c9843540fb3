"""Reading untrusted provider payloads: strict JSON and form decoding, typed field access.

Every provider parses bodies that a valid signature does not make well-formed, so these
helpers never raise anything but `ParseError` and return None for a field of the wrong type.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

from wahookd.errors import ParseError
from wahookd.events import exact_float, orjson_is_exact, rfc3339

# A JSON escape of a UTF-16 surrogate: only then can a decoded string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
MAX_DEPTH = 100


def nesting_depth(data: Any) -> int:
    """How deeply arrays and objects nest (iteratively: the input may be deep)."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _reject_constant(name: str) -> Any:
    raise ParseError(f"JSON constant {name} is not allowed")


# Made once: `json.loads` with any keyword builds a new decoder (and its scanner) per call.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=exact_float)


def load_json(body: bytes) -> Any:
    """Decode a JSON body strictly: UTF-8, no NaN/Infinity, no lone surrogates; every number
    exact, as `wahookd.events.load_json` reads it (an `ExactFloat` where a float is not).

    orjson first (it refuses NaN, Infinity, invalid UTF-8 and lone surrogates, so what it
    reads needs no more checks than the depth); `json` when orjson refuses the body, which
    then raises the precise error, or read a float, which it may have rounded. The cost is in
    `wahookd.events.load_json`: less than `json` alone for a body without a float.
    """
    try:
        data = orjson.loads(body)
        exact = orjson_is_exact(data, body)
        checked = True  # orjson refuses lone surrogates
    except orjson.JSONDecodeError:
        exact = checked = False
    if not exact:
        try:
            data = _STRICT_DECODER.decode(body.decode("utf-8"))
        except ParseError:
            raise
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ParseError(f"invalid JSON: {type(exc).__name__}") from None
    # The byte count is a fast bound: fewer brackets than the limit cannot nest past it.
    brackets = body.count(b"[") + body.count(b"{")
    if brackets > MAX_DEPTH and nesting_depth(data) > MAX_DEPTH:
        # Near the interpreter's recursion limit every later json.dumps (journal, sinks)
        # could fail; real webhooks nest a dozen levels.
        raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if not checked and _SURROGATE_ESCAPE.search(body):
        # Meta escapes emoji as surrogate pairs, which decode fine; a lone one cannot be
        # stored as UTF-8 by the journal or any sink.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ParseError("invalid JSON: lone surrogate in a string") from None
    return data


def load_json_object(body: bytes) -> dict[str, Any]:
    data = load_json(body)
    if not isinstance(data, dict):
        raise ParseError("expected a JSON object")
    return data


def load_form(body: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body as a flat dict (the last value wins)."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except ValueError as exc:
        raise ParseError(f"invalid form body: {type(exc).__name__}") from None
    return dict(pairs)


def form_pairs(body: bytes) -> list[tuple[str, str]] | None:
    """Every name/value pair of a form body, or None when it does not decode."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except ValueError:
        return None


def as_object(value: Any, default: dict[str, Any] | None = None) -> dict[str, Any]:
    """`value` when it is a JSON object, else `default` (an empty one)."""
    if isinstance(value, dict):
        return value
    return {} if default is None else default


def text(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def ident(value: Any) -> str | None:
    """An id as a string: strings and integers (not booleans) are ids."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def integer(value: Any) -> int | None:
    """An integer from an int, a digit string or a protobuf Long (`{"low": ...}`)."""
    if isinstance(value, dict):
        value = value.get("low")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) < 30:
        digits = value.strip().removeprefix("-")
        # isdigit() alone admits "²", which int() refuses.
        if digits.isascii() and digits.isdigit():
            return int(value)
    return None


def timestamp(value: Any) -> str | None:
    """`rfc3339` that also survives numbers too large for a float."""
    try:
        return rfc3339(value)
    except (OverflowError, ValueError, TypeError):
        return None


def flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def header(headers: Any, name: str) -> str | None:
    """One header value, tolerating mappings that are not case-insensitive."""
    try:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.lower())
    except Exception:  # a provider's verify must never raise (a 500 for a forged request)
        return None
    return value if isinstance(value, str) else None


def hmac_digest(secret: bytes, message: bytes, algorithm: str) -> bytes:
    return hmac.new(secret, message, getattr(hashlib, algorithm)).digest()


def query_value(query: Any, name: str) -> str | None:
    """The first value of a query argument (Tornado gives lists of bytes)."""
    try:
        values = query.get(name)
    except Exception:  # never raise while verifying
        return None
    if not values:
        return None
    value = values[0] if isinstance(values, list | tuple) else values
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None
