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
    create_engine,
    event,
    func,
    inspect,
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


class SqlSink:
    """Writes each event in its own transaction; safe for concurrent `deliver` calls."""

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

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._run(self._ensure_schema)
        except DeliveryError as exc:
            # The database may be down while wahookd starts; deliveries retry until it is up.
            self.log.warning("sql_schema_deferred", error=str(exc))

    async def deliver(self, event: dict[str, Any]) -> None:
        await self._run(self._write, event)

    async def close(self) -> None:
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

    def _write(self, event: dict[str, Any]) -> None:
        if not self._schema_ready:
            self._ensure_schema()
        now = datetime.now(UTC)
        with self.engine().begin() as conn:
            conn.execute(self._event_upsert(event, now))
            if event.get("kind") == "status":
                statement = self._status_upsert(event, now)
                if statement is not None:
                    conn.execute(statement)

    def _event_upsert(self, event: dict[str, Any], now: datetime) -> Any:
        table = self.tables["events"]
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
        row = {name: self.column_text(value) for name, value in row.items()}
        statement = self.dialect_insert(table).values(row)
        return statement.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={name: statement.excluded[name] for name in row if name != "id"},
        )

    def _status_upsert(self, event: dict[str, Any], now: datetime) -> Any:
        """Insert the status, or move the row forward; never backwards (see the docstring)."""
        status = event.get("status")
        rank = status_rank(status)
        if rank is None or not event.get("message_id"):
            return None
        table = self.tables["message_status"]
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
            f"{status}_at": moment,
            "updated_at": now,
        }
        row = {name: self.column_text(value) for name, value in row.items()}
        statement = self.dialect_insert(table).values(row)
        new = statement.excluded
        forward = new.rank > table.c.rank

        def advanced(name: str) -> Any:
            return case((forward, new[name]), else_=table.c[name])

        changes: dict[str, Any] = {
            name: advanced(name) for name in ("status", "rank", "error", "event_id", "updated_at")
        }
        # Each step keeps the first time it was seen, even when it arrives after a later one.
        changes[f"{status}_at"] = func.coalesce(table.c[f"{status}_at"], new[f"{status}_at"])
        for name in ("chat_id", "to"):
            changes[name] = func.coalesce(table.c[name], new[name])
        return statement.on_conflict_do_update(
            index_elements=[table.c.source, table.c.message_id], set_=changes
        )
