"""The sql sink on a real SQLite file and on the real local PostgreSQL (db `test`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)

from wahookd.errors import ConfigError, DeliveryError, PermanentDeliveryError, WahookdError
from wahookd.events import load_json
from wahookd.sinks.sql import wahookd_register_sinks as sql_sinks
from wahookd.sinks.sqlstore import SCHEMA_VERSION, SqlSink, database_url, define_tables
from wahookd.testing import build_sink, make_event, make_status

[SPEC] = sql_sinks()
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Backend:
    """Where a test's tables live, and a plain SQLAlchemy engine to look at them."""

    def __init__(self, name: str, url: str, prefix: str, state_dir: Path) -> None:
        self.name = name
        self.options = {"url": url, "table_prefix": prefix}
        self.prefix = prefix
        self.state_dir = state_dir
        real_url = database_url(SPEC.options.model_validate(self.options), state_dir)
        self.engine = create_engine(real_url)

    def sink(self) -> SqlSink:
        sink = build_sink(SPEC, self.options, state_dir=self.state_dir, name="db")
        assert isinstance(sink, SqlSink)
        return sink

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            query = sql.replace("{p}", self.prefix)
            return [dict(row._mapping) for row in conn.execute(text(query), params)]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'events.db'}", prefix, tmp_path)
        return
    store = Backend("postgresql", POSTGRES_URL, prefix, tmp_path)
    try:
        yield store
    finally:
        metadata, _ = define_tables(prefix)
        metadata.drop_all(store.engine)
        store.engine.dispose()


async def deliver_all(sink: SqlSink, events: list[dict[str, Any]]) -> None:
    await sink.start()
    try:
        for event in events:
            await sink.deliver(event)
    finally:
        await sink.close()


def test_start_creates_the_tables_and_records_the_schema_version(backend: Backend) -> None:
    asyncio.run(deliver_all(backend.sink(), []))
    names = set(inspect(backend.engine).get_table_names())
    assert {
        f"{backend.prefix}events",
        f"{backend.prefix}message_status",
        f"{backend.prefix}wahookd_schema",
    } <= names
    [row] = backend.rows("SELECT component, version FROM {p}wahookd_schema")
    assert row == {"component": "sql_sink", "version": SCHEMA_VERSION}


def test_the_same_event_twice_leaves_one_row(backend: Backend) -> None:
    event = make_event(text="hello 👋", from_="15551234567")
    asyncio.run(deliver_all(backend.sink(), [event, event]))
    asyncio.run(deliver_all(backend.sink(), [event]))  # again after a "restart"
    rows = backend.rows('SELECT id, "from", "to", text, raw, kind, type FROM {p}events')
    assert len(rows) == 1
    [row] = rows
    assert row["id"] == event["id"]
    assert row["from"] == "15551234567"
    assert row["to"] == event["to"]
    assert row["text"] == "hello 👋"
    assert row["kind"] == "message"
    assert row["type"] == "text"
    assert json.loads(row["raw"]) == event["raw"]


def test_redelivery_updates_the_row_with_the_newer_body(backend: Backend) -> None:
    event = make_event(type="image", text=None)
    stored = {**event, "media": {"mime_type": "image/jpeg", "stored": {"key": "a/b.jpg"}}}
    asyncio.run(deliver_all(backend.sink(), [event, stored]))
    [row] = backend.rows("SELECT media FROM {p}events")
    assert json.loads(row["media"])["stored"]["key"] == "a/b.jpg"


def test_timestamps_are_stored_as_utc_times(backend: Backend) -> None:
    event = make_event(timestamp="2026-11-26T10:15:30Z", received_at="2026-11-26T10:15:31.250Z")
    asyncio.run(deliver_all(backend.sink(), [event]))
    [row] = backend.rows("SELECT timestamp, received_at FROM {p}events")
    stamp = row["timestamp"]
    if isinstance(stamp, str):  # SQLite keeps DATETIME as text
        stamp = datetime.fromisoformat(stamp)
    assert stamp.replace(tzinfo=UTC) == datetime(2026, 11, 26, 10, 15, 30, tzinfo=UTC)


def status_row(backend: Backend, message_id: str) -> dict[str, Any]:
    [row] = backend.rows("SELECT * FROM {p}message_status WHERE message_id = :m", m=message_id)
    return row


