"""The `rejected/` store: verified bodies that could not be parsed, kept for inspection."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import structlog

log = structlog.get_logger("wahookd.rejected")


class RejectedStore:
    """Writes `<dir>/<time>-<source>-<random>.body` and a `.json` note with the reason.

    At most `limit` bodies are kept, the oldest going first, so a flood of bad requests
    cannot fill the disk.
    """

    def __init__(self, directory: Path, limit: int = 1000) -> None:
        self.directory = directory
        self.limit = limit

    async def save(self, source: str, body: bytes, reason: str) -> None:
        try:
            await asyncio.to_thread(self._write, source, body, reason)
        except OSError as exc:  # keeping the evidence must never turn a 400 into a 500
            log.error("rejected_store_failed", source=source, error=str(exc))

    def _write(self, source: str, body: bytes, reason: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{source}-{secrets.token_hex(4)}"
        (self.directory / f"{stem}.body").write_bytes(body)
        note = {"source": source, "reason": reason, "received_at": time.time(), "bytes": len(body)}
        (self.directory / f"{stem}.json").write_text(json.dumps(note))
        bodies = sorted(self.directory.glob("*.body"))
        for old in bodies[: max(0, len(bodies) - self.limit)]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
