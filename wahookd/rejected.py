"""The `rejected/` store: verified bodies that could not be parsed, kept for inspection.

What is kept never holds a credential: a body is verified, so it may carry the source's own
token (Evolution sends it in the body's `apikey`) or other credentials. Before writing, every
secret of the source's settings is cut out wherever it occurs (as sent, JSON-escaped or
URL-encoded), and so is the value of every field whose name says it is a credential (`apikey`,
`token`, `password`, ...), whatever its value. Files are 0600 in a 0700 directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

import structlog
from pydantic import BaseModel, SecretStr

log = structlog.get_logger("wahookd.rejected")

REDACTED = b"[redacted]"
# Field names that hold credentials in the providers' payloads and in webhooks at large,
# compared without case, `-` and `_` (so `apiKey`, `api_key` and `API-KEY` are one name).
CREDENTIAL_FIELDS = (
    "apikey",
    "accesstoken",
    "authtoken",
    "token",
    "secret",
    "clientsecret",
    "password",
    "passwd",
    "authorization",
    "verifytoken",
    "hubverifytoken",
)
_FIELD_NAME = rb"[A-Za-z0-9_.\-]{1,64}"
# "name": "value" (also cut off at the body's end), or "name": a bare number / word.
_JSON_FIELD = re.compile(rb'"(' + _FIELD_NAME + rb')"(\s*:\s*)("(?:[^"\\]|\\.)*(?:"|\Z)|[\w.+/=\-]+)')
# name=value in a form body or a query string.
_FORM_FIELD = re.compile(rb"(?:(?<=^)|(?<=[&?;\s]))(" + _FIELD_NAME + rb")=([^&\s]*)")
FILE_MODE = 0o600
DIR_MODE = 0o700


def _is_credential(name: bytes) -> bool:
    bare = name.decode("ascii", "replace").lower().replace("_", "").replace("-", "").replace(".", "")
    return bare in CREDENTIAL_FIELDS or bare.endswith(("apikey", "token", "secret", "password"))


def secrets_of(settings: BaseModel | None) -> list[bytes]:
    """Every secret value in a settings model (SecretStr fields and lists of them)."""
    found: list[bytes] = []
    for value in dict(settings or {}).values():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, SecretStr) and item.get_secret_value():
                found.append(item.get_secret_value().encode())
    return found


def _spellings(secret: bytes) -> set[bytes]:
    """The forms a secret takes in a body: as is, JSON-escaped, URL-encoded."""
    forms = {secret}
    text = secret.decode("utf-8", "replace")
    for ascii_only in (True, False):
        escaped = json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode()
        forms.update({escaped, escaped.replace(b"/", b"\\/")})
    forms.update({quote(secret, safe="").encode(), quote_plus(secret, safe="").encode()})
    return {form for form in forms if form}


def redact(body: bytes, known_secrets: Iterable[bytes] = ()) -> bytes:
    """`body` without the given secrets, anywhere, and without credential fields' values."""
    spellings = {form for secret in known_secrets if secret for form in _spellings(secret)}
    for form in sorted(spellings, key=len, reverse=True):  # longest first: no half-cut secrets
        body = body.replace(form, REDACTED)

    def json_field(match: re.Match[bytes]) -> bytes:
        if not _is_credential(match.group(1)):
            return match.group(0)
        return b'"' + match.group(1) + b'"' + match.group(2) + b'"' + REDACTED + b'"'

    def form_field(match: re.Match[bytes]) -> bytes:
        return match.group(1) + b"=" + REDACTED if _is_credential(match.group(1)) else match.group(0)

    return _FORM_FIELD.sub(form_field, _JSON_FIELD.sub(json_field, body))


class RejectedStore:
    """Writes `<dir>/<time>-<source>-<random>.body` and a `.json` note with the reason.

    At most `limit` bodies are kept, the oldest going first, so a flood of bad requests
    cannot fill the disk.
    """

    def __init__(self, directory: Path, limit: int = 1000) -> None:
        self.directory = directory
        self.limit = limit
        self._tightened = False

    async def save(self, source: str, body: bytes, reason: str, *, settings: BaseModel | None = None) -> None:
        """Keep `body`, without any secret of the source's `settings` or credential field."""
        known = secrets_of(settings)
        try:
            await asyncio.to_thread(self._write, source, redact(body, known), redact(reason.encode(), known))
        except OSError as exc:  # keeping the evidence must never turn a 400 into a 500
            log.error("rejected_store_failed", source=source, error=str(exc))

    def _write(self, source: str, body: bytes, reason: bytes) -> None:
        self._prepare_directory()
        stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{source}-{secrets.token_hex(4)}"
        self._write_private(self.directory / f"{stem}.body", body)
        note = {
            "source": source,
            "reason": reason.decode("utf-8", "replace"),
            "received_at": time.time(),
            "bytes": len(body),
        }
        self._write_private(self.directory / f"{stem}.json", json.dumps(note).encode())
        bodies = sorted(self.directory.glob("*.body"))
        for old in bodies[: max(0, len(bodies) - self.limit)]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)

    def _prepare_directory(self) -> None:
        """The directory 0700, and once per process what older versions left readable, 0600."""
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.directory, DIR_MODE)
        if not self._tightened:
            for path in self.directory.iterdir():
                if path.is_file() and not path.is_symlink():
                    os.chmod(path, FILE_MODE)
            self._tightened = True

    def erase_mentioning(self, contact: str) -> int:
        """Delete every kept body (and its note) that mentions `contact` (`wahookd forget`):
        phone digits as a whole number (not inside a longer one; `+`, `whatsapp:` or a JID
        around them still match), a LID as written. Returns how many bodies went."""
        if contact.isdigit():
            pattern = re.compile(rb"(?<![0-9])" + contact.encode() + rb"(?![0-9])")
        else:
            pattern = re.compile(re.escape(contact.encode()))
        if not self.directory.is_dir():
            return 0
        erased = 0
        for body in sorted(self.directory.glob("*.body")):
            try:
                data = body.read_bytes()
            except FileNotFoundError:  # the daemon rotated it out meanwhile
                continue
            if pattern.search(data):
                body.unlink(missing_ok=True)
                body.with_suffix(".json").unlink(missing_ok=True)
                erased += 1
        return erased

    @staticmethod
    def _write_private(path: Path, data: bytes) -> None:
        # Created 0600 from the start (never chmod after writing: a reader could open it
        # in between); O_EXCL and O_NOFOLLOW refuse a file or link planted in its place.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
