"""`wahookd replay`, `wahookd status` and `wahookd plugins`: operator commands on the state dir.

They run beside a live daemon: the journal is opened with SQLite's own locking (WAL, a
5-second busy timeout), read-only where the command only reads. `replay` builds the sink in
this process and delivers itself, so it works whether or not the daemon runs; a dead letter
is deleted only after the sink has taken the event and flushed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from wahookd.delivery import build_sink, call_optional
from wahookd.errors import DeliveryError, PermanentDeliveryError, WahookdError
from wahookd.hookspecs import Sink, SinkContext
from wahookd.journal import JOURNAL_FILE
from wahookd.log import configure_logging
from wahookd.plugins import collect, get_plugin_manager
from wahookd.settings import Settings, SinkSettings, load_settings

REPLAY_BATCH = 200
# A replay is run by a person who is watching: a few quick tries, then report the failure
# and leave the dead letter in place, rather than the daemon's day-long retry schedule.
REPLAY_ATTEMPTS = 3
REPLAY_MAX_WAIT = 10.0


# -- the journal, opened beside a running daemon -----------------------------------


def open_journal(state_dir: Path, *, write: bool = False) -> sqlite3.Connection:
    """Open ``<state_dir>/journal.db``; read-only unless `write`. Missing → `WahookdError`."""
    path = state_dir / JOURNAL_FILE
    if not path.exists():
        raise WahookdError(
            f"no journal at {path}: wahookd has not run with this state directory yet "
            "(check state.dir and --config)"
        )
    conn: sqlite3.Connection | None = None
    if not write:
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("SELECT 1 FROM events LIMIT 1")
        except sqlite3.Error:
            # Read-only WAL opening needs the -shm file or a writable directory; when it
            # is not possible, a normal connection that only reads is just as safe.
            conn = None
    if conn is None:
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("SELECT 1 FROM events LIMIT 1")
        except sqlite3.Error as exc:
            raise WahookdError(f"cannot read the journal {path}: {exc}") from None
    return conn


def parse_since(text: str | None) -> float | None:
    """``--since``: an RFC 3339 time (or a date) as epoch seconds; naive times are UTC."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise WahookdError(
            f"--since: expected an RFC 3339 time like 2026-11-26T10:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def received_epoch(event: dict[str, Any]) -> float | None:
    value = event.get("received_at")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- progress -------------------------------------------------------------------------


class Progress:
    """A ``\\r`` counter on a terminal; a line every few seconds otherwise (logs, CI)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.1 if self.tty else 5.0
        self.done = 0
        self.failed = 0
        self._shown = 0.0
        self._shown_text = ""

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.monotonic()
        if now - self._shown >= self.every:
            self._shown = now
            self._show(final=False)

    def finish(self) -> None:
        self.total = self.done  # the count was taken before filtering by --since
        self._show(final=True)

    def _show(self, final: bool) -> None:
        total = max(self.total, self.done)
        percent = 100 * self.done // total if total else 100
        text = f"{self.label}: {self.done}/{total} ({percent}%), {self.failed} failed"
        if text == self._shown_text and not (final and self.tty):
            return
        self._shown_text = text
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# -- replay -----------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One event to replay; `dead_id` is its dead_letters row, if it came from there."""

    event: dict[str, Any]
    dead_id: int | None = None


@dataclass(slots=True)
class ReplayResult:
    sink: str
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def dead_items(conn: sqlite3.Connection, sink: str, since: float | None) -> Iterator[Item]:
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, body FROM dead_letters WHERE sink = ? AND id > ? ORDER BY id LIMIT ?",
            (sink, last, REPLAY_BATCH),
        ).fetchall()
        if not rows:
            return
        for dead_id, body in rows:
            last = dead_id
            event = json.loads(body)
            received = received_epoch(event)
            if since is not None and received is not None and received < since:
                continue
            yield Item(event, dead_id)


def journal_items(conn: sqlite3.Connection, since: float | None) -> Iterator[Item]:
    last = 0
    while True:
        rows = conn.execute(
            "SELECT dseq, body FROM events WHERE dseq > ? AND received_at >= ? "
            "ORDER BY dseq LIMIT ?",
            (last, since or 0.0, REPLAY_BATCH),
        ).fetchall()
        if not rows:
            return
        for dseq, body in rows:
            last = dseq
            yield Item(json.loads(body))


def count_items(conn: sqlite3.Connection, sink: str, dead: bool, since: float | None) -> int:
    if dead:
        return int(conn.execute("SELECT count(*) FROM dead_letters WHERE sink = ?", (sink,)).fetchone()[0])
    row = conn.execute(
        "SELECT count(*) FROM events WHERE dseq IS NOT NULL AND received_at >= ?", (since or 0.0,)
    ).fetchone()
    return int(row[0])


