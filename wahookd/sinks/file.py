"""The `file` sink: one SPEC §4 event per line of a JSONL file, rotated by size.

`deliver()` only buffers the line; `flush()` (called by wahookd before it records the
sink's position) appends the buffer and fsyncs it when durability is on. After a crash
the events since the last recorded position are delivered again, so the sink remembers
the ids it wrote most recently (read back from the file's tail at start) and skips them:
the file holds every event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wahookd.errors import DeliveryError, WahookdError
from wahookd.events import dump_json, load_json
from wahookd.hookspecs import SinkContext, SinkSpec, hookimpl

# How many recent ids to remember; far more than one batch, the most a crash can repeat.
RECENT_IDS = 20_000
TAIL_BYTES = 8 * 1024 * 1024
# Lines go to the file in writes of about this much, each joined in a buffer under glibc's
# mmap threshold (128 KiB, see `wahookd.daemon.map_large_blocks`): one buffer for a whole
# batch (2 MB under load) was a fresh mapping per flush, and a page fault per 4 KiB of it.
WRITE_BYTES = 64 * 1024


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="the JSONL file; rotated files get .1, .2, ...")
    max_bytes: int = Field(100 * 1024 * 1024, ge=0, description="rotate past this size; 0 never")
    backups: int = Field(5, ge=0, description="rotated files kept")


def check_writable(path: Path) -> None:
    """Refuse, at config time, a path the sink could never write (it would retry forever).

    Nothing is created: `check-config` run as root must not leave files the service user
    then cannot append to. A temporary file in the nearest existing directory is the one
    test that also holds for root, which `os.access` answers yes for almost anywhere."""
    if path.is_dir():
        raise WahookdError(f"path: {path} is a directory")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise WahookdError(f"path: {path} is not writable")
        return
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise WahookdError(f"path: {ancestor} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise WahookdError(f"path: cannot write under {ancestor}: {exc.strerror or exc}") from None


class FileSink:
    def __init__(self, options: FileOptions, context: SinkContext) -> None:
        self.path = options.path if options.path.is_absolute() else context.state_dir / options.path
        check_writable(self.path)
        self.max_bytes = options.max_bytes
        self.backups = options.backups
        self.durable = context.durable
        self._lines: list[bytes] = []
        self._unsynced = False  # written but not yet fsynced
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for event_id in await asyncio.to_thread(self._tail_ids):
            self._remember(event_id)

    async def deliver(self, event: dict[str, Any]) -> None:
        event_id = event["id"]
        if event_id in self._recent:
            return
        self._remember(event_id)
        self._lines.append(dump_json(event) + b"\n")

    async def flush(self) -> None:
        try:
            await self._write_out()
        except OSError as exc:  # a full disk, a directory gone: retried, one log line
            raise DeliveryError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    async def _write_out(self) -> None:
        if not self._lines and not self._unsynced:
            return
        # The append lands in the page cache, microseconds, so it happens here; only the
        # fsync, which waits for the disk, goes to a thread. Each thread's system call
        # hands the GIL over and back, and one per file operation was a measurable cost.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if self._lines:
                self._append(fd, self._lines)
                self._lines.clear()  # written: a retry must not append them again...
                self._unsynced = self.durable  # ...but must still make them durable
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        if self._unsynced:
            # fsync and close together in the thread: a cancelled flush must not close
            # the file under a running fsync.
            await asyncio.to_thread(self._sync_and_close, fd)
            self._unsynced = False
        else:
            os.close(fd)
        if self.max_bytes and size >= self.max_bytes:
            await asyncio.to_thread(self._rotate)

    @staticmethod
    def _append(fd: int, lines: list[bytes]) -> None:
        """Write all of `lines`, or nothing: a failed write (a full disk) is cut back off,
        so the retry leaves no torn line."""
        start = os.fstat(fd).st_size
        try:
            for piece in joined(lines, WRITE_BYTES):
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    @staticmethod
    def _sync_and_close(fd: int) -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def close(self) -> None:
        await self.flush()

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _tail_ids(self) -> list[str]:
        """Ids in the last lines of the file, oldest first."""
        try:
            with self.path.open("rb") as src:
                size = src.seek(0, os.SEEK_END)
                src.seek(max(0, size - TAIL_BYTES))
                tail = src.read()
        except FileNotFoundError:
            return []
        ids = []
        for line in tail.splitlines()[-RECENT_IDS:]:
            try:
                ids.append(load_json(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue  # the first line of the tail is usually cut in half
        return ids

    def _rotate(self) -> None:
        if self.backups == 0:
            self.path.unlink()
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def joined(lines: list[bytes], most: int) -> Iterator[bytes]:
    """`lines` joined into pieces of at most `most` bytes (a longer line is a piece alone)."""
    piece: list[bytes] = []
    size = 0
    for line in lines:
        if piece and size + len(line) > most:
            yield b"".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += len(line)
    if piece:
        yield b"".join(piece)


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [SinkSpec("file", FileOptions, FileSink, "append events to a JSONL file")]
