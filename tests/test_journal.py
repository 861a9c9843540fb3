"""The journal: durable commits, the dedupe LRU, group commit, media hand-off, failures."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from wahookd.errors import JournalError
from wahookd.events import Event, new_media
from wahookd.journal import JOURNAL_FILE, Journal, dedupe


def event(event_id: str, source: str = "shop", media: bool = False) -> Event:
    return Event(
        id=event_id,
        source=source,
        provider="wasender",
        kind="message",
        event="messages.upsert",
        raw={"id": event_id},
        media=new_media("image/jpeg") if media else None,
    )


async def opened(path: Path, **kwargs: object) -> Journal:
    journal = Journal(path, **kwargs)  # type: ignore[arg-type]
    journal.open()
    return journal


async def test_new_events_are_committed_and_repeats_are_duplicates(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    new, dupes = await journal.commit([event("a"), event("b"), event("a")])
    assert [e.id for e in new] == ["a", "b"]
    assert dupes == 1
    assert all(e.received_at and e.received_at.endswith("Z") for e in new)
    new, dupes = await journal.commit([event("a"), event("b")])
    assert (new, dupes) == ([], 2)
    ready = await journal.read_ready(0, 10)
    assert [json.loads(r.body)["id"] for r in ready] == ["a", "b"]
    assert [r.dseq for r in ready] == [1, 2]
    await journal.close()


async def test_the_same_id_from_another_source_is_a_new_event(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    await journal.commit([event("a", source="one")])
    new, dupes = await journal.commit([event("a", source="two")])
    assert (len(new), dupes) == (1, 0)
    await journal.close()


async def test_dedupe_survives_a_restart(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    await journal.commit([event("a")])
    await journal.close()
    journal = await opened(tmp_path)
    new, dupes = await journal.commit([event("a"), event("c")])
    assert ([e.id for e in new], dupes) == (["c"], 1)
    assert journal.last_dseq == 2
    await journal.close()


async def test_dedupe_is_an_lru_bounded_by_capacity(tmp_path: Path) -> None:
    journal = await opened(tmp_path, dedupe_capacity=3)
    for name in "abc":
        await journal.commit([event(name)])
    await journal.commit([event("a")])  # a repeat makes "a" recently used
    await journal.commit([event("d")])  # evicts the least recently used: "b"
    assert journal.dedupe_entries == 3
    new, _ = await journal.commit([event("a"), event("c"), event("d")])
    assert new == []
    new, _ = await journal.commit([event("b")])
    assert [e.id for e in new] == ["b"]
    rows = sqlite3.connect(tmp_path / JOURNAL_FILE).execute("SELECT count(*) FROM dedupe").fetchone()
    assert rows[0] == 3
    await journal.close()


async def test_concurrent_commits_share_fsyncs(tmp_path: Path) -> None:
    commits: list[float] = []
    journal = await opened(tmp_path, observe_commit=commits.append)
    results = await asyncio.gather(*(journal.commit([event(f"e{i}")]) for i in range(300)))
    assert sum(len(new) for new, _ in results) == 300
    assert len(commits) < 300  # group commit: many requests per transaction
    await journal.close()


async def test_media_events_wait_until_completed(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    woken: list[str] = []
    journal.on_media(lambda: woken.append("media"))
    await journal.commit([event("plain"), event("photo", media=True), event("after")])
    assert woken == ["media"]
    assert [json.loads(r.body)["id"] for r in await journal.read_ready(0, 10)] == ["plain", "after"]
    pending = await journal.pending_media()
    assert [(e["id"], e["media"]["stored"]) for _, e in pending] == [("photo", None)]
    seq, body = pending[0]
    body["media"]["stored"] = {"bucket": "b", "key": "k", "url": "s3://b/k"}
    await journal.complete_media(seq, body)
    ready = await journal.read_ready(2, 10)
    assert [json.loads(r.body)["media"]["stored"]["key"] for r in ready] == ["k"]
    assert await journal.pending_media() == []
    await journal.close()


async def test_cursors_and_dead_letters_persist(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    await journal.commit([event("a"), event("b")])
    assert await journal.cursor("new-sink") == 2  # a new sink starts at the end
    await journal.save_cursor("s", 1)
    await journal.dead_letter("s", 1, {"id": "a"}, 3, "boom")
    await journal.close()
    journal = await opened(tmp_path)
    assert await journal.cursor("s") == 1
    assert await journal.dead_letter_counts() == {"s": 1}
    await journal.close()


async def test_a_full_disk_fails_the_commit_and_keeps_what_was_accepted(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    await journal.commit([event("kept")])
    # Make the database "full": SQLite then fails writes with SQLITE_FULL, as on a full disk.
    pages = journal._writer_conn.execute("PRAGMA page_count").fetchone()[0]
    journal._writer_conn.execute(f"PRAGMA max_page_count={pages}")
    big = [event("x" * 2000 + str(i)) for i in range(200)]
    with pytest.raises(JournalError):
        await journal.commit(big)
    assert journal.healthy is False
    journal._writer_conn.execute("PRAGMA max_page_count=1073741823")
    assert await journal.probe()
    assert journal.healthy
    # Nothing of the failed batch was kept, not even its dedupe keys: a retry is new.
    new, dupes = await journal.commit([event("kept"), big[0]])
    assert ([e.id for e in new], dupes) == ([big[0].id], 1)
    assert [json.loads(r.body)["id"] for r in await journal.read_ready(0, 10)] == ["kept", big[0].id]
    await journal.close()


async def test_a_caught_up_read_asks_no_reader_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the last position handed out there is nothing to read; events not in memory any
    more are still read from the database."""
    journal = await opened(tmp_path)
    await journal.commit([event("a"), event("b")])
    reads: list[int] = []
    read_ready_sync = journal._read_ready_sync

    def counted(after: int, limit: int, max_bytes: int) -> list:
        reads.append(after)
        return read_ready_sync(after, limit, max_bytes)

    monkeypatch.setattr(journal, "_read_ready_sync", counted)
    assert await journal.read_ready(2, 10) == []
    assert reads == []
    journal._recent.clear()
    assert [r.dseq for r in await journal.read_ready(0, 10)] == [1, 2]
    assert reads == [0]
    await journal.close()