def test_statuses_out_of_order_end_in_the_latest_state(backend: Backend) -> None:
    message_id = "wamid.OUT1"
    events = [
        make_status(message_id, "read", timestamp="2026-11-26T10:00:03Z"),
        make_status(message_id, "sent", timestamp="2026-11-26T10:00:01Z"),
        make_status(message_id, "delivered", timestamp="2026-11-26T10:00:02Z"),
    ]
    asyncio.run(deliver_all(backend.sink(), events))
    row = status_row(backend, message_id)
    assert row["status"] == "read"
    assert row["event_id"] == events[0]["id"]
    for step in ("sent", "delivered", "read"):  # every step keeps its own time
        assert row[f"{step}_at"] is not None
    assert row["pending_at"] is None
    assert row["failed_at"] is None
    assert len(backend.rows("SELECT id FROM {p}events")) == 3


def test_a_late_delivered_never_moves_read_back_and_played_moves_it_forward(
    backend: Backend,
) -> None:
    message_id = "wamid.OUT2"
    asyncio.run(
        deliver_all(
            backend.sink(),
            [
                make_status(message_id, "sent"),
                make_status(message_id, "read"),
                make_status(message_id, "delivered"),
            ],
        )
    )
    assert status_row(backend, message_id)["status"] == "read"
    asyncio.run(deliver_all(backend.sink(), [make_status(message_id, "played")]))
    assert status_row(backend, message_id)["status"] == "played"


def test_failed_is_terminal(backend: Backend) -> None:
    message_id = "wamid.OUT3"
    asyncio.run(
        deliver_all(
            backend.sink(),
            [
                make_status(message_id, "sent"),
                make_status(message_id, "failed"),
                make_status(message_id, "delivered"),
                make_status(message_id, "read"),
            ],
        )
    )
    row = status_row(backend, message_id)
    assert row["status"] == "failed"
    assert json.loads(row["error"])["code"] == 131026
    assert row["read_at"] is not None  # the late step is still recorded


def test_statuses_of_different_sources_are_kept_apart(backend: Backend) -> None:
    asyncio.run(
        deliver_all(
            backend.sink(),
            [
                make_status("wamid.SAME", "read", source="shop"),
                make_status("wamid.SAME", "sent", source="support"),
            ],
        )
    )
    rows = backend.rows("SELECT source, status FROM {p}message_status ORDER BY source")
    assert rows == [{"source": "shop", "status": "read"}, {"source": "support", "status": "sent"}]


def test_concurrent_out_of_order_statuses_stay_monotonic(backend: Backend) -> None:
    order = ["read", "sent", "delivered", "pending", "delivered", "read", "sent"]
    message_ids = [f"wamid.C{n}" for n in range(8)]

    async def scenario() -> None:
        sink = backend.sink()
        await sink.start()
        await asyncio.gather(
            *(
                sink.deliver(make_status(mid, status, id=f"{mid}:{n}"))
                for mid in message_ids
                for n, status in enumerate(order)
            )
        )
        await sink.close()

    asyncio.run(scenario())
    rows = backend.rows("SELECT status FROM {p}message_status")
    assert [row["status"] for row in rows] == ["read"] * len(message_ids)


def test_a_newer_schema_version_is_refused(backend: Backend) -> None:
    asyncio.run(deliver_all(backend.sink(), []))
    with backend.engine.begin() as conn:
        conn.execute(text(f"UPDATE {backend.prefix}wahookd_schema SET version = 99"))
    with pytest.raises(WahookdError, match="version 99"):
        asyncio.run(deliver_all(backend.sink(), []))


def test_a_row_the_database_refuses_is_a_permanent_error(tmp_path: Path) -> None:
    # A CHECK constraint a team added: retrying the same row could never succeed.
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    store = Backend("postgresql", POSTGRES_URL, prefix, tmp_path)
    try:
        asyncio.run(deliver_all(store.sink(), []))
        with store.engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {prefix}events ADD CHECK (length(text) < 10)"))
        refused = make_event(text="longer than ten")

        async def as_the_worker_does() -> None:
            sink = store.sink()
            await sink.start()
            try:
                await sink.deliver(refused)
                # The batch's flush fails (retryable: a flush is never dead-lettered) ...
                with pytest.raises(DeliveryError) as flushed:
                    await sink.flush()
                assert not isinstance(flushed.value, PermanentDeliveryError)
                # ... the worker delivers it again, and the event alone is refused for good.
                with pytest.raises(PermanentDeliveryError):
                    await sink.deliver(refused)
            finally:
                await sink.close()

        asyncio.run(as_the_worker_does())
    finally:
        define_tables(prefix)[0].drop_all(store.engine)
        store.engine.dispose()


