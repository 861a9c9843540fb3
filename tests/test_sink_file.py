"""The file sink: JSONL lines, rotation by size, no doubled lines after a crash."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import structlog

from wahookd.errors import DeliveryError
from wahookd.hookspecs import SinkContext
from wahookd.sinks.file import FileOptions, FileSink, joined


def make(tmp_path: Path, **options: object) -> FileSink:
    context = SinkContext("archive", tmp_path, durable=True, log=structlog.get_logger())
    return FileSink(FileOptions(path=tmp_path / "events.jsonl", **options), context)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_events_become_lines_on_flush(tmp_path: Path) -> None:
    sink = make(tmp_path)
    await sink.start()
    await sink.deliver({"id": "a", "text": "olá"})
    assert not (tmp_path / "events.jsonl").exists()
    await sink.flush()
    assert lines(tmp_path / "events.jsonl") == [{"id": "a", "text": "olá"}]


async def test_redelivery_after_a_restart_writes_no_second_line(tmp_path: Path) -> None:
    sink = make(tmp_path)
    await sink.start()
    for name in "abc":
        await sink.deliver({"id": name})
    await sink.flush()
    again = make(tmp_path)  # as after SIGKILL: the journal re-delivers from its last cursor
    await again.start()
    for name in "bcd":
        await again.deliver({"id": name})
    await again.close()
    assert [e["id"] for e in lines(tmp_path / "events.jsonl")] == ["a", "b", "c", "d"]


async def test_the_file_rotates_past_max_bytes(tmp_path: Path) -> None:
    sink = make(tmp_path, max_bytes=200, backups=2)
    await sink.start()
    for i in range(30):
        await sink.deliver({"id": f"e{i}", "pad": "x" * 40})
        await sink.flush()
    rotated = sorted(p.name for p in tmp_path.iterdir())
    assert rotated == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size < 260 for p in tmp_path.iterdir())
    kept = [
        event["id"]
        for name in ("events.jsonl.2", "events.jsonl.1", "events.jsonl")
        for event in lines(tmp_path / name)
    ]
    # Oldest files dropped, the rest in order: a contiguous tail ending with the last event.
    assert kept == [f"e{i}" for i in range(30 - len(kept), 30)]
    assert len(kept) >= 8


async def test_a_failed_fsync_is_retried_before_the_batch_counts_as_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines are written once; the retry (the worker calls flush again, the redelivered
    ids being skipped) must still fsync them before it reports success."""
    synced: list[int] = []

    def failing_once(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 1:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_once)
    sink = make(tmp_path)
    await sink.start()
    await sink.deliver({"id": "a"})
    with pytest.raises(DeliveryError, match="I/O error"):
        await sink.flush()
    await sink.deliver({"id": "a"})  # redelivered: already written, so skipped
    await sink.flush()
    assert len(synced) == 2
    assert lines(tmp_path / "events.jsonl") == [{"id": "a"}]


async def test_a_write_cut_short_by_a_full_disk_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = make(tmp_path)
    await sink.start()
    await sink.deliver({"id": "a"})
    await sink.flush()
    real_write = os.write
    calls: list[int] = []

    def half_then_full(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    await sink.deliver({"id": "b", "text": "x" * 100})
    with pytest.raises(DeliveryError, match="No space"):
        await sink.flush()
    monkeypatch.setattr(os, "write", real_write)
    assert lines(tmp_path / "events.jsonl") == [{"id": "a"}]  # cut back to whole lines
    await sink.flush()  # the retry, once there is room
    assert [e["id"] for e in lines(tmp_path / "events.jsonl")] == ["a", "b"]


def test_lines_are_written_in_pieces_under_the_mmap_threshold() -> None:
    lines = [b"a" * 40 + b"\n"] * 5 + [b"b" * 200 + b"\n"] + [b"c\n"]
    pieces = list(joined(lines, 100))
    assert b"".join(pieces) == b"".join(lines)
    assert [len(piece) for piece in pieces] == [82, 82, 41, 201, 2]
    assert all(len(piece) <= 100 or piece.count(b"\n") == 1 for piece in pieces)
