"""The file sink: JSONL lines, rotation by size, no doubled lines after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from wahookd.hookspecs import SinkContext
from wahookd.sinks.file import FileOptions, FileSink


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
