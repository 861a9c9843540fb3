"""`wahookd forget CONTACT` against a running daemon (a real process), with its media in the
local store or a real S3 server, and a `sql` sink on the local PostgreSQL (SPEC §7, issue 12).

Two people send a text and a photo each; one is forgotten. Their journal rows, media and
PostgreSQL rows go; the other's stay; a provider's retry of a forgotten webhook is still a
duplicate.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from media_support import Route, StandIn, encrypt_media, s3_server, standin
from minio import Minio
from minio.error import S3Error
from sqlalchemy import create_engine, text

from wahookd.journal import JournalReader
from wahookd.sinks.sqlstore import define_tables

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "forget-secret"
FORGOTTEN = "15550001111"
KEPT = "15550002222"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def host() -> Iterator[StandIn]:
    with standin() as server:
        yield server


@pytest.fixture
def postgres() -> Iterator[tuple[str, Any]]:
    prefix = f"f{uuid.uuid4().hex[:8]}_"
    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        yield prefix, engine
    finally:
        define_tables(prefix)[0].drop_all(engine)
        engine.dispose()


def text_body(contact: str, message_id: str, words: str) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "timestamp": 1700000000,
            "data": {
                "key": {"id": message_id, "fromMe": False, "remoteJid": f"{contact}@s.whatsapp.net"},
                "pushName": "Someone",
                "messageTimestamp": 1700000000,
                "message": {"conversation": words},
            },
        }
    ).encode()


def image_body(contact: str, message_id: str, media: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "timestamp": 1700000000,
            "data": {
                "key": {"id": message_id, "fromMe": False, "remoteJid": f"{contact}@s.whatsapp.net"},
                "message": {"imageMessage": {**media, "caption": f"photo of {contact}"}},
            },
        }
    ).encode()


def post(daemon: Any, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(
        daemon.url + "/webhooks/shop",
        data=body,
        headers={"Content-Type": "application/json", "X-Webhook-Signature": SECRET},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


def pg_rows(engine: Any, prefix: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        try:
            return [
                dict(row._mapping)
                for row in conn.execute(text(f'SELECT id, "from", kind, event, media FROM {prefix}events'))
            ]
        except Exception:  # the sink has not made its tables yet
            return []


def wait_until(check: Any, what: str, daemon: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{daemon.log()[-4000:]}")


def cli(daemon: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def journal_contacts(daemon: Any, contact: str) -> int:
    conn = sqlite3.connect(daemon.state_dir / "journal.db")
    try:
        return len(JournalReader(conn).by_contact(contact, 100))
    finally:
        conn.close()


def s3_keys(endpoint: str, bucket: str) -> set[str]:
    client = Minio(endpoint, access_key="testing", secret_key="testing", secure=False)
    try:
        return {item.object_name for item in client.list_objects(bucket, recursive=True)}
    except S3Error:
        return set()


@pytest.mark.parametrize("store", ["local", "s3"])
def test_forget_erases_one_contact_everywhere_and_keeps_the_other(
    daemon_factory: Any,
    tmp_path: Path,
    host: StandIn,
    s3: str,
    postgres: tuple[str, Any],
    store: str,
) -> None:
    prefix, engine = postgres
    bucket = f"forget-{uuid.uuid4().hex[:8]}"
    media_table = (
        f'store = "s3"\nendpoint = "{s3}"\nbucket = "{bucket}"\naccess_key = "testing"\n'
        'secret_key = "testing"\nsecure = false\n'
        if store == "s3"
        else 'store = "local"\n'
    )
    photos = {
        contact: encrypt_media(f"the photo of {contact} ".encode() * 30) for contact in (FORGOTTEN, KEPT)
    }
    for contact, photo in photos.items():
        host.routes[f"/{contact}.enc"] = Route(body=photo.encrypted)
    daemon = daemon_factory(
        f"""
[media]
{media_table}allow_hosts = ["127.0.0.1"]
backoff_initial = 0.1
timeout = 5

[sources.shop]
provider = "wasender"
secret = "{SECRET}"

[sinks.archive]
plugin = "file"
path = "{tmp_path / "events.jsonl"}"

