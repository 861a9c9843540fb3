"""The `sql` sink writes a batch per transaction, and erases a contact on `privacy.forget`
(issue 12), on SQLite and the local PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.sinks.sql import wahookd_register_sinks
from wahookd.sinks.sqlstore import SqlSink, database_url, define_tables
from wahookd.testing import build_sink, make_event, make_status

[SPEC] = wahookd_register_sinks()
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Target:
    def __init__(self, url: str, prefix: str, state_dir: Path) -> None:
        self.options = {"url": url, "table_prefix": prefix}
        self.prefix = prefix
        self.state_dir = state_dir
        self.engine = create_engine(database_url(SPEC.options.model_validate(self.options), state_dir))

    def sink(self) -> SqlSink:
        sink = build_sink(SPEC, self.options, state_dir=self.state_dir, name="db")
        assert isinstance(sink, SqlSink)
        return sink

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql.replace("{p}", self.prefix)))]


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    prefix = f"b{uuid.uuid4().hex[:8]}_"
    url = f"sqlite:///{tmp_path / 'events.db'}" if request.param == "sqlite" else POSTGRES_URL
    store = Target(url, prefix, tmp_path)
    try:
        yield store
    finally:
        define_tables(prefix)[0].drop_all(store.engine)
        store.engine.dispose()


async def deliver_batches(sink: SqlSink, batches: list[list[dict[str, Any]]]) -> None:
    await sink.start()
    try:
        for batch in batches:
            for event in batch:
                await sink.deliver(event)
            await sink.flush()
    finally:
        await sink.close()


def test_nothing_is_written_before_flush_and_a_batch_lands_at_once(target: Target) -> None:
    events = [make_event(text=f"n{n}") for n in range(600)]

    async def scenario() -> None:
        sink = target.sink()
        await sink.start()
        for event in events:
            await sink.deliver(event)
        assert target.rows("SELECT count(*) AS n FROM {p}events") == [{"n": 0}]
        await sink.flush()
        assert target.rows("SELECT count(*) AS n FROM {p}events") == [{"n": 600}]
        await sink.close()

    asyncio.run(scenario())


def test_statuses_merged_in_one_batch_end_as_one_by_one_would(target: Target) -> None:
    order = ["sent", "read", "delivered", "pending", "failed", "read", "played"]
    batch = [
        make_status(f"wamid.M{m}", status, id=f"M{m}:{n}") for m in range(3) for n, status in enumerate(order)
    ]
    batch += [make_status("wamid.R", "delivered", id="R:1"), make_status("wamid.R", "read", id="R:2")]
    asyncio.run(deliver_batches(target.sink(), [batch, [make_status("wamid.R", "delivered", id="R:3")]]))
    rows = {row["message_id"]: row for row in target.rows("SELECT * FROM {p}message_status")}
    for m in range(3):
        row = rows[f"wamid.M{m}"]
        assert row["status"] == "failed"  # terminal, whatever came after it
        assert row["event_id"] == f"M{m}:4"
        assert all(
            row[f"{step}_at"] is not None for step in ("pending", "sent", "delivered", "read", "played")
        )
    assert rows["wamid.R"]["status"] == "read"  # the late `delivered` of the next batch moves nothing
    assert rows["wamid.R"]["event_id"] == "R:2"


def test_a_batch_delivered_again_after_a_failed_flush_is_written_once(target: Target) -> None:
    events = [make_event(text=f"again {n}") for n in range(5)]

    async def scenario() -> None:
        sink = target.sink()
        await sink.start()
        for event in events:
            await sink.deliver(event)
        for event in events:  # the worker delivers the batch again
            await sink.deliver({**event, "text": event["text"] + "!"})
        await sink.flush()
        await sink.close()

    asyncio.run(scenario())
    rows = target.rows("SELECT text FROM {p}events ORDER BY text")
    assert [row["text"] for row in rows] == [f"again {n}!" for n in range(5)]


def test_a_refused_row_fails_the_whole_batch_then_only_itself() -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}_"
    store = Target(POSTGRES_URL, prefix, Path("/tmp"))
    good = [make_event(text="short"), make_event(text="tiny")]
    bad = make_event(text="longer than ten")
    try:

        async def scenario() -> None:
            sink = store.sink()
            await sink.start()
            with store.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {prefix}events ADD CHECK (length(text) < 10)"))
            for event in [good[0], bad, good[1]]:
                await sink.deliver(event)
            with pytest.raises(DeliveryError, match="one by one"):
                await sink.flush()
            # Nothing of the batch was written: one transaction.
            assert store.rows("SELECT count(*) AS n FROM {p}events") == [{"n": 0}]
            # The worker delivers the batch again: the refused event alone fails, for good.
            await sink.deliver(good[0])
            with pytest.raises(PermanentDeliveryError):
                await sink.deliver(bad)
            await sink.deliver(good[1])
            await sink.flush()
            await sink.close()

        asyncio.run(scenario())
        assert sorted(row["text"] for row in store.rows("SELECT text FROM {p}events")) == ["short", "tiny"]
    finally:
        define_tables(prefix)[0].drop_all(store.engine)
        store.engine.dispose()


def forget(contact: str) -> dict[str, Any]:
    return make_event(
        id=f"wahookd:forget:{uuid.uuid4().hex}",
        source="wahookd",
        provider="wahookd",
        kind="system",
        event="privacy.forget",
        message_id=None,
        chat_id=None,
        from_=contact,
        to=None,
        from_me=None,
        sender_name=None,
        type=None,
        text=None,
        raw={"contact": contact, "addresses": [contact, f"{contact}@s.whatsapp.net", f"{contact}@c.us"]},
    )


def test_privacy_forget_deletes_the_contacts_rows_and_keeps_the_others(target: Target) -> None:
    gone, kept = "15550001111", "15550002222"
    before = [
        make_event(from_=gone, chat_id=f"{gone}@s.whatsapp.net", text="from the forgotten"),
        make_event(from_="15559990000", to=gone, chat_id=f"{gone}@s.whatsapp.net", text="to the forgotten"),
        make_event(from_=None, chat_id="999@g.us", text="lid only"),
        make_status("wamid.OUT", "read", to=gone, chat_id=f"{gone}@s.whatsapp.net"),
        make_event(from_=kept, chat_id=f"{kept}@s.whatsapp.net", text="from the kept"),
        make_status("wamid.KEPT", "delivered", to=kept),
    ]
    before[2]["from_lid"] = "777@lid"
    lid_forget = forget("777@lid")
    lid_forget["raw"]["addresses"] = ["777@lid"]
    after = make_event(from_=gone, chat_id=f"{gone}@s.whatsapp.net", text="written again later")
    asyncio.run(deliver_batches(target.sink(), [[*before, forget(gone), lid_forget, after]]))
    rows = target.rows('SELECT "from", text, event FROM {p}events')
    texts = sorted(row["text"] for row in rows if row["text"])
    assert texts == ["from the kept", "written again later"]
    assert sorted(row["from"] for row in rows if row["event"] == "privacy.forget") == [
        "15550001111",
        "777@lid",
    ]
    statuses = target.rows("SELECT message_id FROM {p}message_status")
    assert statuses == [{"message_id": "wamid.KEPT"}]
    fields = [json.loads(row["fields"]) for row in target.rows("SELECT fields FROM {p}events")]
    assert all(field.get("from_lid") != "777@lid" for field in fields)
