"""What the journal's modules hand each other and the CLI: plain records, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ReadyEvent:
    """An event ready for the sinks, in delivery order."""

    dseq: int
    seq: int
    body: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    dseq: int | None  # None while its media is being fetched
    received_at: float
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """What the journal knows about one event at one sink."""

    cursor: int | None  # the sink's position; None when it never ran
    delivered_at: float | None
    retry: tuple[int, float, str] | None  # attempts, next try (epoch), last error
    dead: tuple[int, str, float] | None  # attempts, error, when
    paused: bool


CONTACT_FIELDS = ("from", "to", "chat_id", "from_lid", "from_user_id")


@dataclass(frozen=True, slots=True)
class JournalFigures:
    """`wahookd status`'s view of the journal, read in one go."""

    location: str  # the file, or the database (without its password)
    bytes: int  # on disk (SQLite: the file and its WAL; PostgreSQL: the tables)
    events: int
    media_pending: int
    media_oldest: float | None  # received_at (epoch) of the oldest event waiting for media
    dedupe_entries: int
    cursors: dict[str, int]
    dead_letters: dict[str, int]
    paused: set[str]
    holders: dict[str, str]  # sink -> the node holding its lease (several nodes only)
