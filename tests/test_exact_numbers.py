"""Issue 10, defect 8: numbers reach every sink exactly as the provider sent them.

A float holds neither 1e400 nor 0.1000000000000000055511151231257827, and orjson reads an
integer beyond 64 bits as a float; `raw` must still carry each number's own text, and every
line a sink writes must be JSON (no `Infinity`, no `NaN`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from tests.conftest import meta_headers
from wahookd.errors import ParseError
from wahookd.events import ExactFloat, dump_json, load_json
from wahookd.providers import payload
from wahookd.sinks.sqlstore import define_tables

# What the provider sent, as text: beyond 64 bits, beyond a double either way, and more
# digits than a double keeps (the double nearest 0.1 is 0.1000000000000000055511151231257827...).
NUMBERS = {
    "big": "123456789012345678901234567890",
    "huge": "1e400",
    "negative": "-1e400",
    "precise": "0.1000000000000000055511151231257827",
}
AMOUNTS = "{" + ",".join(f'"{name}":{number}' for name, number in NUMBERS.items()) + "}"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"exact-numbers-standard-key").decode()
META_SECRET = "exact-numbers-meta-secret"
FORWARD_SECRET = "whsec_" + base64.b64encode(b"exact-numbers-forward-key").decode()


class NumberText(str):
    """A number as it stands in the JSON text."""


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(data: str | bytes) -> Any:
    """Parse as a strict JSON reader would, keeping each number's text."""
    return json.loads(data, parse_constant=reject_constant, parse_int=NumberText, parse_float=NumberText)


def as_decimals(data: str | bytes) -> Any:
    """Strict JSON with every number as its exact decimal value."""
    return json.loads(data, parse_float=Decimal, parse_int=Decimal, parse_constant=reject_constant)


# -- the codec -------------------------------------------------------------------------


def test_numbers_no_float_holds_are_read_and_written_back_verbatim() -> None:
    document = f'{{"amounts":{AMOUNTS},"plain":[1,-2.5,1.5e3,18446744073709551615]}}'
    value = load_json(document)
    assert strict_loads(dump_json(value))["amounts"] == NUMBERS
    assert value["amounts"]["big"] == int(NUMBERS["big"])
    assert isinstance(value["amounts"]["huge"], ExactFloat)
    assert value["amounts"]["huge"] == float("inf")  # a normalizer sees the nearest float
    assert value["amounts"]["negative"] == float("-inf")
    assert value["amounts"]["precise"] == 0.1
    assert value["plain"] == [1, -2.5, 1500.0, 2**64 - 1]
    assert [type(number) for number in value["plain"]] == [int, float, float, int]


@pytest.mark.parametrize(
    ("number", "exact"),
    [
        ("0.1", True),
        ("1.50", True),  # 1.5 is the same number
        ("1E2", True),
        ("-0.0", True),
        ("2.5e-5", True),
        ("0.10000000000000001", False),  # reads as 0.1, another number
        ("1e-400", False),  # underflows to 0.0
        ("5e-324", True),  # the smallest subnormal writes back as itself
        ("1.7976931348623159e308", False),  # rounds to inf
    ],
)
def test_a_float_is_kept_as_its_text_exactly_when_writing_the_float_back_would_change_it(
    number: str, exact: bool
) -> None:
    value = load_json(f"[{number}]")[0]
    assert isinstance(value, ExactFloat) is not exact
    written = strict_loads(dump_json(value))
    assert written == number if not exact else float(written) == float(number)


@pytest.mark.parametrize(
    "document",
    [
        '{"chat":"120363025246125486@g.us","lat":-23.5505,"lng":-46.6333}',  # a group id: text
        '{"price":0.0,"note":"e-mail me"}',  # a zero next to "e-": read again, still 0.0
        '{"id":"1234567890123456","tiny":1e-400}',
        "[0.0, 1E-400, 5e-324]",
        "[18446744073709551615, -9223372036854775808, -9223372036854775809, 18446744073709551616]",
        '[1.5, "x", 12345678901234567890123]',
        '{"a": [ 1234567890123456, 0.10000000000000001 ]}',
        '{"s":"1234567890123456","f":0.1}',
        '{"deep":[[[[[[[[[[0.1000000000000000055511151231257827]]]]]]]]]]}',
        "1e400",
        "0.30000000000000004",
    ],
)
def test_every_number_is_written_back_as_the_same_number(document: str) -> None:
    expected = json.loads(document, parse_float=Decimal, parse_int=Decimal)
    for data in (document, document.encode()):
        assert as_decimals(dump_json(load_json(data))) == expected
    assert as_decimals(dump_json(payload.load_json(document.encode()))) == expected


