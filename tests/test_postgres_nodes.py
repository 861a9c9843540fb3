"""Three daemon processes on one PostgreSQL database (SPEC §11, issue 14's acceptance): no
state directory, media store or anything else in common but the database.

The helpers and the `pg_url` fixture (a schema per test, dropped afterwards) come from
tests/test_postgres_journal.py.
"""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import wasender_body, wasender_headers
from tests.test_postgres_journal import (
    metric,
    node_config,
    pg_url,  # noqa: F401 # the fixture
    pytestmark,  # noqa: F401 # skipped without PostgreSQL
    sink_ids,
    wait_for,
)

LEASE_SECONDS = 3.0
SINKS = ("db", "crm")


def post_json(base: str, message_id: str) -> tuple[int, dict]:
    """POST one signed webhook; (status, JSON body), status 0 when the node is unreachable."""
    request = urllib.request.Request(
        base + "/webhooks/shop", data=wasender_body(message_id), headers=wasender_headers("s3cret")
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}
    except OSError:
        return 0, {}


def start_nodes(daemon_factory, tmp_path: Path, configs: list[str]):  # type: ignore[no-untyped-def]
    nodes = []
    for index, config in enumerate(configs):
        workdir = tmp_path / f"node{index}"  # a state dir of its own: nothing shared on disk
        workdir.mkdir()
        nodes.append(daemon_factory(config, workdir=workdir))
    threads = [threading.Thread(target=node.start) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node in nodes:
        assert node.proc is not None
        assert node.proc.poll() is None, node.log()
    return nodes


def test_the_same_webhook_posted_to_three_nodes_is_one_event(
    daemon_factory,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    nodes = start_nodes(
        daemon_factory, tmp_path, [node_config(pg_url, tmp_path / f"events{i}.jsonl") for i in range(3)]
    )
    barrier = threading.Barrier(3)
    answers: list[dict] = [{}, {}, {}]

    def send(index: int) -> None:
        barrier.wait()  # all three at once, as a provider's retries racing a slow first answer
        for _ in range(50):
            status, body = post_json(nodes[index].url, "SAME1")
            if status == 200:
                answers[index] = body
                return
            assert status == 503, status  # "cannot tell yet": the provider retries
            time.sleep(0.1)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = sorted((body.get("accepted"), body.get("duplicates")) for body in answers)
    assert outcomes == [(0, 1), (0, 1), (1, 0)], answers
    duplicates = [metric(node.url, 'wahookd_duplicates_total{source="shop"}') for node in nodes]
    assert sum(duplicates) == 2
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    # Each node has a file of its own; only the "archive" lease holder writes one line.
    paths = [tmp_path / f"events{i}.jsonl" for i in range(3)]
    assert wait_for(lambda: sum(len(sink_ids(p)) for p in paths) >= 1, 10)
    time.sleep(0.5)
    assert sorted(len(sink_ids(p)) for p in paths) == [0, 0, 1]


class Receiver:
    """The `forward` sink's target: a threaded HTTP server on loopback keeping every event id."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        lock = threading.Lock()
        ids = self.ids

        class Hook(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    ids.append(json.loads(body)["id"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def loaded_config(url: str, sink_path: Path, forward_url: str) -> str:
    return (
        node_config(url, sink_path, LEASE_SECONDS)
        + f"""
        [sinks.db]
        plugin = "sql"
        url = "{url}"
        table_prefix = "sink_"

        [sinks.crm]
        plugin = "forward"
        url = "{forward_url}"
        secret = "forward-secret"
        """
    )


def lease_holders(nodes) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """sink -> the indexes of the live nodes whose wahookd_lease_held{sink} is 1."""
    held: dict[str, list[int]] = {sink: [] for sink in SINKS}
    for index, node in enumerate(nodes):
        if node.proc.poll() is not None:
            continue
        for sink in SINKS:
            try:
                if metric(node.url, f'wahookd_lease_held{{sink="{sink}"}}') == 1:
                    held[sink].append(index)
            except OSError:
                pass
    return held


def test_sigkill_of_one_node_under_load_loses_nothing_and_its_leases_move(
    daemon_factory,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
    receiver: Receiver,
) -> None:
    sink_paths = [tmp_path / f"events{i}.jsonl" for i in range(3)]
    nodes = start_nodes(
        daemon_factory, tmp_path, [loaded_config(pg_url, p, receiver.url) for p in sink_paths]
    )
    assert wait_for(lambda: all(len(h) == 1 for h in lease_holders(nodes).values()), 10)
    before = lease_holders(nodes)
    victim = before["db"][0]  # the node delivering the sql sink dies
    moved = [sink for sink in SINKS if before[sink] == [victim]]

    total, threads_count = 300, 4
    message_ids = [f"LOAD{i:04d}" for i in range(total)]
    acked: set[str] = set()
    lock = threading.Lock()
    sent = itertools.count()
    killed = threading.Event()

    def load(worker: int) -> None:
        for position in range(worker, total, threads_count):
            message_id = message_ids[position]
            if next(sent) == total // 3 and not killed.is_set():
                killed.set()
            node = position % 3
            for attempt in range(30):  # a provider retries an unanswered webhook elsewhere
                status, _ = post_json(nodes[(node + attempt) % 3].url, message_id)
                if status == 200:
                    with lock:
                        acked.add(message_id)
                    break
                time.sleep(0.05)

    workers = [threading.Thread(target=load, args=(w,)) for w in range(threads_count)]
    for worker in workers:
        worker.start()
    assert killed.wait(20)
    nodes[victim].kill()  # SIGKILL mid-load: no goodbye, its leases have to expire
    killed_at = time.monotonic()
    survivors = [i for i in range(3) if i != victim]

    def leases_moved() -> bool:
        held = lease_holders(nodes)
        return all(len(held[sink]) == 1 and held[sink][0] in survivors for sink in moved)

    assert wait_for(leases_moved, LEASE_SECONDS + 5)
    took = time.monotonic() - killed_at
    # A lease expires lease_seconds after its last renewal; a survivor tries every third of it.
    assert took < LEASE_SECONDS + LEASE_SECONDS / 3 + 0.5, took
    for worker in workers:
        worker.join(30)
    assert len(acked) == total  # every webhook got its 200 from some node

    wanted = set(acked)

    def suffixes(ids: list[str]) -> set[str]:
        return {i.split(":", 1)[-1] for i in ids}

    def sql_ids() -> list[str]:
        with psycopg.connect(pg_url) as conn:
            return [row[0] for row in conn.execute("SELECT id FROM sink_events")]

    assert wait_for(lambda: suffixes(receiver.ids) >= wanted, 15), len(wanted - suffixes(receiver.ids))
    assert wait_for(lambda: suffixes(sql_ids()) >= wanted, 15)
    time.sleep(0.5)
    assert suffixes(receiver.ids) == wanted  # once in effect: the distinct ids are the acked ones
    rows = sql_ids()
    assert len(rows) == len(set(rows)) == total
    assert suffixes(rows) == wanted
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (total,)
    for index in survivors:
        assert nodes[index].stop() == 0, nodes[index].log()
