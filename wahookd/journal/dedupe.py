"""The dedupe index: 16-byte BLAKE2b keys of (source, event id) with an LRU counter.

Indexed both ways (by key, by use); the oldest entries are evicted past
``dedupe.capacity``. SQLite's B-tree keeps a lookup at a handful of page reads at a million
keys, and the index lives on disk, so memory does not grow with the capacity. These run on
the writer's connection inside its batch transaction, so a new event and its key are one
commit.

A new key does not go into the index at once (`UnmergedKeys`): the keys are random, so each
one lands on a leaf page of its own, and a batch of 50 events dirtied about 50 index pages:
two thirds of the WAL bytes and half the writer's CPU per event. The key is durable all the
same, in its event's row (`events.source` and `events.id` give it back), and the index takes
the keys in bulk, sorted, a slice of the key space per batch, so that each index page is
written once for many keys. After a crash the keys of the events past the last merge are
read back from their rows (`UnmergedKeys.recover`) before the first request is answered.

A merge also hands its keys' LRU counters out again in key order: the same counters, so
every key keeps its place against the keys outside the merge, but a slice's keys then hold
a run of them, and their entries in the index on `used` sit together. In arrival order
every slice's few hundred keys were spread over the whole merge's stretch of that index,
~110 pages at 32,768 keys, and a merge of 124 slices wrote each of those pages 124 times
over (and as many again to evict): most of the bytes a merge wrote. The LRU order within
the keys of one merge is lost; between merges it is kept.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator

from wahookd.journal.schema import chunks, insert_rows, placeholders, rows_per_statement

MERGED_SEQ = "dedupe_merged_seq"  # meta key: every event up to this seq has its key in the index
# Unmerged keys that start a merge (capacity // 16 when that is less): ~4 MB of memory; at a
# million keys (~3,400 index leaves) a merge writes about one leaf for every ten keys.
MERGE_KEYS = 32_768
# Index entries per merge slice: ~300 keys fit a leaf page, so one slice is ~27 pages, half
# of what a batch of 50 events used to dirty for its own keys. At a million keys a merge has
# 124 slices, written in fewer batches than it takes 32,768 new keys to arrive.
ENTRIES_PER_SLICE = 8_192
MAX_SLICES = 256  # slices are ranges of the first key byte
MERGE_AFTER_SECONDS = 60.0  # a writer idle with keys this old merges them all


def dedupe_key(source: str, event_id: str) -> bytes:
    return hashlib.blake2b(f"{source}\x00{event_id}".encode(), digest_size=16).digest()


class UnmergedKeys:
    """The keys whose events are committed but which the index does not hold yet.

    Writer thread only. A batch stages what it changes (`add`, `touch`, `merge_step`); the
    writer applies it with `committed()` once the transaction has committed, or drops it with
    `rolled_back()`: a key must never count as known for an event that was not stored.
    """

    def __init__(self, capacity: int) -> None:
        self.keys: dict[bytes, int] = {}  # key -> its LRU counter
        self.merge_at = min(MERGE_KEYS, capacity // 16)
        self.merged_seq = 0
        self.since: float | None = None  # monotonic time of the oldest unmerged key
        # A running merge: its slices still to write, each (lowest key, key past the slice or
        # None, the slice's unmerged keys, the LRU counters they get, in key order); the seq
        # up to which the index is complete after it; the highest counter it hands out (a key
        # used again since keeps its newer one); and the LRU counter at and below which its
        # slices evict (None: nothing to).
        self._slices: list[tuple[bytes, bytes | None, list[bytes], list[int]]] = []
        self._merge_seq = 0
        self._merge_used = 0
        self._cutoff: int | None = None
        self._slice_count = 0  # the running merge's slices, written or not
        self._added: dict[bytes, int] = {}  # staged by the batch being written
        self._written = 0  # slices this batch wrote
        self._started = False  # this batch started the merge (its slices hold staged keys)

    def __len__(self) -> int:
        return len(self.keys) + len(self._added)

    def known(self, conn: sqlite3.Connection, keys: list[bytes]) -> set[bytes]:
        """Which of `keys` are known: unmerged, or in the index."""
        known = {key for key in keys if key in self.keys}
        return known | known_keys(conn, [key for key in keys if key not in known])

    def add(self, key: bytes, used: int) -> None:
        self._added[key] = used

    def touch(self, conn: sqlite3.Connection, touched: list[tuple[int, bytes]]) -> None:
        """Mark (used, key) as used just now, wherever the key is."""
        in_index = []
        for used, key in touched:
            if key in self.keys or key in self._added:
                self._added[key] = used
            else:
                in_index.append((used, key))
        touch_keys(conn, in_index)

    def merge_step(
        self,
        conn: sqlite3.Connection,
        last_seq: int,
        indexed: int,
        excess: int,
        *,
        everything: bool = False,
    ) -> tuple[int, int, bool]:
        """Start a merge when enough keys wait (any key, for `everything`), and write its
        next slice (every slice, for `everything`). `last_seq` is the journal's last event,
        `indexed` the index's size, `excess` how far the index and the unmerged keys are
        over the capacity. A slice also evicts the keys of its range that were among the
        `excess` least recently used when the merge started: their pages are being written
        anyway, where evicting them one by one wrote a page of the index per key.

        Returns (keys written, keys evicted, whether this transaction wrote the whole key
        space: a merge of one slice, or the rest of one for `everything`). Only then may the
        caller evict by count what is still over (a page per key otherwise); keys used while
        a merge of many slices runs are evicted by the next merge."""
        if not self._slices and len(self) > (0 if everything else self.merge_at):
            self._start(conn, last_seq, indexed, excess)
        written = evicted = 0
        while self._written < len(self._slices):
            low, high, part, counters = self._slices[-1 - self._written]
            part.sort()  # here, a slice at a time: sorting the whole merge held the GIL ~20 ms
            rows = []
            for key, used in zip(part, counters, strict=True):
                latest = self._added.get(key) or self.keys[key]
                rows.append((key, latest if latest > self._merge_used else used))
            merge_rows(conn, rows)
            written += len(part)
            if self._cutoff is not None:
                evicted += evict_range(conn, low, high, self._cutoff)
            self._written += 1
            if self._written == len(self._slices):
                set_merged_seq(conn, self._merge_seq)
                return written, evicted, everything or self._slice_count == 1
            if not everything:
                break
        return written, evicted, False

    def _start(self, conn: sqlite3.Connection, last_seq: int, indexed: int, excess: int) -> None:
        count = min(MAX_SLICES, max(1, math.ceil((indexed + len(self)) / ENTRIES_PER_SLICE)))
        lows = [b"", *(bytes([256 * i // count]) for i in range(1, count))]
        highs: list[bytes | None] = [*lows[1:], None]
        # Each slice is a range of the key space (of the first byte), so that its rows land
        # on a range of the index's pages. Kept last slice first: a written slice comes off
        # the list's end.
        parts: list[list[bytes]] = [[] for _ in range(count)]
        slice_of = [bisect.bisect_right(lows, bytes([byte])) - 1 for byte in range(256)]
        waiting = self.keys | self._added
        for key in waiting:
            parts[slice_of[key[0]]].append(key)
        # The merge's counters, lowest first, for its keys in key order: slice by slice, and
        # each slice's keys are sorted when it is written.
        counters = sorted(waiting.values())
        self._merge_used = counters[-1]
        self._slices = []
        taken = 0
        for low, high, part in zip(lows, highs, parts, strict=True):
            self._slices.append((low, high, part, counters[taken : taken + len(part)]))
            taken += len(part)
        self._slices.reverse()
        self._slice_count = len(self._slices)
        self._merge_seq = last_seq
        self._cutoff = oldest_used(conn, min(excess, indexed)) if excess > 0 and indexed else None
        self._started = True

    def committed(self) -> None:
        if self._added:
            if self.since is None:
                self.since = time.monotonic()
            self.keys.update(self._added)
            self._added.clear()
        for _ in range(self._written):
            for key in self._slices.pop()[2]:
                self.keys.pop(key, None)
            if not self._slices:
                self.merged_seq = self._merge_seq
                self.since = time.monotonic() if self.keys else None
        self._written = 0
        self._started = False

    def rolled_back(self) -> None:
        if self._started:  # its slices hold keys of events that were not stored
            self._slices = []
        self._added.clear()
        self._written = 0
        self._started = False

    def complete_seq(self) -> int:
        """The seq up to which the index holds every key once this batch commits."""
        return self._merge_seq if self._slices and self._written == len(self._slices) else self.merged_seq

    def idle_merge_due(self) -> bool:
        return self.since is not None and time.monotonic() - self.since > MERGE_AFTER_SECONDS

    def recover(self, conn: sqlite3.Connection, used: int) -> int:
        """Read back the keys of the events past the last merge (after a crash: a clean stop
        merges everything). Returns the LRU counter after them."""
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (MERGED_SEQ,)).fetchone()
        if row is None:
            # A new journal, or one from before unmerged keys, which put every key into the
            # index with its event: nothing to read back.
            last = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
            set_merged_seq(conn, last)
            row = (last,)
        self.merged_seq = int(row[0])
        rows = conn.execute("SELECT source, id FROM events WHERE seq > ? ORDER BY seq", (self.merged_seq,))
        keys = [dedupe_key(source, event_id) for source, event_id in rows]
        indexed = known_keys(conn, keys)
        for key in keys:
            if key not in indexed and key not in self.keys:
                used += 1
                self.keys[key] = used
        if self.keys:
            self.since = time.monotonic()
        return used


def known_keys(conn: sqlite3.Connection, keys: list[bytes]) -> set[bytes]:
    """Which of `keys` the dedupe index holds."""
    unique = list(dict.fromkeys(keys))
    known: set[bytes] = set()
    for start, size in chunks(len(unique), rows_per_statement(conn, 1)):
        sql = "SELECT key FROM dedupe WHERE key IN " + placeholders(size)  # noqa: S608 - marks only
        known.update(row[0] for row in conn.execute(sql, unique[start : start + size]))
    return known


def merge_rows(conn: sqlite3.Connection, rows: list[tuple[bytes, int]]) -> None:
    """(key, used) rows into the index; a key it holds already (merged before a crash, or
    written by `forget`) keeps the later counter."""
    insert_rows(
        conn,
        "INSERT INTO dedupe (key, used) VALUES",
        2,
        rows,
        suffix="ON CONFLICT(key) DO UPDATE SET used = max(used, excluded.used)",
    )


def oldest_used(conn: sqlite3.Connection, count: int) -> int | None:
    """The LRU counter of the `count`-th least recently used key (through the index on it)."""
    row = conn.execute("SELECT used FROM dedupe ORDER BY used LIMIT 1 OFFSET ?", (count - 1,)).fetchone()
    return None if row is None else int(row[0])


def evict_range(conn: sqlite3.Connection, low: bytes, high: bytes | None, cutoff: int) -> int:
    """Delete the keys from `low` up to `high` (None: to the end) used at or before `cutoff`."""
    if high is None:
        sql, params = "DELETE FROM dedupe WHERE key >= ? AND used <= ?", (low, cutoff)
    else:
        sql, params = "DELETE FROM dedupe WHERE key >= ? AND key < ? AND used <= ?", (low, high, cutoff)
    return int(conn.execute(sql, params).rowcount)


def touch_keys(conn: sqlite3.Connection, touched: list[tuple[int, bytes]]) -> None:
    """Mark (used, key) as used just now: a duplicate keeps its key young."""
    if touched:
        conn.executemany("UPDATE dedupe SET used = ? WHERE key = ?", touched)


def set_merged_seq(conn: sqlite3.Connection, seq: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (MERGED_SEQ, str(seq)))


def evict_oldest(conn: sqlite3.Connection, excess: int) -> None:
    conn.execute(
        "DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe ORDER BY used LIMIT ?)",
        (excess,),
    )


def usage(conn: sqlite3.Connection) -> tuple[int, int]:
    """(the highest use counter, the number of entries), for a writer that starts."""
    used = conn.execute("SELECT coalesce(max(used), 0) FROM dedupe").fetchone()[0]
    entries = conn.execute("SELECT count(*) FROM dedupe").fetchone()[0]
    return int(used), int(entries)


def unmerged_count(conn: sqlite3.Connection) -> int:
    """Events past the last merge (read by another process: at most their keys are
    unmerged, some of them may have been merged by a merge still running)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (MERGED_SEQ,)).fetchone()
    return int(
        conn.execute("SELECT count(*) FROM events WHERE seq > ?", (int(row[0]) if row else 0,)).fetchone()[0]
    )


def fill(conn: sqlite3.Connection, rows: Iterable[tuple[bytes, int]]) -> None:
    """Insert (key, used) rows outside the daemon (the benchmark's pre-fill)."""
    conn.executemany("INSERT OR IGNORE INTO dedupe (key, used) VALUES (?, ?)", rows)


def merged_rows(count: int) -> Iterator[tuple[bytes, int]]:
    """`count` random (key, used) rows laid out as merges leave them, for a pre-fill: each
    MERGE_KEYS of them hold a run of counters in key order."""
    for start in range(0, count, MERGE_KEYS):
        keys = sorted(secrets.token_bytes(16) for _ in range(min(MERGE_KEYS, count - start)))
        yield from zip(keys, range(start + 1, start + 1 + len(keys)), strict=True)


def has_key(conn: sqlite3.Connection, key: bytes) -> bool:
    return conn.execute("SELECT 1 FROM dedupe WHERE key = ?", (key,)).fetchone() is not None
