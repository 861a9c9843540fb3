"""`state.backend = "postgres"` against the real PostgreSQL at 127.0.0.1:5432 (db `test`):
the journal behind the same interface, and several daemon processes on one database.

Each test works in a schema of its own (the DSN's search_path) and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import wasender_body, wasender_headers
from wahookd.events import Event

BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def reachable() -> bool:
    try:
        psycopg.connect(BASE_URL, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


pytestmark = pytest.mark.skipif(not reachable(), reason="no PostgreSQL at 127.0.0.1:5432")


@pytest.fixture
def pg_url() -> Iterator[str]:
    schema = f"wh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type] # a name of our own
    yield f"{BASE_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]


def event(event_id: str) -> Event:
    return Event(
        id=event_id,
        source="shop",
        provider="wasender",
        kind="message",
        event="messages.upsert",
        raw={"id": event_id},
    )


def test_two_journals_on_one_database_share_dedupe_and_positions(pg_url: str) -> None:
    from wahookd.journal.postgres import PgJournal

    async def scenario() -> None:
        one, two = PgJournal(pg_url), PgJournal(pg_url)
        one.open()
        two.open()  # the second finds the schema migrated
        try:
            new, dups = await one.commit([event("a"), event("b")])
            assert ([e.id for e in new], dups) == (["a", "b"], 0)
            new, dups = await two.commit([event("a"), event("c")])  # a retry on the other node
            assert ([e.id for e in new], dups) == (["c"], 1)
            # Both race on one new event: one commits it, the other sees a duplicate.
            results = await asyncio.gather(one.commit([event("d")]), two.commit([event("d")]))
            assert sorted(len(new) for new, _ in results) == [0, 1]
            ready: list = []
            while batch := await one.read_ready(ready[-1].dseq if ready else 0, 100):
                ready += batch  # from memory what this node committed, else from the database
            assert [r.dseq for r in ready] == [1, 2, 3, 4]
            assert [json.loads(r.body)["id"] for r in ready] == ["a", "b", "c", "d"]
            assert await two.cursor("archive") == 4  # a new sink starts at the journal's end
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


def test_a_lease_moves_to_the_other_node_within_lease_seconds(pg_url: str) -> None:
    from wahookd.journal.pgschema import connect, migrate
    from wahookd.journal.postgres import Leases

    with connect(pg_url) as conn:
        migrate(conn)
    first, second = Leases(pg_url, "first", 0.6), Leases(pg_url, "second", 0.6)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first.start(loop)
        await asyncio.wait_for(first.wait_held("sink:archive"), 5)
        second.start(loop)
        second.want("sink:archive")
        await asyncio.sleep(0.5)
        assert first.holds("sink:archive")
        assert not second.holds("sink:archive")
        # The holder stops renewing without a word (as a SIGKILLed node does).
        first._stopping.set()
        first.holder = "gone"  # its goodbye deletes nothing of the lease
        began = time.monotonic()
        await asyncio.wait_for(second.wait_held("sink:archive"), 5)
        assert time.monotonic() - began < 0.6 + 0.6  # within lease_seconds (+ one renew period)

    try:
        asyncio.run(scenario())
    finally:
        first.stop()
        second.stop()


# -- several daemon processes on one database -----------------------------------------------


def node_config(pg_url: str, sink_path: Path, lease_seconds: float = 1.5) -> str:
    return f"""
        backend = "postgres"
        url = "{pg_url}"
        lease_seconds = {lease_seconds}
        durability = "fsync"

        [sources.shop]
        provider = "wasender"
        secret = "s3cret"

        [sinks.archive]
        plugin = "file"
        path = "{sink_path}"
        """


def post(base: str, message_id: str) -> int:
    request = urllib.request.Request(
        base + "/webhooks/shop", data=wasender_body(message_id), headers=wasender_headers("s3cret")
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.findall(rf"^{re.escape(name)} ([\d.e+-]+)$", text, re.MULTILINE)
    return sum(float(value) for value in found)


def sink_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def two_nodes(daemon_factory, tmp_path: Path, pg_url: str, sink_path: Path):  # type: ignore[no-untyped-def]
    nodes = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        nodes.append(daemon_factory(node_config(pg_url, sink_path), workdir=workdir).start())
    return nodes


def test_a_provider_retry_landing_on_the_other_node_is_a_duplicate(
    daemon_factory, tmp_path: Path, pg_url: str
) -> None:
    sink_path = tmp_path / "events.jsonl"  # shared: only the lease holder writes it
    a, b = two_nodes(daemon_factory, tmp_path, pg_url, sink_path)
    assert post(a.url, "RETRY1") == 200
    assert post(b.url, "RETRY1") == 200
    assert metric(b.url, 'wahookd_duplicates_total{source="shop"}') == 1
    assert wait_for(lambda: len(sink_ids(sink_path)) >= 1, 10)
    time.sleep(0.5)
    assert len(sink_ids(sink_path)) == 1
    held = [metric(node.url, 'wahookd_lease_held{sink="archive"}') for node in (a, b)]
    assert sorted(held) == [0.0, 1.0]
    assert "several nodes need a shared media store" in a.log()


def test_sigkill_of_the_lease_holder_hands_delivery_to_the_other_node(
    daemon_factory, tmp_path: Path, pg_url: str
) -> None:
    sink_path = tmp_path / "events.jsonl"
    a, b = two_nodes(daemon_factory, tmp_path, pg_url, sink_path)
    accepted = [f"EV{i}" for i in range(20)]
    for i, message_id in enumerate(accepted):
        assert post((a, b)[i % 2].url, message_id) == 200
    assert wait_for(lambda: len(set(sink_ids(sink_path))) == 20, 10)
    holder, other = (a, b) if metric(a.url, 'wahookd_lease_held{sink="archive"}') == 1 else (b, a)
    holder.kill()  # SIGKILL: no goodbye, the lease has to expire
    killed_at = time.monotonic()
    later = [f"LATE{i}" for i in range(10)]
    for message_id in later:
        assert post(other.url, message_id) == 200
    wanted = {f"wasender:{m}" for m in accepted + later}
    ids = lambda: {i.split(":", 1)[-1] for i in sink_ids(sink_path)}  # noqa: E731
    assert wait_for(lambda: {w.split(":", 1)[-1] for w in wanted} <= ids(), 1.5 + 5)
    assert time.monotonic() - killed_at < 1.5 + 5
    assert metric(other.url, 'wahookd_lease_held{sink="archive"}') == 1
    delivered = sink_ids(sink_path)
    assert len(set(delivered)) == 30  # nothing lost
    assert len(delivered) == 30  # nothing doubled: the killed node had saved its position
    status = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "status", "--json", "--config", str(other.config_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    sinks = {sink["name"]: sink for sink in json.loads(status.stdout)["sinks"]}
    assert sinks["archive"]["holder"] is not None
    assert sinks["archive"]["backlog"] == 0
    other.signal(signal.SIGTERM)
    assert other.wait() == 0