def test_random_numbers_are_written_back_as_the_same_numbers() -> None:
    rng = random.Random(10)
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 24))).lstrip("0") or "0"
        number = rng.choice(["", "-"]) + digits
        if rng.random() < 0.6:
            point = rng.randint(1, len(number.lstrip("-")))
            number = number[: len(number) - point] + "." + number[len(number) - point :]
            number = number.replace("-.", "-0.").lstrip(".") or "0"
            if number.startswith("."):
                number = "0" + number
        if rng.random() < 0.5:
            number += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 420))
        neighbour = rng.choice(['"120363025246125486@g.us"', '"e-mail"', "0.5", "7", "0.0"])
        document = f'{{"n":{number},"m":{neighbour}}}'
        expected = json.loads(document, parse_float=Decimal, parse_int=Decimal)
        assert as_decimals(dump_json(load_json(document))) == expected, document


def test_ints_beyond_64_bits_are_exact_next_to_lone_surrogates_and_other_types() -> None:
    value = {"n": 2**64, "m": -(2**63) - 1, "s": "\ud800", "f": ExactFloat("1e400"), 7: {1, 2}}
    out = strict_loads(dump_json(value))
    assert out == {"n": str(2**64), "m": str(-(2**63) - 1), "s": "\ud800", "f": "1e400", "7": "{1, 2}"}
    assert strict_loads(dump_json({"\udfff": 2**70})) == {"\udfff": str(2**70)}


def test_exact_floats_survive_a_copy() -> None:
    import copy
    import pickle

    number = ExactFloat("1e400")
    for clone in (copy.deepcopy(number), pickle.loads(pickle.dumps(number))):
        assert isinstance(clone, ExactFloat)
        assert clone.text == "1e400"


def test_the_strict_intake_parser_keeps_numbers_and_still_refuses_what_it_refused() -> None:
    body = f'{{"data":{AMOUNTS},"ok":"\\ud83d\\ude00"}}'.encode()
    data = payload.load_json(body)
    assert strict_loads(dump_json(data))["data"] == NUMBERS
    assert data["ok"] == "😀"
    for bad, reason in [
        (b'{"a":NaN}', "constant NaN"),
        (b'{"a":Infinity}', "constant Infinity"),
        (b'{"a":-Infinity,"b":1.5}', "constant -Infinity"),
        (b'{"a":"\\ud800"}', "lone surrogate"),
        (b'{"a":"\\ud800","b":0.5}', "lone surrogate"),
        (b'{"a":"\xff"}', "invalid JSON"),
        (b'{"a":1,}', "invalid JSON"),
        (b"[" * 101 + b"]" * 101, "nested deeper"),
        (b"[" * 2000 + b"]" * 2000, "invalid JSON|nested deeper"),
    ]:
        with pytest.raises(ParseError, match=reason):
            payload.load_json(bad)


# -- through the daemon: journal, file, forward, sql, replay -----------------------------


class Capture:
    """A forward target that keeps every body it is sent and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with capture.lock:
                    capture.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def received(self) -> list[bytes]:
        with self.lock:
            return list(self.bodies)


@pytest.fixture
def capture() -> Iterator[Capture]:
    target = Capture()
    yield target
    target.server.shutdown()
    target.server.server_close()


@pytest.fixture
def pg_prefix() -> Iterator[str]:
    prefix = f"n{uuid.uuid4().hex[:8]}_"
    yield prefix
    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    define_tables(prefix)[0].drop_all(engine)
    engine.dispose()


def standard_request(body: bytes) -> dict[str, str]:
    """Standard Webhooks headers, signed here independently of the provider's code."""
    msg_id = "msg_" + uuid.uuid4().hex
    stamp = str(int(time.time()))
    key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def standard_body() -> bytes:
    return (
        '{"type":"message.received","timestamp":1749416383,"data":{"id":"msg-numbers",'
        f'"from":"15550001111","type":"text","text":"the totals","amounts":{AMOUNTS}}}}}'
    ).encode()


