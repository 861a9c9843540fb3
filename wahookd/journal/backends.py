"""The journal's two backends behind one choice (`state.backend`): the daemon's `Journal`
or `PgJournal`, and the CLI's `JournalMaintenance` or `PgMaintenance`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from wahookd.journal.maintenance import JournalMaintenance, open_sqlite_store


def make_journal(
    state: Any, *, dedupe_capacity: int, observe_commit: Callable[[float], None] | None = None
) -> Any:
    """The daemon's journal for `state` (a `StateSettings`), not opened yet."""
    if state.backend == "postgres":
        from wahookd.journal.postgres import PgJournal

        return PgJournal(
            state.url.get_secret_value(),
            durable=state.fsync,
            dedupe_capacity=dedupe_capacity,
            observe_commit=observe_commit,
            lease_seconds=state.lease_seconds,
        )
    from wahookd.journal.store import Journal

    return Journal(
        state.dir, durable=state.fsync, dedupe_capacity=dedupe_capacity, observe_commit=observe_commit
    )


def open_store(state: Any, *, write: bool = False) -> JournalMaintenance:
    """The journal for a CLI command: `state` is a `StateSettings` (either backend) or a
    state directory (SQLite). Read-only unless `write`; the caller closes it."""
    if isinstance(state, Path):
        return open_sqlite_store(state, write=write)
    if state.backend == "postgres":
        from wahookd.journal.pgreader import open_pg_store

        return open_pg_store(state.url.get_secret_value(), write=write)  # type: ignore[return-value]
    return open_sqlite_store(state.dir, write=write)
