"""`wahookd fsck [--repair]`: check the journal, and fix what can be fixed without losing an event.

What a torn disk, a crashed migration or an operator's hand can leave behind (SPEC §7), and
what `--repair` does about it:

- **integrity**: SQLite's `integrity_check` finds damage. `REINDEX` when only indexes are
  wrong; anything else needs a backup or `sqlite3 journal.db .recover`.
- **WAL**: `journal.db-wal` ends in a write cut short (frames after its last commit, or a
  torn frame); SQLite ignores that part, and with `durability = "fsync"` no `200` was sent
  for it. A checkpoint starts the WAL afresh.
- **cursor**: a sink's position is past the journal's end (the journal lost its last
  events, or was restored from an older copy). It goes back to the end.
- **positions**: two events hold one delivery position: the later gets a new one (it is
  delivered again: at least once). Positions missing above a sink's cursor, which `forget`
  did not erase, are events lost before every sink had them: nothing brings them back.
- **media**: an event waits for media but its stored body is not a JSON object (it stops the
  media stage for every event): the row goes to `fsck-quarantine-<time>.jsonl` in the state
  directory. An event waits for media the stage already stored or gave up on
  (`media.stored` or `media.error` set; the stage would fetch it again from a link that has
  likely expired): it gets its delivery position as it is.
- **dead letters** of a sink the configuration does not have: kept in
  `dead-letters-<sink>-<time>.jsonl` in the state directory, then removed.
- **retries** rows of such a sink: removed (they only inform `trace` and `status`).

The checks run beside a running daemon (read-only, the WAL file left out: it is being
written); `--repair` needs the state directory to itself, as `serve` does, since the daemon
numbers events and keeps sink positions in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wahookd.admin import open_journal
from wahookd.errors import WahookdError
from wahookd.events import event_ref, load_json
from wahookd.journal import JOURNAL_FILE, JournalMaintenance
from wahookd.settings import Settings, load_settings
from wahookd.statelock import StateLock, holder_pid

WAL_MAGIC = (0x377F0682, 0x377F0683)  # little-endian / big-endian checksums
WAL_HEADER = 32
FRAME_HEADER = 24
MOST_INTEGRITY_LINES = 20


@dataclass
class Problem:
    text: str
    repair: Callable[[JournalMaintenance], str] | None = None  # returns what it did
    cannot: str = ""  # why there is no repair


# -- the WAL file ---------------------------------------------------------------------


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing (s0, s1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for index in range(0, len(words), 2):
        s0 = (s0 + words[index] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[index + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def torn_wal(path: Path) -> str | None:
    """Why the WAL's end is torn, or None when it ends on a commit (or there is none).

    A frame counts while its salts match the header's and the running checksum holds;
    SQLite replays frames up to the last commit frame among those. Frames of the current
    salts past that point, or a partial frame of them at the file's end, are a write cut
    short. Frames of older salts are what a restarted WAL leaves behind, as usual."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data:
        return None
    if len(data) < WAL_HEADER:
        return f"{path.name}: {len(data)} bytes, shorter than a WAL header (a write cut short)"
    magic, _version, page_size, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:WAL_HEADER])
    if magic not in WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
        return f"{path.name}: not a WAL header (the file is damaged; SQLite ignores it)"
    big = magic == WAL_MAGIC[1]
    if _checksum(data[:24], 0, 0, big) != (c1, c2):
        return f"{path.name}: its header's checksum is wrong (SQLite ignores the whole file)"
    frame = FRAME_HEADER + page_size
    offset, frames, committed, sums = WAL_HEADER, 0, 0, (c1, c2)
    reason = ""
    while offset < len(data):
        header = data[offset : offset + FRAME_HEADER]
        if len(header) < FRAME_HEADER:
            break  # a sliver: too short to tell whose it is
        _page, commit, frame_salt1, frame_salt2, f1, f2 = struct.unpack(">6I", header)
        if (frame_salt1, frame_salt2) != (salt1, salt2):
            break  # an older WAL's leftovers
        if offset + frame > len(data):
            reason = f"its last frame is cut short ({len(data) - offset} of {frame} bytes)"
            break
        sums = _checksum(header[:8], *sums, big)
        sums = _checksum(data[offset + FRAME_HEADER : offset + frame], *sums, big)
        if sums != (f1, f2):
            reason = f"frame {frames + 1} has a wrong checksum"
            break
        frames += 1
        if commit:
            committed = frames
        offset += frame
    uncommitted = frames - committed
    if uncommitted:
        reason = (reason + "; " if reason else "") + f"{uncommitted} frames after its last commit"
    if not reason:
        return None
    return (
        f"{path.name}: the last write was cut short (a crash or a torn disk): {reason}; "
        "SQLite ignores what follows the last whole commit"
    )