async def deliver_with_retries(sink: Sink, event: dict[str, Any]) -> tuple[str | None, int]:
    """Deliver one event: (None, attempts) on success, else (the last error, attempts)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            await sink.deliver(event)
        except PermanentDeliveryError as exc:
            return str(exc) or type(exc).__name__, attempt
        except Exception as exc:  # the sink boundary: anything else may pass on a retry
            if attempt >= REPLAY_ATTEMPTS:
                return str(exc) or type(exc).__name__, attempt
            wait = exc.retry_after if isinstance(exc, DeliveryError) else None
            await asyncio.sleep(min(REPLAY_MAX_WAIT, wait if wait is not None else 0.5 * attempt))
            continue
        return None, attempt


async def replay_sink(
    name: str,
    table: SinkSettings,
    sink: Sink,
    conn: sqlite3.Connection,
    *,
    dead: bool,
    since: float | None,
    stream: TextIO | None = None,
) -> ReplayResult:
    """Deliver the sink's dead letters (or the journal) to it; see the module docstring."""
    result = ReplayResult(name)
    progress = Progress(f"replay {name}", count_items(conn, name, dead, since), stream)
    items = dead_items(conn, name, since) if dead else journal_items(conn, since)
    await call_optional(sink, "start")
    try:
        batch: list[Item] = []
        for item in items:
            if not dead and not table.matches(item.event):
                result.skipped += 1
                progress.step(True)
                continue
            batch.append(item)
            if len(batch) >= REPLAY_BATCH:
                await _replay_batch(sink, table, conn, batch, result, progress)
                batch = []
        if batch:
            await _replay_batch(sink, table, conn, batch, result, progress)
    finally:
        await call_optional(sink, "close")
    progress.finish()
    return result


async def _replay_batch(
    sink: Sink,
    table: SinkSettings,
    conn: sqlite3.Connection,
    batch: list[Item],
    result: ReplayResult,
    progress: Progress,
) -> None:
    delivered: list[Item] = []
    window = table.concurrency
    for start in range(0, len(batch), window):
        part = batch[start : start + window]
        outcomes = await asyncio.gather(*(deliver_with_retries(sink, item.event) for item in part))
        for item, (error, attempts) in zip(part, outcomes, strict=True):
            progress.step(error is None)
            if error is None:
                delivered.append(item)
                continue
            result.failed += 1
            if len(result.errors) < 5:
                result.errors.append(f"{item.event.get('id')}: {error}")
            if item.dead_id is not None:
                conn.execute(
                    "UPDATE dead_letters SET attempts = attempts + ?, error = ?, failed_at = ? "
                    "WHERE id = ?",
                    (attempts, error[:1000], time.time(), item.dead_id),
                )
    # Only what the sink has made durable leaves the dead-letter store.
    await call_optional(sink, "flush")
    result.delivered += len(delivered)
    dead_ids = [(item.dead_id,) for item in delivered if item.dead_id is not None]
    if dead_ids:
        conn.executemany("DELETE FROM dead_letters WHERE id = ?", dead_ids)


def sink_context(settings: Settings, name: str) -> SinkContext:
    return SinkContext(
        name=name,
        state_dir=settings.state.dir,
        durable=settings.state.durability == "fsync",
        log=structlog.get_logger("wahookd.sink").bind(sink=name),
    )


def run_replay(args: argparse.Namespace) -> int:
    """`wahookd replay [--sink S] [--dead] [--since T]`; exit 1 when any event failed."""
    configure_logging("warning")
    settings, _ = load_settings(args.config)
    tables = settings.effective_sinks()
    if args.sink and args.sink not in tables:
        raise WahookdError(
            f"no sink {args.sink!r} in the configuration (configured: {', '.join(sorted(tables))})"
        )
    names = [args.sink] if args.sink else sorted(tables)
    since = parse_since(args.since)
    conn = open_journal(settings.state.dir, write=bool(args.dead))
    registry = collect(get_plugin_manager())
    sinks = {name: build_sink(name, tables[name], registry, sink_context(settings, name)) for name in names}

    async def replay_all() -> list[ReplayResult]:
        return [
            await replay_sink(name, tables[name], sinks[name], conn, dead=bool(args.dead), since=since)
            for name in names
        ]

    try:
        results = asyncio.run(replay_all())
    finally:
        conn.close()
    for result in results:
        what = "dead letters" if args.dead else "journal events"
        line = f"replay {result.sink} ({what}): {result.delivered} delivered, {result.failed} failed"
        if result.skipped:
            line += f", {result.skipped} not matching the sink's filter"
        print(line)
        for error in result.errors:
            print(f"  failed {error}")
    return 1 if any(result.failed for result in results) else 0


