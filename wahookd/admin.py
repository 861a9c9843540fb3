"""`wahookd replay`, `wahookd status` and `wahookd plugins`: operator commands on the state dir.

They run beside a live daemon: the journal is opened with SQLite's own locking (WAL, a
5-second busy timeout), read-only where the command only reads. `replay` builds the sink in
this process and delivers itself (`wahookd.replay`), so it works whether or not the daemon runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wahookd.delivery import build_sink, sink_context
from wahookd.errors import ConfigError, JournalError, WahookdError
from wahookd.journal import JournalMaintenance, JournalReader, open_store
from wahookd.log import configure_logging
from wahookd.plugins import collect, get_plugin_manager
from wahookd.replay import ReplayResult, parse_since, replay_sink
from wahookd.settings import Settings, StateSettings, load_settings
from wahookd.statelock import RELOAD_RESULT, holder_pid

# -- the journal, opened beside a running daemon -----------------------------------


def open_journal(state: StateSettings | Path, *, write: bool = False) -> JournalMaintenance:
    """The journal of `state` (either backend; a bare directory is SQLite) for a command;
    read-only unless `write`. Missing → `WahookdError`. Every read and change goes through
    its API (`wahookd.journal`)."""
    return open_store(state, write=write)


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
    journal = open_journal(settings.state, write=bool(args.dead))
    registry = collect(get_plugin_manager())
    sinks = {
        name: build_sink(
            name, tables[name], registry, sink_context(name, settings), settings.validation_context
        )
        for name in names
    }

    async def replay_all() -> list[ReplayResult]:
        return [
            await replay_sink(name, tables[name], sinks[name], journal, dead=bool(args.dead), since=since)
            for name in names
        ]

    try:
        results = asyncio.run(replay_all())
    finally:
        journal.close()
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
    paused: bool = False  # by `wahookd pause` (a circuit's pause is the daemon's: /metrics)
    holder: str | None = None  # the node delivering it (state.backend = postgres)


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
    journal = open_journal(settings.state)
    try:
        return _collect_status(journal, settings)
    finally:
        journal.close()


def _collect_status(journal: JournalReader, settings: Settings) -> Status:
    now = time.time()

    def age(epoch: float | None) -> float | None:
        return None if epoch is None else max(0.0, now - epoch)

    figures = journal.figures()
    tables = settings.effective_sinks()
    sinks = []
    for name in sorted(set(tables) | set(figures.cursors) | set(figures.dead_letters)):
        cursor = figures.cursors.get(name)
        backlog, oldest = 0, None
        if cursor is not None:  # a sink that never ran starts at the journal's end
            backlog, oldest = journal.backlog(cursor)
        table = tables.get(name)
        sinks.append(
            SinkStatus(
                name,
                table.plugin if table else None,
                cursor,
                backlog,
                age(oldest),
                figures.dead_letters.get(name, 0),
                name in figures.paused,
                figures.holders.get(name),
            )
        )
    return Status(
        journal=figures.location,
        events=figures.events,
        bytes=figures.bytes,
        media_pending=figures.media_pending,
        media_oldest_seconds=age(figures.media_oldest),
        dedupe_entries=figures.dedupe_entries,
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
    rows = [("sink", "plugin", "backlog", "oldest pending", "dead letters", "")]
    for sink in status.sinks:
        rows.append(
            (
                sink.name,
                sink.plugin or "(not configured)",
                str(sink.backlog),
                human_age(sink.oldest_pending_seconds),
                str(sink.dead_letters),
                "paused" if sink.paused else "",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(6)]
    for row in rows:
        cells = [
            cell.rjust(width) if column in (2, 4) else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_pause(args: argparse.Namespace) -> int:
    return set_sink_pause(args, paused=True)


def run_resume(args: argparse.Namespace) -> int:
    return set_sink_pause(args, paused=False)


def set_sink_pause(args: argparse.Namespace, *, paused: bool) -> int:
    """`wahookd pause SINK` / `resume SINK`: the running daemon obeys within a second; a
    pause holds every delivery to that sink, events wait in the journal."""
    settings, _ = load_settings(args.config, read_secrets=False)
    tables = settings.effective_sinks()
    if args.sink not in tables:
        raise WahookdError(
            f"no sink {args.sink!r} in the configuration (configured: {', '.join(sorted(tables))})"
        )
    journal = open_journal(settings.state, write=True)
    try:
        changed = journal.set_pause(args.sink, paused)
    except JournalError as exc:
        raise WahookdError(f"cannot write the journal: {exc}") from None
    finally:
        journal.close()
    word = "paused" if paused else "resumed"
    print(f"{args.sink} {word}" if changed else f"{args.sink} was already {word}")
    return 0


def run_reload(args: argparse.Namespace) -> int:
    """`wahookd reload`: SIGHUP to the daemon holding the state directory, then wait for
    its verdict; exit 1 when the new configuration was refused (nothing changed).

    A file this command cannot load, the daemon would refuse too: it is not signalled."""
    try:
        settings, _ = load_settings(args.config, read_secrets=False)
    except ConfigError as exc:
        raise ConfigError(
            [f"reload refused, nothing changed: {problem}" for problem in exc.problems]
        ) from None
    state_dir = settings.state.dir
    pid = holder_pid(state_dir)
    if pid is None:
        raise WahookdError(f"no daemon is running on {state_dir}")

    def last_generation() -> tuple[int, dict[str, Any]]:
        try:
            result = json.loads((state_dir / RELOAD_RESULT).read_text())
        except (OSError, ValueError):
            return 0, {}
        return (int(result.get("generation", 0)), result) if result.get("pid") == pid else (0, {})

    before, _ = last_generation()
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        generation, result = last_generation()
        if generation > before:
            if result.get("outcome") == "ok":
                kept = result.get("restart_required") or []
                print("reloaded" + (f"; needs a restart: {', '.join(kept)}" if kept else ""))
                return 0
            raise ConfigError(
                [f"reload refused, nothing changed: {problem}" for problem in result["problems"]]
            )
        time.sleep(0.05)
    raise WahookdError(f"pid {pid} did not finish the reload within {args.timeout:g} s")


def run_status(args: argparse.Namespace) -> int:
    """`wahookd status [--json]`."""
    settings, _ = load_settings(args.config, read_secrets=False)
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