# -- the checks ----------------------------------------------------------------------


def keep_rows(state_dir: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines to a new 0600 file in the state directory, fsynced."""
    path = state_dir / f"{name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    return path


def check(journal: JournalMaintenance, settings: Settings) -> list[Problem]:
    """Every problem found, in the order of the module doc's table."""
    problems: list[Problem] = []
    state_dir = settings.state.dir
    damage = journal.integrity(MOST_INTEGRITY_LINES + 1)
    if damage:
        shown = damage[:MOST_INTEGRITY_LINES]
        only_indexes = all("index" in line for line in damage)

        def reindex(j: JournalMaintenance) -> str:
            j.reindex()
            left = j.integrity(1)
            return "indexes rebuilt" + (f"; still damaged: {left[0]}" if left else "")

        for number, line in enumerate(shown):
            problems.append(
                Problem(
                    f"integrity: {line}",
                    reindex if only_indexes and number == 0 else None,
                    "" if only_indexes else "restore a backup, or `sqlite3 journal.db .recover`",
                )
            )
        if len(damage) > MOST_INTEGRITY_LINES:
            problems.append(Problem("integrity: more damage than shown", None, "see above"))
    end = journal.end()
    cursors = journal.cursors()
    for sink, position in sorted(cursors.items()):
        if position > end:
            problems.append(
                Problem(
                    f"cursor: sink {sink} is at position {position}, past the journal's end {end} "
                    "(the journal lost its last events, or was restored from an older copy)",
                    lambda j, sink=sink, end=end: (j.set_cursor(sink, end), f"sink {sink} set back to {end}")[
                        1
                    ],
                )
            )
    for dseq, seqs in journal.duplicate_positions():

        def renumber(j: JournalMaintenance, seqs: list[int] = seqs) -> str:
            given = [j.give_position(seq) for seq in seqs[1:]]
            return f"gave the later events positions {', '.join(map(str, given))}"

        problems.append(Problem(f"positions: {len(seqs)} events hold position {dseq}", renumber))
    configured = settings.effective_sinks()
    started = [cursors[name] for name in configured if name in cursors]
    if started:
        lowest = min(started)
        slowest = min((name for name in configured if name in cursors), key=lambda name: cursors[name])
        for first, last in journal.missing_positions(lowest):
            span = f"{first}" if first == last else f"{first}-{last}"
            problems.append(
                Problem(
                    f"positions: {span} missing above sink {slowest}'s cursor {lowest}: "
                    f"{last - first + 1} events lost before every sink had them",
                    None,
                    "nothing can bring them back",
                )
            )
    for row in journal.waiting_rows():
        problems.extend(waiting_problem(row.seq, row.event_id, row.body, state_dir))
    dead, retries = journal.sink_rows()
    for sink, count in sorted(dead.items()):
        if sink not in configured:

            def keep_dead(j: JournalMaintenance, sink: str = sink) -> str:
                rows = j.dead_letter_rows(sink)
                path = keep_rows(state_dir, f"dead-letters-{sink}", rows)
                removed = j.delete_dead_letters(sink, max(row["id"] for row in rows))
                return f"{removed} kept in {path}, then removed"

            problems.append(
                Problem(
                    f"dead letters: {count} of sink {sink}, which the configuration does not have", keep_dead
                )
            )
    for sink, count in sorted(retries.items()):
        if sink not in configured:
            problems.append(
                Problem(
                    f"retries: {count} rows of sink {sink}, which the configuration does not have",
                    lambda j, sink=sink: f"{j.delete_retries(sink)} removed",
                )
            )
    return problems


def waiting_problem(seq: int, event_id: str, body: str, state_dir: Path) -> list[Problem]:
    """What is wrong with an event that has no delivery position, if anything."""
    ref = event_ref(event_id)
    try:
        event = load_json(body)
    except ValueError:
        event = None
    if not isinstance(event, dict):

        def quarantine(j: JournalMaintenance) -> str:
            row = j.take_row(seq)
            if row is None:
                return "gone already"
            return f"row moved to {keep_rows(state_dir, 'fsck-quarantine', [row])}"

        return [
            Problem(
                f"media: event {ref} (seq {seq}) waits for media, but its stored body is not a JSON "
                "object: it stops the media stage for every event",
                quarantine,
            )
        ]
    media = event.get("media")
    if isinstance(media, dict) and (media.get("stored") or media.get("error")):
        settled = "stored" if media.get("stored") else "given up on"
        return [
            Problem(
                f"media: event {ref} (seq {seq}) waits for media that was {settled} already "
                "(the media stage would fetch it again)",
                lambda j: f"released to the sinks at position {j.give_position(seq)}",
            )
        ]
    return []


def fsck(settings: Settings, repair: bool) -> tuple[list[str], bool]:
    """The report's lines and whether the journal is sound (after repairs, with `repair`)."""
    state_dir = settings.state.dir
    lock: StateLock | None = None
    running = holder_pid(state_dir)
    if repair:
        if running is not None:
            raise WahookdError(
                f"fsck --repair: the daemon (pid {running}) uses {state_dir}; stop it first "
                "(it numbers events and keeps sink positions in memory)"
            )
        lock = StateLock(state_dir)
        lock.acquire()
    lines: list[str] = []
    try:
        # Looked at before SQLite opens the file: a writer's connection would replay it.
        sqlite = not settings.state.shared  # the file-level checks are SQLite's
        torn = torn_wal(state_dir / (JOURNAL_FILE + "-wal")) if running is None and sqlite else None
        journal = open_journal(settings.state, write=repair)
        try:
            problems = check(journal, settings)
            if torn:
                problems.insert(
                    0,
                    Problem(
                        torn,
                        lambda j: "WAL checkpointed and started afresh ({2} of {1} frames copied)".format(
                            *j.checkpoint()
                        ),
                    ),
                )
            for problem in problems:
                lines.append(problem.text)
                if not repair:
                    continue
                if problem.repair is None:
                    lines.append(f"  not repaired: {problem.cannot or 'no safe repair'}")
                    continue
                try:
                    lines.append(f"  repaired: {problem.repair(journal)}")
                except (sqlite3.Error, OSError) as exc:
                    lines.append(f"  not repaired: {exc}")
            sound = not problems
            if repair and problems:
                left = check(journal, settings)
                sound = not left
                if not sound:
                    lines.append(f"{len(left)} problems remain")
        finally:
            journal.close()
        if repair and torn and torn_wal(state_dir / (JOURNAL_FILE + "-wal")):
            sound = False
            lines.append("the WAL is still torn")
    finally:
        if lock is not None:
            lock.release()
    return lines, sound


def run_fsck(args: argparse.Namespace) -> int:
    """`wahookd fsck [--repair]`: exit 0 when sound, 1 with one line per problem."""
    settings, _ = load_settings(args.config, read_secrets=False)
    lines, sound = fsck(settings, bool(args.repair))
    if sound and not lines:
        lines.append("journal ok")
    if settings.state.shared:
        lines.append("(postgres: the file and WAL checks are SQLite-only; PostgreSQL checks its own pages)")
    elif running := holder_pid(settings.state.dir):
        lines.append(f"(the daemon, pid {running}, is running: its WAL file was not checked)")
    print("\n".join(lines))
    return 0 if sound else 1