# -- issue 10, defect 7: anything the intake accepted is stored -------------------------

LONG = 10_000


def odd_event(**overrides: Any) -> dict[str, Any]:
    """An event whose strings PostgreSQL's VARCHAR(255) and text refused: NUL, 10,000
    characters, emoji (outside the BMP: four UTF-8 bytes, two UTF-16 units)."""
    long_id = "3EB0" + "9" * LONG
    fields: dict[str, Any] = {
        "id": f"test:{long_id}",
        "message_id": long_id,
        "event": "e" * LONG,
        "chat_id": "1" * LONG + "@g.us",
        "from_": "2" * LONG,
        "to": "3" * LONG,
        "sender_name": "Zoë 👩🏽‍💻" * (LONG // 8) + "\x00",
        "text": "nul\x00byte " + "👋" * LONG + " \x00\x00end",
        "raw": {"text": "nul\x00in raw 👋", "name": "n" * LONG, "nested": {"\x00key": ["\x00"]}},
        **overrides,
    }
    return make_event(**fields)


def stored_value(backend: Backend, value: Any) -> Any:
    """What a plain column holds: PostgreSQL text cannot hold NUL, so there it is U+FFFD."""
    if backend.name == "postgresql" and isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    return value


def test_nul_long_and_emoji_text_is_stored_and_reads_back_equal(backend: Backend) -> None:
    event = odd_event()
    status = make_status("M" * LONG + "\x00", "read", chat_id="c\x00" * LONG, to="t" * LONG)
    asyncio.run(deliver_all(backend.sink(), [event, event, status]))
    [row] = backend.rows("SELECT * FROM {p}events WHERE message_id = :m", m=event["message_id"])
    for name in ("id", "message_id", "event", "chat_id", "from", "to", "sender_name", "text"):
        assert row[name] == stored_value(backend, event[name]), name
    assert load_json(row["raw"]) == event["raw"]  # exactly, NUL included
    assert {**load_json(row["fields"]), "raw": load_json(row["raw"])} == event
    [row] = backend.rows("SELECT * FROM {p}message_status")
    assert row["message_id"] == stored_value(backend, status["message_id"])
    assert row["chat_id"] == stored_value(backend, status["chat_id"])
    assert row["status"] == "read"
    [row] = backend.rows("SELECT fields FROM {p}events WHERE id = :i", i=stored_value(backend, status["id"]))
    assert load_json(row["fields"])["message_id"] == status["message_id"]


def test_ids_names_and_event_names_past_255_characters_are_stored(backend: Backend) -> None:
    event = odd_event(sender_name="n" * LONG, text="t" * LONG, raw={"id": "r" * LONG})
    asyncio.run(deliver_all(backend.sink(), [event]))
    [row] = backend.rows('SELECT id, event, chat_id, "from", "to", raw FROM {p}events')
    assert row == {name: event[name] for name in ("id", "event", "chat_id", "from", "to")} | {
        "raw": json.dumps(event["raw"], separators=(",", ":"))
    }


def test_numbers_reach_the_raw_column_as_the_provider_wrote_them(backend: Backend) -> None:
    numbers = '{"big":123456789012345678901234567890,"huge":1e400,"negative":-1e400,'
    numbers += '"precise":0.1000000000000000055511151231257827}'
    event = make_event(raw=load_json(f'{{"amounts":{numbers}}}'))
    asyncio.run(deliver_all(backend.sink(), [event]))
    [row] = backend.rows("SELECT raw, fields FROM {p}events")
    assert row["raw"] == f'{{"amounts":{numbers}}}'
    json.loads(row["fields"], parse_constant=pytest.fail)  # valid JSON, no Infinity


def define_v1_tables(prefix: str) -> tuple[MetaData, Table]:
    """The tables as wahookd's sql sink version 1 created them."""
    metadata = MetaData()
    when = DateTime(timezone=True)
    events = Table(
        f"{prefix}events",
        metadata,
        *(Column(name, String(255), primary_key=name == "id") for name in ("id", "source")),
        Column("provider", String(64), nullable=False),
        Column("kind", String(16), nullable=False),
        *(Column(name, String(255)) for name in ("event", "message_id", "chat_id", "from", "to")),
        Column("from_me", Boolean),
        Column("sender_name", Text),
        Column("type", String(32)),
        Column("text", Text),
        Column("media", Text),
        Column("status", String(16)),
        Column("error", Text),
        Column("timestamp", when),
        Column("received_at", when),
        Column("raw", Text),
        Column("stored_at", when, nullable=False),
        Index(f"{prefix}events_message", "source", "message_id"),
        Index(f"{prefix}events_received", "received_at"),
    )
    Table(
        f"{prefix}message_status",
        metadata,
        *(Column(name, String(255), primary_key=True) for name in ("source", "message_id")),
        Column("status", String(16), nullable=False),
        Column("rank", Integer, nullable=False),
        *(Column(name, String(255)) for name in ("chat_id", "to")),
        Column("error", Text),
        Column("event_id", String(255), nullable=False),
        *(
            Column(f"{step}_at", when)
            for step in ("pending", "sent", "delivered", "read", "played", "failed")
        ),
        Column("updated_at", when, nullable=False),
    )
    Table(
        f"{prefix}wahookd_schema",
        metadata,
        Column("component", String(64), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("updated_at", when, nullable=False),
    )
    return metadata, events


def test_tables_the_previous_version_made_are_migrated_and_keep_their_rows(backend: Backend) -> None:
    metadata, events = define_v1_tables(backend.prefix)
    metadata.create_all(backend.engine)
    old = make_event(text="written by version 1")
    now = datetime.now(UTC)
    with backend.engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO {backend.prefix}wahookd_schema VALUES ('sql_sink', 1, :now)"), {"now": now}
        )
        conn.execute(
            events.insert().values(
                id=old["id"],
                source="test",
                provider="wasender",
                kind="message",
                text=old["text"],
                stored_at=now,
            )
        )
    event, status = odd_event(), make_status("L" * LONG, "sent")
    asyncio.run(deliver_all(backend.sink(), [event, status]))
    asyncio.run(deliver_all(backend.sink(), [make_status("L" * LONG, "read")]))  # started again
    [row] = backend.rows("SELECT version FROM {p}wahookd_schema")
    assert row["version"] == SCHEMA_VERSION == 2
    rows = backend.rows("SELECT id, text, fields FROM {p}events ORDER BY stored_at")
    assert rows[0] == {"id": old["id"], "text": "written by version 1", "fields": None}
    assert rows[1]["text"] == stored_value(backend, event["text"])
    assert load_json(rows[1]["fields"])["chat_id"] == event["chat_id"]
    assert [row["status"] for row in backend.rows("SELECT status FROM {p}message_status")] == ["read"]
    if backend.name == "postgresql":
        columns = inspect(backend.engine).get_columns(f"{backend.prefix}events")
        assert {str(column["type"]) for column in columns if column["name"] in ("id", "chat_id")} == {"TEXT"}


def test_default_url_is_events_db_in_the_state_dir(tmp_path: Path) -> None:
    sink = build_sink(SPEC, {}, state_dir=tmp_path)
    asyncio.run(deliver_all(sink, [make_event()]))  # type: ignore[arg-type]
    assert (tmp_path / "events.db").exists()


def test_urls_are_completed(tmp_path: Path) -> None:
    options = SPEC.options.model_validate
    assert database_url(options({"url": "postgresql://u:p@h/db"}), tmp_path) == (
        "postgresql+psycopg://u:p@h/db"
    )
    assert database_url(options({"url": "postgres://h/db"}), tmp_path).startswith("postgresql+psycopg://")
    assert database_url(options({"url": "sqlite:///rel.db"}), tmp_path) == (
        f"sqlite:///{tmp_path / 'rel.db'}"
    )
    with pytest.raises(WahookdError, match="unsupported database 'mysql'"):
        database_url(options({"url": "mysql://h/db"}), tmp_path)


def test_url_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "db-url").write_text(f"sqlite:///{tmp_path / 'from-file.db'}\n")
    sink = build_sink(SPEC, {"url_file": str(tmp_path / "db-url")}, state_dir=tmp_path)
    asyncio.run(deliver_all(sink, [make_event()]))  # type: ignore[arg-type]
    assert (tmp_path / "from-file.db").exists()


def test_a_bad_table_prefix_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sinks\.test\.table_prefix"):
        build_sink(SPEC, {"table_prefix": "x; DROP TABLE"}, state_dir=tmp_path)
