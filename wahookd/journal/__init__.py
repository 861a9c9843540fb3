"""The durable store: events, the dedupe LRU, sink positions and dead letters.

One package owns every SQL string run against the journal:

- `schema`: the tables, the connection pragmas, shared statement helpers;
- `writer`: the writer thread (group commit, the WAL kept bounded);
- `dedupe`: the dedupe index's statements;
- `store`: `Journal`, what the daemon reads and writes;
- `reader`: `JournalReader`, what the CLI (`status`, `replay`, `trace`) reads;
- `maintenance`: `JournalMaintenance`, what the CLI changes (`forget`, `fsck`, `pause`);
- `pgschema`, `postgres`, `pgreader`: the same for `state.backend = "postgres"`;
- `backends`: which of the two `state.backend` picks.
"""

from wahookd.journal.backends import make_journal, open_store
from wahookd.journal.dedupe import dedupe_key
from wahookd.journal.maintenance import (
    MAINTENANCE_CHUNK,
    ContactRows,
    Erasure,
    JournalMaintenance,
    WaitingRow,
    contact_clause,
)
from wahookd.journal.reader import JournalReader, open_connection, paused_sinks, set_pause
from wahookd.journal.records import CONTACT_FIELDS, JournalFigures, ReadyEvent, SinkRecord, StoredEvent
from wahookd.journal.schema import (
    BUSY_TIMEOUT_MS,
    DSEQ_HIGH,
    ERASED_SCHEMA,
    FORGET_EVENT,
    JOURNAL_FILE,
    MAX_ROWS_PER_STATEMENT,
    PAGE_BYTES,
    SCHEMA,
    SCHEMA_VERSION,
    connect,
    encode,
    format_time_from,
    high_water,
    max_cursor,
    raise_high_water,
)
from wahookd.journal.store import Journal
from wahookd.journal.writer import (
    CHECKPOINT_SECONDS,
    MAX_JOBS_PER_COMMIT,
    READ_BYTES,
    RECENT_BYTES,
    RECENT_EVENT_BYTES,
    WAL_CHECKPOINT_BUSY_MS,
    WAL_IDLE_SECONDS,
    WAL_RETRY_SECONDS,
    WAL_SIZE_LIMIT,
    JournalWriter,
)

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHECKPOINT_SECONDS",
    "CONTACT_FIELDS",
    "DSEQ_HIGH",
    "ERASED_SCHEMA",
    "FORGET_EVENT",
    "JOURNAL_FILE",
    "MAINTENANCE_CHUNK",
    "MAX_JOBS_PER_COMMIT",
    "MAX_ROWS_PER_STATEMENT",
    "PAGE_BYTES",
    "READ_BYTES",
    "RECENT_BYTES",
    "RECENT_EVENT_BYTES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "WAL_CHECKPOINT_BUSY_MS",
    "WAL_IDLE_SECONDS",
    "WAL_RETRY_SECONDS",
    "WAL_SIZE_LIMIT",
    "ContactRows",
    "Erasure",
    "Journal",
    "JournalFigures",
    "JournalMaintenance",
    "JournalReader",
    "JournalWriter",
    "ReadyEvent",
    "SinkRecord",
    "StoredEvent",
    "WaitingRow",
    "connect",
    "contact_clause",
    "dedupe_key",
    "encode",
    "format_time_from",
    "high_water",
    "make_journal",
    "max_cursor",
    "open_connection",
    "open_store",
    "paused_sinks",
    "raise_high_water",
    "set_pause",
]