def meta_body() -> bytes:
    message = (
        '{"from":"16505551234","id":"wamid.NUMBERS","timestamp":"1749416383","type":"text",'
        f'"text":{{"body":"the totals"}},"amounts":{AMOUNTS}}}'
    )
    return (
        '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":'
        '[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":'
        '{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},'
        f'"messages":[{message}]}}}}]}}]}}'
    ).encode()


def post(url: str, body: bytes, headers: dict[str, str]) -> None:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["accepted"] == 1


def amounts_of(event: dict[str, Any]) -> Any:
    raw = event["raw"]
    return raw["data"]["amounts"] if event["provider"] == "standard" else raw["amounts"]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_big_and_non_finite_numbers_reach_file_forward_and_sql_byte_exact(
    daemon_factory: Any, capture: Capture, pg_prefix: str, tmp_path: Path
) -> None:
    archive, db = tmp_path / "events.jsonl", tmp_path / "sink.db"
    daemon = daemon_factory(
        f"""
        [sources.std]
        provider = "standard"
        secret = "{STANDARD_SECRET}"

        [sources.fb]
        provider = "meta"
        secret = "{META_SECRET}"

        [sinks.archive]
        plugin = "file"
        path = "{archive}"

        [sinks.crm]
        plugin = "forward"
        url = "{capture.url}"
        secret = "{FORWARD_SECRET}"

        [sinks.db]
        plugin = "sql"
        url = "sqlite:///{db}"

        [sinks.pg]
        plugin = "sql"
        url = "{POSTGRES_URL}"
        table_prefix = "{pg_prefix}"
        """
    ).start()
    body = standard_body()
    post(daemon.url + "/webhooks/std", body, standard_request(body))
    body = meta_body()
    post(daemon.url + "/webhooks/fb", body, meta_headers(META_SECRET, body))

    def lines() -> list[str]:
        return archive.read_text().splitlines() if archive.exists() else []

    pg = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))

    local = create_engine(f"sqlite:///{db}")

    def sql_raws() -> list[list[str]]:
        found = []
        for engine, table in ((local, "events"), (pg, f"{pg_prefix}events")):
            try:
                with engine.connect() as conn:
                    query = f"SELECT raw FROM {table} ORDER BY provider"
                    found.append([row[0] for row in conn.execute(text(query))])
            except SQLAlchemyError:  # the sink has not made its tables yet
                found.append([])
        return found

    try:
        wait_until(lambda: len(lines()) == 2 and len(capture.received()) == 2, "file and forward")
        wait_until(lambda: all(len(raws) == 2 for raws in sql_raws()), "both sql sinks")
        for line in [*lines(), *capture.received()]:
            event = strict_loads(line)  # valid JSON: no Infinity, no NaN
            assert amounts_of(event) == NUMBERS, event["provider"]
            assert event["text"] == "the totals"  # normalizing went on as usual
        for raws in sql_raws():
            meta, standard = (strict_loads(raw) for raw in raws)  # ordered by provider
            assert meta["amounts"] == NUMBERS  # Meta's raw is the message
            assert standard["data"]["amounts"] == NUMBERS  # Standard's is the whole body
    finally:
        local.dispose()
        pg.dispose()
    assert daemon.stop() == 0

    # `wahookd replay` reads the journal back and sends the same bytes again.
    replay = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "replay", "--config", str(daemon.config_path), "--sink", "crm"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    again = capture.received()[2:]
    assert len(again) == 2
    assert sorted(again) == sorted(capture.received()[:2])
    assert all(amounts_of(strict_loads(body)) == NUMBERS for body in again)
