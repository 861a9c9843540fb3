"""The `sql` sink's implementation, imported only when a sql sink is configured
(SQLAlchemy and psycopg cost ~20 MB of memory a daemon without one should not pay).

See `wahookd.sinks.sql` for the tables and the migration plan.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, SQLAlchemyError

from wahookd.errors import DeliveryError, PermanentDeliveryError, WahookdError
from wahookd.events import STATUS_RANK, dump_json, parse_iso
from wahookd.hookspecs import SinkContext
from wahookd.sinks.sql import SqlOptions

SCHEMA_COMPONENT = "sql_sink"
SCHEMA_VERSION = 2

# `failed` is terminal: it outranks every other status and nothing outranks it.
FAILED_RANK = 100
STEPS = (*STATUS_RANK, "failed")


def database_url(options: SqlOptions, state_dir: Path) -> str:
    """The URL to connect to: the default, relative SQLite paths and psycopg filled in."""
    if options.url is None:
        return f"sqlite:///{state_dir / 'events.db'}"
    try:
        url = make_url(options.url.get_secret_value())
    except ArgumentError:
        raise WahookdError("url: not a database URL (sqlite:///events.db, postgresql://host/db)") from None
    backend = url.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        if url.database and url.database != ":memory:" and not Path(url.database).is_absolute():
            url = url.set(database=str(state_dir / url.database))
        return url.render_as_string(hide_password=False)
    raise WahookdError(f"url: unsupported database {backend!r} (use sqlite or postgresql)")


def define_tables(prefix: str) -> tuple[MetaData, dict[str, Table]]:
    metadata = MetaData()
    when = DateTime(timezone=True)
    # Every string is unbounded text: a sink stores whatever the intake accepted, and a
    # provider's ids, names and event names have no length limit (version 1's VARCHAR(255)
    # made PostgreSQL refuse a longer one).
    events = Table(
        f"{prefix}events",
        metadata,
        Column("id", Text, primary_key=True),
        Column("source", Text, nullable=False),
        Column("provider", Text, nullable=False),
        Column("kind", Text, nullable=False),
        Column("event", Text),
        Column("message_id", Text),
        Column("chat_id", Text),
        Column("from", Text),
        Column("to", Text),
        Column("from_me", Boolean),
        Column("sender_name", Text),
        Column("type", Text),
        Column("text", Text),
        Column("media", Text),
        Column("status", Text),
        Column("error", Text),
        Column("timestamp", when),
        Column("received_at", when),
        Column("raw", Text),
        Column("stored_at", when, nullable=False),
        Column("fields", Text),  # version 2; NULL in rows an older wahookd wrote
        Index(f"{prefix}events_message", "source", "message_id"),
        Index(f"{prefix}events_received", "received_at"),
    )
    status = Table(
        f"{prefix}message_status",
        metadata,
        Column("source", Text, primary_key=True),
        Column("message_id", Text, primary_key=True),
        Column("status", Text, nullable=False),
        Column("rank", Integer, nullable=False),
        Column("chat_id", Text),
        Column("to", Text),
        Column("error", Text),
        Column("event_id", Text, nullable=False),
        *(Column(f"{step}_at", when) for step in STEPS),
        Column("updated_at", when, nullable=False),
    )
    schema = Table(
        f"{prefix}wahookd_schema",
        metadata,
        Column("component", String(64), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("updated_at", when, nullable=False),
    )
    return metadata, {"events": events, "message_status": status, "schema": schema}


# Version 1's VARCHAR columns, per table.
V1_BOUNDED = {
    "events": (
        "id",
        "source",
        "provider",
        "kind",
        "event",
        "message_id",
        "chat_id",
        "from",
        "to",
        "type",
        "status",
    ),
    "message_status": ("source", "message_id", "status", "chat_id", "to", "event_id"),
}


def unbounded_text_and_fields(conn: Connection, tables: dict[str, Table]) -> None:
    """Version 1 -> 2: VARCHAR(n) columns become text, and ``events`` gains ``fields``.

    On PostgreSQL VARCHAR to text is binary-coercible: no table rewrite, no index rebuild.
    SQLite never enforces a VARCHAR length, so its columns stay as they are. Safe to run
    again after an interruption (SQLite may have committed the ADD COLUMN on its own)."""
    quote = conn.dialect.identifier_preparer.quote
    if conn.dialect.name == "postgresql":
        for key, names in V1_BOUNDED.items():
            changes = ", ".join(f"ALTER COLUMN {quote(name)} TYPE text" for name in names)
            conn.execute(text(f"ALTER TABLE {quote(tables[key].name)} {changes}"))
    events = tables["events"].name
    if "fields" not in {column["name"] for column in inspect(conn).get_columns(events)}:
        conn.execute(text(f"ALTER TABLE {quote(events)} ADD COLUMN fields TEXT"))


# MIGRATIONS[n] moves a database from version n to n + 1 (see the module docstring).
MIGRATIONS: dict[int, Callable[[Connection, dict[str, Table]], None]] = {
    1: unbounded_text_and_fields,
}


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    moment = parse_iso(value)
    return moment.astimezone(UTC) if moment else None


def as_json(value: Any) -> str | None:
    """JSON text with every number as it was sent (`dump_json`). JSON writes NUL as the
    escape ``\\u0000``, so the text holds none, and it reads back to the same value."""
    return None if value is None else dump_json(value).decode()


def keep(value: Any) -> Any:
    return value


def without_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL: in a plain column it becomes U+FFFD (the exact value
    is in ``fields`` or ``raw``, JSON text, where NUL is an escape)."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def status_rank(status: Any) -> int | None:
    if status == "failed":
        return FAILED_RANK
    return STATUS_RANK.get(status) if isinstance(status, str) else None


FORGET_EVENT = "privacy.forget"
# The event fields `wahookd forget` matches a contact on (SPEC §7).
CONTACT_COLUMNS = ("from", "to", "chat_id")
CONTACT_FIELDS = ("from_lid", "from_user_id")  # no column of their own: read from `fields`


def forget_addresses(event: dict[str, Any]) -> list[str]:
    """The addresses a `privacy.forget` event names: ``raw.addresses`` (the contact's phone
    digits and JIDs, or its LID), else its ``from``."""
    raw = event.get("raw")
    addresses = raw.get("addresses") if isinstance(raw, dict) else None
    if isinstance(addresses, list) and addresses and all(isinstance(a, str) and a for a in addresses):
        return list(addresses)
    return [event["from"]] if isinstance(event.get("from"), str) and event["from"] else []


def is_forget(event: dict[str, Any]) -> bool:
    return event.get("kind") == "system" and event.get("event") == FORGET_EVENT


class SqlSink:
    """Buffers delivered events and writes each batch in one transaction at `flush()`.

    wahookd calls `flush()` before it records the sink's position, so a batch is durable in
    the database before the journal moves past it; a flush that fails rolls the whole
    transaction back, keeps the buffer, and the batch is tried again (an event delivered
    twice replaces its buffered copy, so a retried batch is still written once). Per batch:
    one upsert of the events and one of the statuses (merged per message first, with the
    same outcome as one by one: see `merge_statuses`), each executed over all its rows at
    once. Measured (bench/sinks.py): a statement per event ran at 460-700 events/s; a
    500-row VALUES statement compiled per batch at 2,700-3,700; one cached statement
    executed over the rows (psycopg pipelines it) at 12,000-14,000. A ``privacy.forget``
    event deletes the contact's rows, after the events before it and before those after it.

    When the database refuses a row of a batch (a constraint a team added), the flush fails
    and the next deliveries are written one by one, so the refused event alone raises
    `PermanentDeliveryError` and goes to the dead letters, as it did before batching.
    """

    def __init__(self, options: SqlOptions, context: SinkContext) -> None:
        self.url = database_url(options, context.state_dir)
        self.durable = context.durable
        self.log = context.log
        self.is_sqlite = self.url.startswith("sqlite")
        self.metadata, self.tables = define_tables(options.table_prefix)
        self.dialect_insert = sqlite.insert if self.is_sqlite else postgresql.insert
        self.column_text = keep if self.is_sqlite else without_nul  # SQLite text holds NUL
        # SQLite allows one writer at a time: more threads would only wait on its lock.
        workers = 1 if self.is_sqlite else options.pool_size
        self.pool_size = options.pool_size
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sql-sink")
        self._engine: Engine | None = None
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._buffer: list[dict[str, Any]] = []  # delivered, not yet written
        self._buffered: dict[str, int] = {}  # event id -> its place in the buffer
        self._one_by_one = False  # a row was refused: write each event on its own

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._run(self._ensure_schema)
        except DeliveryError as exc:
            # The database may be down while wahookd starts; deliveries retry until it is up.
            self.log.warning("sql_schema_deferred", error=str(exc))

    async def deliver(self, event: dict[str, Any]) -> None:
        if self._one_by_one:
            await self._run(self._write, [event])
            return
        place = self._buffered.get(event["id"])
        if place is not None:  # a batch tried again: the newer copy, in the same place
            self._buffer[place] = event
            return
        self._buffered[event["id"]] = len(self._buffer)
        self._buffer.append(event)

    async def flush(self) -> None:
        self._one_by_one = False
        if not self._buffer:
            return
        batch = list(self._buffer)
        try:
            await self._run(self._write, batch)
        except PermanentDeliveryError as exc:
            # Which event the database refuses, only one-by-one writes can tell: the batch
            # comes again (wahookd delivers what it has not recorded again after a failed
            # flush), each of its events is written alone, and `deliver` refuses the bad one,
            # which goes to the dead letters. A flush is never dead-lettered itself.
            self._clear()
            self._one_by_one = True
            raise DeliveryError(f"{exc}; writing this batch's events one by one") from None
        self._clear()

    def _clear(self) -> None:
        self._buffer.clear()
        self._buffered.clear()

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            if self._engine is not None:
                await self._run(self._engine.dispose)
            self._executor.shutdown(wait=True)

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function, *args)
        except (DataError, IntegrityError) as exc:
            # The database refuses this row (e.g. a CHECK constraint a team added): retrying
            # the same row cannot help. Nothing of an event itself is refused any more: text
            # is unbounded, and NUL never reaches a PostgreSQL column (see `without_nul`).
            raise PermanentDeliveryError(f"sql: {exc.orig or exc}") from None
        except SQLAlchemyError as exc:  # connection lost, locked, server restarting
            raise DeliveryError(f"sql: {getattr(exc, 'orig', None) or exc}") from None

    # -- worker-thread side -----------------------------------------------------

    def engine(self) -> Engine:
        if self._engine is None:
            if self.is_sqlite:
                engine = create_engine(self.url)
                synchronous = "FULL" if self.durable else "NORMAL"

                @event.listens_for(engine, "connect")
                def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                    # WAL lets readers (the team's queries) run while wahookd writes.
                    cursor = dbapi_connection.cursor()
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute(f"PRAGMA synchronous={synchronous}")
                    cursor.execute("PRAGMA busy_timeout=5000")
                    cursor.close()
            else:
                engine = create_engine(
                    self.url, pool_size=self.pool_size, pool_pre_ping=True, pool_recycle=1800
                )
            self._engine = engine
        return self._engine

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            engine = self.engine()
            if self.is_sqlite and engine.url.database:
                Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
            self.metadata.create_all(engine)
            schema = self.tables["schema"]
            with engine.begin() as conn:
                version = conn.execute(
                    select(schema.c.version).where(schema.c.component == SCHEMA_COMPONENT)
                ).scalar()
                if version is None:
                    conn.execute(
                        schema.insert().values(
                            component=SCHEMA_COMPONENT,
                            version=SCHEMA_VERSION,
                            updated_at=datetime.now(UTC),
                        )
                    )
                    version = SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise WahookdError(
                    f"sql sink: the database schema is version {version}, newer than this "
                    f"wahookd's {SCHEMA_VERSION}; upgrade wahookd"
                )
            for step in range(version, SCHEMA_VERSION):
                with engine.begin() as conn:
                    MIGRATIONS[step](conn, self.tables)
                    conn.execute(
                        schema.update()
                        .where(schema.c.component == SCHEMA_COMPONENT)
                        .values(version=step + 1, updated_at=datetime.now(UTC))
                    )
                self.log.info("sql_schema_migrated", version=step + 1)
            self._schema_ready = True

    def _write(self, events: list[dict[str, Any]]) -> None:
        """Write `events` in one transaction, in order around each ``privacy.forget``."""
        if not self._schema_ready:
            self._ensure_schema()
        now = datetime.now(UTC)
        with self.engine().begin() as conn:
            part: list[dict[str, Any]] = []
            for event in events:
                if not is_forget(event):
                    part.append(event)
                    continue
                self._write_part(conn, part, now)
                part = []
                self._forget(conn, forget_addresses(event))
                self._write_part(conn, [event], now)
            self._write_part(conn, part, now)

    def _write_part(self, conn: Connection, events: list[dict[str, Any]], now: datetime) -> None:
        if not events:
            return
        latest = {str(event["id"]): event for event in events}  # a repeated id: its last copy
        rows = [self._event_row(event, now) for event in latest.values()]
        conn.execute(self._event_upsert_of(rows[:1]), rows)
        statuses = merge_statuses(
            [row for row in (self._status_row(event, now) for event in events) if row is not None]
        )
        if statuses:
            conn.execute(self._status_upsert_of(statuses[:1]), statuses)

    def _forget(self, conn: Connection, addresses: list[str]) -> None:
        """Delete the contact's events and message statuses (`wahookd forget`)."""
        if not addresses:
            return
        events = self.tables["events"]
        fields = events.c.fields
        if self.is_sqlite:
            extracted = [func.json_extract(fields, f"$.{name}") for name in CONTACT_FIELDS]
        else:
            extracted = [cast(fields, JSON)[name].as_string() for name in CONTACT_FIELDS]
        # `fields` is parsed only where the text holds an address at all.
        mentions = or_(*(fields.contains(address, autoescape=True) for address in addresses))
        conn.execute(
            delete(events).where(
                or_(
                    *(events.c[name].in_(addresses) for name in CONTACT_COLUMNS),
                    mentions & or_(*(value.in_(addresses) for value in extracted)),
                )
            )
        )
        status = self.tables["message_status"]
        conn.execute(delete(status).where(or_(status.c.chat_id.in_(addresses), status.c.to.in_(addresses))))

    def _event_row(self, event: dict[str, Any], now: datetime) -> dict[str, Any]:
        row = {
            "id": str(event["id"]),
            "source": event.get("source") or "",
            "provider": event.get("provider") or "",
            "kind": event.get("kind") or "",
            **{
                name: event.get(name)
                for name in (
                    "event",
                    "message_id",
                    "chat_id",
                    "from",
                    "to",
                    "from_me",
                    "sender_name",
                    "type",
                    "text",
                    "status",
                )
            },
            "media": as_json(event.get("media")),
            "error": as_json(event.get("error")),
            "timestamp": parse_time(event.get("timestamp")),
            "received_at": parse_time(event.get("received_at")),
            "raw": as_json(event.get("raw")),
            "stored_at": now,
            # Every field as sent, those without a column of their own (SPEC §4) included.
            "fields": as_json({name: value for name, value in event.items() if name != "raw"}),
        }
        return {name: self.column_text(value) for name, value in row.items()}

    def _event_upsert_of(self, rows: list[dict[str, Any]]) -> Any:
        table = self.tables["events"]
        statement = self.dialect_insert(table)
        return statement.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={name: statement.excluded[name] for name in rows[0] if name != "id"},
        )

    def _status_row(self, event: dict[str, Any], now: datetime) -> dict[str, Any] | None:
        """A status event as a ``message_status`` row (every step column, one filled)."""
        if event.get("kind") != "status":
            return None
        status = event.get("status")
        rank = status_rank(status)
        if rank is None or not event.get("message_id"):
            return None
        moment = parse_time(event.get("timestamp")) or parse_time(event.get("received_at")) or now
        row = {
            "source": event.get("source") or "",
            "message_id": str(event["message_id"]),
            "status": status,
            "rank": rank,
            "chat_id": event.get("chat_id"),
            "to": event.get("to"),
            "error": as_json(event.get("error")),
            "event_id": str(event["id"]),
            **{f"{step}_at": moment if step == status else None for step in STEPS},
            "updated_at": now,
        }
        return {name: self.column_text(value) for name, value in row.items()}

    def _status_upsert_of(self, rows: list[dict[str, Any]]) -> Any:
        """Insert the statuses, or move each row forward; never backwards (module doc)."""
        table = self.tables["message_status"]
        statement = self.dialect_insert(table)
        new = statement.excluded
        forward = new.rank > table.c.rank

        def advanced(name: str) -> Any:
            return case((forward, new[name]), else_=table.c[name])

        changes: dict[str, Any] = {
            name: advanced(name) for name in ("status", "rank", "error", "event_id", "updated_at")
        }
        # Each step keeps the first time it was seen, even when it arrives after a later one.
        for step in STEPS:
            changes[f"{step}_at"] = func.coalesce(table.c[f"{step}_at"], new[f"{step}_at"])
        for name in ("chat_id", "to"):
            changes[name] = func.coalesce(table.c[name], new[name])
        return statement.on_conflict_do_update(
            index_elements=[table.c.source, table.c.message_id], set_=changes
        )


def merge_statuses(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (source, message_id), as the upsert applied to each in turn would leave
    it: a multi-row upsert may not touch one row twice (PostgreSQL refuses it).

    The row that first reached the highest rank gives status, rank, error, event_id and
    updated_at (a later one of the same rank does not move it: ``new.rank > rank``); each
    ``<step>_at``, ``chat_id`` and ``to`` is the first one given (``coalesce``)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["source"], row["message_id"])
        into = merged.get(key)
        if into is None:
            merged[key] = dict(row)
            continue
        if row["rank"] > into["rank"]:
            for name in ("status", "rank", "error", "event_id", "updated_at"):
                into[name] = row[name]
        for name in (*(f"{step}_at" for step in STEPS), "chat_id", "to"):
            if into[name] is None:
                into[name] = row[name]
    return list(merged.values())