# -- status -------------------------------------------------------------------------------


@dataclass(slots=True)
class SinkStatus:
    name: str
    plugin: str | None
    cursor: int | None
    backlog: int
    oldest_pending_seconds: float | None
    dead_letters: int


@dataclass(slots=True)
class Status:
    journal: str
    events: int
    bytes: int
    media_pending: int
    media_oldest_seconds: float | None
    dedupe_entries: int
    dedupe_capacity: int
    sinks: list[SinkStatus]


def collect_status(settings: Settings) -> Status:
    conn = open_journal(settings.state.dir)
    try:
        return _collect_status(conn, settings)
    finally:
        conn.close()


def _collect_status(conn: sqlite3.Connection, settings: Settings) -> Status:
    now = time.time()
    path = settings.state.dir / JOURNAL_FILE

    def one(sql: str, *params: Any) -> Any:
        return conn.execute(sql, params).fetchone()[0]

    def age(epoch: float | None) -> float | None:
        return None if epoch is None else max(0.0, now - epoch)

    size = sum(
        candidate.stat().st_size
        for candidate in (path, path.with_name(path.name + "-wal"))
        if candidate.exists()
    )
    tables = settings.effective_sinks()
    cursors = dict(conn.execute("SELECT sink, dseq FROM cursors").fetchall())
    dead = dict(conn.execute("SELECT sink, count(*) FROM dead_letters GROUP BY sink").fetchall())
    sinks = []
    for name in sorted(set(tables) | set(cursors) | set(dead)):
        cursor = cursors.get(name)
        backlog, oldest = 0, None
        if cursor is not None:  # a sink that never ran starts at the journal's end
            backlog = one("SELECT count(*) FROM events WHERE dseq > ?", cursor)
            oldest = one("SELECT min(received_at) FROM events WHERE dseq > ?", cursor)
        table = tables.get(name)
        sinks.append(SinkStatus(
            name, table.plugin if table else None, cursor, backlog, age(oldest), dead.get(name, 0)
        ))
    return Status(
        journal=str(path),
        events=one("SELECT count(*) FROM events"),
        bytes=size,
        media_pending=one("SELECT count(*) FROM events WHERE dseq IS NULL"),
        media_oldest_seconds=age(one("SELECT min(received_at) FROM events WHERE dseq IS NULL")),
        dedupe_entries=one("SELECT count(*) FROM dedupe"),
        dedupe_capacity=settings.dedupe.capacity,
        sinks=sinks,
    )


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_status(status: Status) -> str:
    fill = 100 * status.dedupe_entries / status.dedupe_capacity
    lines = [
        f"journal       {status.journal}",
        f"  events      {status.events} rows, {human_bytes(status.bytes)}",
        f"  media       {status.media_pending} waiting for download, "
        f"oldest {human_age(status.media_oldest_seconds)}",
        f"  dedupe      {status.dedupe_entries} of {status.dedupe_capacity} ({fill:.1f}%)",
        "",
    ]
    rows = [("sink", "plugin", "backlog", "oldest pending", "dead letters")]
    for sink in status.sinks:
        rows.append((
            sink.name,
            sink.plugin or "(not configured)",
            str(sink.backlog),
            human_age(sink.oldest_pending_seconds),
            str(sink.dead_letters),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        cells = [
            cell.rjust(width) if column in (2, 4) else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    """`wahookd status [--json]`."""
    settings, _ = load_settings(args.config)
    status = collect_status(settings)
    if getattr(args, "json", False):
        print(json.dumps(asdict(status), indent=2))
    else:
        print(format_status(status))
    return 0


# -- plugins ------------------------------------------------------------------------------


def run_plugins(args: argparse.Namespace) -> int:
    """`wahookd plugins`: each plugin, where it comes from, and its sinks and providers."""
    manager = get_plugin_manager()
    registry = collect(manager)
    origins = {
        manager.get_name(plugin): f"{dist.project_name} {dist.version} (entry point)"
        for plugin, dist in manager.list_plugin_distinfo()
    }
    names = sorted(
        (manager.get_name(plugin) or repr(plugin) for plugin in manager.get_plugins()),
        key=lambda name: (name in origins, name),  # built-ins first
    )
    for name in names:
        print(f"{name}  [{origins.get(name, 'built-in')}]")
        for sink_name, spec in sorted(registry.sinks.items()):
            if registry.sink_owners[sink_name] == name:
                description = f": {spec.description}" if spec.description else ""
                print(f"  sink {sink_name}{description}")
        for provider_name in sorted(registry.providers):
            if registry.provider_owners[provider_name] == name:
                print(f"  provider {provider_name}")
    return 0