[sinks.db]
plugin = "sql"
url = "{POSTGRES_URL}"
table_prefix = "{prefix}"
"""
    ).start()
    bodies = {}
    for contact, photo in photos.items():
        bodies[contact] = [
            text_body(contact, f"TXT{contact}", f"hello from {contact}"),
            image_body(contact, f"IMG{contact}", photo.baileys(host.url(f"/{contact}.enc"))),
        ]
        for body in bodies[contact]:
            assert post(daemon, body) == {"accepted": 1, "duplicates": 0}

    def stored_everywhere() -> list[dict[str, Any]]:
        rows = pg_rows(engine, prefix)
        with_media = [row for row in rows if row["media"] and json.loads(row["media"]).get("stored")]
        return rows if len(rows) == 4 and len(with_media) == 2 else []

    rows = wait_until(stored_everywhere, "four rows in PostgreSQL, two with stored media", daemon)
    stored = {row["from"]: json.loads(row["media"])["stored"] for row in rows if row["media"]}
    if store == "s3":
        assert s3_keys(s3, bucket) == {stored[FORGOTTEN]["key"], stored[KEPT]["key"]}
    else:
        for contact in photos:
            assert (daemon.state_dir / "media" / stored[contact]["key"]).is_file()

    done = cli(daemon, "forget", f"+{FORGOTTEN[:1]} {FORGOTTEN[1:4]} {FORGOTTEN[4:]}")
    assert done.returncode == 0, done.stderr + daemon.log()[-3000:]
    report = done.stdout
    assert f"forgot {FORGOTTEN}:" in report
    assert "journal events   2" in report
    assert "media objects    1 deleted" in report
    assert "privacy.forget" in report

    # The journal holds nothing of the forgotten contact but the privacy.forget event.
    conn = sqlite3.connect(daemon.state_dir / "journal.db")
    try:
        left = JournalReader(conn).by_contact(FORGOTTEN, 100)
        assert [stored_event.event["event"] for stored_event in left] == ["privacy.forget"]
        assert len(JournalReader(conn).by_contact(KEPT, 100)) == 2
    finally:
        conn.close()
    # Its media is gone, the other's stays.
    if store == "s3":
        assert s3_keys(s3, bucket) == {stored[KEPT]["key"]}
    else:
        assert not (daemon.state_dir / "media" / stored[FORGOTTEN]["key"]).exists()
        assert (daemon.state_dir / "media" / stored[KEPT]["key"]).is_file()

    # The daemon delivers privacy.forget; the sql sink deletes the contact's rows.
    def erased_downstream() -> list[dict[str, Any]]:
        rows = pg_rows(engine, prefix)
        forgotten = [row for row in rows if row["from"] == FORGOTTEN]
        return rows if [row["event"] for row in forgotten] == ["privacy.forget"] else []

    rows = wait_until(erased_downstream, "the sql sink to erase the forgotten contact", daemon)
    assert sorted(row["id"] for row in rows if row["from"] == KEPT) == [f"shop:IMG{KEPT}", f"shop:TXT{KEPT}"]
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "privacy.forget"
    assert lines[-1]["from"] == FORGOTTEN
    assert set(lines[-1]) >= {"id", "source", "kind", "event", "from", "to", "chat_id", "media", "raw"}

    # A provider's retry of a forgotten webhook creates nothing.
    for body in bodies[FORGOTTEN]:
        assert post(daemon, body) == {"accepted": 0, "duplicates": 1}
    time.sleep(0.5)
    assert journal_contacts(daemon, FORGOTTEN) == 1
    assert len([row for row in pg_rows(engine, prefix) if row["from"] == FORGOTTEN]) == 1


def test_forget_refuses_what_is_not_a_contact(daemon_factory: Any, tmp_path: Path) -> None:
    daemon = daemon_factory("").start()
    for wrong in ("12", "hello", "+1 555 abc"):
        done = cli(daemon, "forget", wrong)
        assert done.returncode == 1
        assert done.stderr.startswith("wahookd: error: forget:"), done.stderr


def test_forget_erases_rejected_bodies_and_dead_letters(daemon_factory: Any, tmp_path: Path) -> None:
    daemon = daemon_factory(
        f"""
[sources.shop]
provider = "wasender"
secret = "{SECRET}"
"""
    ).start()
    assert post(daemon, text_body(FORGOTTEN, "TXT1", "hi")) == {"accepted": 1, "duplicates": 0}
    # A verified body that cannot be parsed lands in rejected/.
    request = urllib.request.Request(
        daemon.url + "/webhooks/shop",
        data=b'{"event": "messages.upsert", "data": {"key": {"remoteJid": "'
        + FORGOTTEN.encode()
        + b"@s.whatsapp",
        headers={"Content-Type": "application/json", "X-Webhook-Signature": SECRET},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    rejected = daemon.state_dir / "rejected"
    wait_until(lambda: list(rejected.glob("*.body")), "a rejected body", daemon)
    # A dead letter of the contact's event, as a sink that gave up would leave it.
    conn = sqlite3.connect(daemon.state_dir / "journal.db", timeout=5)
    [[body]] = conn.execute("SELECT body FROM events").fetchall()
    conn.execute(
        "INSERT INTO dead_letters (sink, seq, event_id, attempts, error, failed_at, body) "
        "VALUES ('events', 1, 'shop:TXT1', 3, 'boom', 0, ?)",
        (body,),
    )
    conn.execute(
        "INSERT INTO retries (sink, event_id, attempts, next_try, last_error) "
        "VALUES ('events', 'shop:TXT1', 1, 0, 'x')"
    )
    conn.commit()
    conn.close()
    done = cli(daemon, "forget", FORGOTTEN)
    assert done.returncode == 0, done.stderr
    assert "journal events   1" in done.stdout
    assert "dead letters     1" in done.stdout
    assert "retry records    1" in done.stdout
    assert "rejected bodies  1" in done.stdout
    assert not list(rejected.glob("*"))