async def test_prune_keeps_events_a_sink_has_not_passed(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    await journal.commit([event(name) for name in "abcd"])
    await journal.save_cursor("s1", 3)
    await journal.save_cursor("s2", 2)
    assert await journal.prune(["s1", "s2"], older_than=1e12) == 2
    assert [r.dseq for r in await journal.read_ready(0, 10)] == [3, 4]
    assert await journal.prune(["s1", "never-started"], older_than=1e12) == 0
    await journal.close()


def test_timestamps_in_seconds_milliseconds_and_nonsense() -> None:
    from wahookd.events import rfc3339

    assert rfc3339(1633456789) == "2021-10-05T17:59:49Z"
    assert rfc3339("1747775431467") == "2025-05-20T21:10:31.467Z"
    assert rfc3339("2024-05-29T10:00:00.000Z") == "2024-05-29T10:00:00Z"
    assert rfc3339(10**400) is None
    assert rfc3339(float("nan")) is None
    assert rfc3339("soon") is None


@pytest.mark.parametrize("variable_limit", [None, 999])  # 999: SQLite before 3.32
async def test_one_batch_of_many_requests_dedupes_across_them_and_keeps_order(
    tmp_path: Path, variable_limit: int | None
) -> None:
    """Concurrent commits share a batch, written with multi-row statements in pieces of up
    to 256 rows: duplicates within and across requests, media events and sequence numbers
    must come out as if each request had been committed on its own, in order."""
    journal = await opened(tmp_path)
    if variable_limit:
        journal._writer_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
    await journal.commit([event("old")])
    requests = [[event(f"e{i}"), event(f"e{i}")] for i in range(300)]  # a repeat inside each
    requests.append([event("old"), event("e7"), event("late", media=True), event("last")])
    results = await asyncio.gather(*(journal.commit(request) for request in requests))
    for i, (new, dupes) in enumerate(results[:300]):
        assert ([e.id for e in new], dupes) == ([f"e{i}"], 1)
    new, dupes = results[300]
    assert ([e.id for e in new], dupes) == (["late", "last"], 2)
    ready = await journal.read_ready(0, 1000)
    assert [json.loads(r.body)["id"] for r in ready] == ["old", *(f"e{i}" for i in range(300)), "last"]
    assert [r.dseq for r in ready] == list(range(1, 303))
    await journal.close()

    with sqlite3.connect(tmp_path / JOURNAL_FILE) as conn:
        rows = conn.execute("SELECT seq, id, dseq, json_extract(body, '$.id') FROM events").fetchall()
        assert all(row_id == body_id for _, row_id, _, body_id in rows)  # seq and body agree
        assert len(rows) == 303
        assert conn.execute("SELECT count(*) FROM dedupe").fetchone()[0] == 303
    journal = await opened(tmp_path)
    new, dupes = await journal.commit([event("e299"), event("late"), event("fresh")])
    assert ([e.id for e in new], dupes) == (["fresh"], 2)
    assert journal.last_dseq == 303
    await journal.close()


def crash_image(source: Path, target: Path) -> Path:
    """The journal's files as a SIGKILL leaves them: database and WAL, copied between two
    commits (nothing is written meanwhile), without the merge a clean stop makes."""
    target.mkdir()
    for name in (JOURNAL_FILE, JOURNAL_FILE + "-wal"):
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    return target


def indexed_keys(path: Path) -> int:
    with sqlite3.connect(path / JOURNAL_FILE) as conn:
        return int(conn.execute("SELECT count(*) FROM dedupe").fetchone()[0])


async def test_unmerged_keys_are_read_back_from_their_events_after_a_crash(tmp_path: Path) -> None:
    """New keys wait in memory and go into the index in bulk; their events' rows hold them
    meanwhile, so a crash forgets none: a redelivery after it is still a duplicate."""
    journal = await opened(tmp_path / "live")
    await asyncio.gather(*(journal.commit([event(f"k{i}")]) for i in range(500)))
    image = crash_image(tmp_path / "live", tmp_path / "crashed")
    await journal.close()
    assert indexed_keys(tmp_path / "live") == 500  # a clean stop merges every key
    assert indexed_keys(image) == 0  # before it, the index held none of them

    recovered = await opened(image)
    assert recovered.dedupe_entries == 500
    new, dupes = await recovered.commit([event(f"k{i}") for i in range(500)] + [event("new")])
    assert ([e.id for e in new], dupes) == (["new"], 500)
    await recovered.close()
    assert indexed_keys(image) == 501


async def test_a_merge_runs_in_slices_and_every_key_stays_known_throughout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `merge_at` unmerged keys a merge starts: one slice of the key space per batch.
    Keys are found in memory or in the index at every step, and a crash in the middle of the
    merge loses none of them (the journal reads back every key past the last full merge)."""
    monkeypatch.setattr(dedupe, "ENTRIES_PER_SLICE", 64)  # 500 keys: 8 slices
    journal = await opened(tmp_path / "live", dedupe_capacity=16 * 100)  # merge_at 100
    await journal.commit([event(f"m{i}") for i in range(500)])
    for i in range(3):  # three more batches: three more slices
        new, dupes = await journal.commit([event(f"m{i}"), event(f"later{i}")])
        assert ([e.id for e in new], dupes) == ([f"later{i}"], 1)
    in_index = indexed_keys(tmp_path / "live")
    assert 0 < in_index < 500  # part of the merge is written
    image = crash_image(tmp_path / "live", tmp_path / "crashed")
    for i in range(10):
        await journal.commit([event(f"more{i}")])
    assert indexed_keys(tmp_path / "live") >= 500  # done within a few more batches
    await journal.close()

    recovered = await opened(image)
    new, dupes = await recovered.commit([event(f"m{i}") for i in range(500)])
    assert (new, dupes) == ([], 500)
    await recovered.close()


async def test_a_failed_batch_leaves_no_unmerged_key_behind(tmp_path: Path) -> None:
    """A key staged by a batch that rolls back must not count as known: the provider's
    retry of that event would be taken for a duplicate and lost."""
    journal = await opened(tmp_path, dedupe_capacity=16)  # merge_at 1: a merge every batch
    await journal.commit([event("kept")])
    pages = journal._writer_conn.execute("PRAGMA page_count").fetchone()[0]
    journal._writer_conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(JournalError):
        await journal.commit([event("y" * 3000 + str(i)) for i in range(50)])
    journal._writer_conn.execute("PRAGMA max_page_count=1073741823")
    await journal.commit([event("between")])  # a batch that commits comes first
    new, dupes = await journal.commit([event("y" * 3000 + "0"), event("kept")])
    assert (len(new), dupes) == (1, 1)
    await journal.close()


async def test_an_idle_writer_merges_keys_that_waited_long_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedupe, "MERGE_AFTER_SECONDS", 0.0)
    journal = await opened(tmp_path)
    await journal.commit([event("quiet")])
    assert indexed_keys(tmp_path) == 0
    for _ in range(40):  # the writer's idle timer is a second
        if indexed_keys(tmp_path) == 1:
            break
        await asyncio.sleep(0.1)
    assert indexed_keys(tmp_path) == 1
    await journal.close()


async def test_at_capacity_merges_evict_the_least_recently_used_in_their_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the capacity, each merge slice evicts the oldest keys of its range, so eviction
    writes the pages the merge writes anyway; the index ends at the capacity, holding the
    most recently used keys."""
    monkeypatch.setattr(dedupe, "ENTRIES_PER_SLICE", 64)
    journal = await opened(tmp_path, dedupe_capacity=1600)  # merge_at 100, 26+ slices
    for start in range(0, 2600, 50):
        await journal.commit([event(f"k{i}") for i in range(start, start + 50)])
        # Over by at most a merge (100) and what comes while its 27 slices are written.
        assert journal.dedupe_entries <= 1600 + 100 + 27 * 50
    await journal.close()
    assert indexed_keys(tmp_path) == 1600

    journal = await opened(tmp_path, dedupe_capacity=1600)
    new, dupes = await journal.commit([event(f"k{i}") for i in range(1100, 2600)])
    assert (new, dupes) == ([], 1500)  # the newest are all known
    new, _ = await journal.commit([event(f"k{i}") for i in range(900)])
    assert len(new) == 900  # the oldest were evicted
    await journal.close()


async def test_a_merge_hands_its_counters_out_in_key_order_and_a_key_used_since_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge gives its keys their own LRU counters again, lowest first in key order, so
    that a slice's entries sit together in the index on `used`; a key used again while the
    merge runs keeps the newer counter of that use."""
    monkeypatch.setattr(dedupe, "ENTRIES_PER_SLICE", 64)
    journal = await opened(tmp_path, dedupe_capacity=16 * 100)  # merge_at 100
    await journal.commit([event(f"first{i}") for i in range(300)])  # counters 1-300; a merge starts
    await journal.commit([event("first7")])  # counter 301: a use of first7 while it runs
    for i in range(20):  # the merge's other slices (5 in all), and counters 302-321
        await journal.commit([event(f"later{i}")])
    with sqlite3.connect(tmp_path / JOURNAL_FILE) as conn:
        rows = conn.execute("SELECT key, used FROM dedupe ORDER BY key").fetchall()
    await journal.close()

    first7 = dedupe.dedupe_key("shop", "first7")
    assert len(rows) == 300  # the merge is complete; the later keys wait for the next one
    assert dict(rows)[first7] == 301
    others = [used for key, used in rows if key != first7]
    assert others == sorted(others)  # in key order
    assert set(others) < set(range(1, 301))  # the merge's own counters, 299 of them


def test_a_pre_fill_is_laid_out_as_merges_leave_the_index() -> None:
    """The benchmarks' pre-fill: each merge's worth of keys holds a run of counters, in key
    order, as a daemon that has run for a while has them."""
    rows = list(dedupe.merged_rows(dedupe.MERGE_KEYS + 10))
    assert [used for _, used in rows] == list(range(1, dedupe.MERGE_KEYS + 11))
    first, second = rows[: dedupe.MERGE_KEYS], rows[dedupe.MERGE_KEYS :]
    assert first == sorted(first)
    assert second == sorted(second)
    assert len({key for key, _ in rows}) == len(rows)


async def test_a_journal_from_before_unmerged_keys_reads_nothing_back(tmp_path: Path) -> None:
    """An older wahookd put every key into the index with its event, and wrote no merge
    position: its events are not scanned at start, and their keys are known."""
    journal = await opened(tmp_path)
    await journal.commit([event(f"old{i}") for i in range(20)])
    await journal.close()
    with sqlite3.connect(tmp_path / JOURNAL_FILE) as conn:
        conn.execute("DELETE FROM meta WHERE key = ?", (dedupe.MERGED_SEQ,))
    journal = await opened(tmp_path)
    assert journal._unmerged.keys == {}
    new, dupes = await journal.commit([event(f"old{i}") for i in range(20)])
    assert (new, dupes) == ([], 20)
    await journal.close()
