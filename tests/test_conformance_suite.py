"""The conformance suite's own tests: every promise it checks is caught when a sink breaks it.

tests/sink_examples/wahookd_examples.py holds a sink that keeps every promise and sinks that
each break one (the deliberately broken ``example_broken``: not idempotent, not flushing).
They are installed as a plugin distribution would be (a dist-info with a ``wahookd`` entry
point), and the suite runs on all of them in a child pytest, as a plugin's CI runs it; the
outcome and message of every check come back through its JUnit XML.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wahookd.conformance import EVENT_FIELDS, big_event, harness, schema_events, unicode_events
from wahookd.conformance.samples import THREE_MB, first_difference
from wahookd.events import CALL_STATUSES, KINDS, MESSAGE_TYPES, STATUSES, dump_json, load_json
from wahookd.lifecycle import SinkHandle
from wahookd.testing import SinkConformance, TcpProxy, make_event

EXAMPLES = Path(__file__).parent / "sink_examples"
CHECKS = sorted(name for name in dir(SinkConformance) if name.startswith("test_"))
Results = dict[str, dict[str, tuple[str, str]]]  # class -> check -> (outcome, message)


def install_examples(site: Path) -> None:
    """The example sinks as an installed distribution: found through its entry point."""
    site.mkdir(parents=True)
    shutil.copy(EXAMPLES / "wahookd_examples.py", site / "wahookd_examples.py")
    info = site / "wahookd_examples-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wahookd-examples\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wahookd]\nexamples = wahookd_examples\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    root = tmp_path_factory.mktemp("conformance-examples")
    install_examples(root / "site")
    (root / "tests").mkdir()
    shutil.copy(EXAMPLES / "example_conformance.py", root / "tests" / "test_examples.py")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--junitxml",
            str(root / "junit.xml"),
            str(root / "tests" / "test_examples.py"),
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "site")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # some checks fail, as they must
    outcomes: Results = {}
    for case in ET.parse(root / "junit.xml").getroot().iter("testcase"):
        cls = case.attrib["classname"].rsplit(".", 1)[-1]
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = tag
                # A failure's text is the whole sentence (pytrace=False); the attribute is cut.
                text = found.text if tag == "failure" else found.attrib.get("message")
                message = (text or "").strip().removeprefix("Failed: ")
        outcomes.setdefault(cls, {})[case.attrib["name"]] = (outcome, message)
    return outcomes


def failed(results: Results, cls: str) -> dict[str, str]:
    return {check: message for check, (outcome, message) in results[cls].items() if outcome != "passed"}


def test_the_suite_runs_every_check_on_every_example(results: Results) -> None:
    assert len(CHECKS) == 13
    for checks in results.values():
        assert sorted(checks) == CHECKS


def test_a_sink_keeping_every_promise_passes_every_check(results: Results) -> None:
    assert failed(results, "TestGood") == {}


def test_the_broken_example_not_idempotent_not_flushing_fails_the_suite(results: Results) -> None:
    failures = failed(results, "TestBroken")
    assert failures == {
        "test_an_event_delivered_twice_is_stored_once": (
            "the message/text event was delivered and flushed but read_back() does not return it: "
            "deliver() and flush() must store every event they are given."
        ),
        "test_a_kill_before_flush_then_redelivery_loses_and_doubles_nothing": (
            "the message/text event, flushed before the kill, was lost: flush() must write every "
            "delivered event to the target before it returns, because wahookd records the sink's "
            "position right after it."
        ),
        "test_an_unreachable_target_raises_a_retryable_error": (
            "neither deliver() nor flush() failed while the target was broken (break_target()): the "
            "sink acknowledged events the target cannot have stored, so let the target's errors reach "
            "wahookd as DeliveryError."
        ),
        "test_after_an_outage_retried_deliveries_are_stored_once": (
            "neither deliver() nor flush() failed while the target was broken (break_target()): the "
            "sink acknowledged events the target cannot have stored, so let the target's errors reach "
            "wahookd as DeliveryError."
        ),
        "test_a_refused_event_is_dead_lettered": (
            "flush() returned success for events the target refused (refuse_target()): an event the "
            "target did not store must fail, from deliver() with PermanentDeliveryError."
        ),
        "test_a_refused_batch_is_never_acknowledged": (
            "flush() returned success for events the target refused (refuse_target()): an event the "
            "target did not store must fail, from deliver() with PermanentDeliveryError."
        ),
        "test_concurrent_deliveries_store_every_event_once": (
            "with 8 deliveries at once the message/text event was stored 2 times: make the check for "
            "an id and the write of its event one atomic step (an upsert, a conditional insert), or "
            "set a lower concurrency on this test class and tell users to keep it."
        ),
    }
    # What it does keep: the schema, unicode and numbers, size, lifecycle and options checks.
    assert len(results["TestBroken"]) - len(failures) == 6


# (example, the check its broken promise fails, how the one sentence starts)
CAUGHT = [
    (
        "TestNotIdempotent",
        "test_an_event_delivered_twice_is_stored_once",
        "delivering one event twice before a flush stored it 2 times: make deliver() idempotent "
        "by event['id']",
    ),
    (
        "TestNotIdempotent",
        "test_a_kill_before_flush_then_redelivery_loses_and_doubles_nothing",
        "the message/sticker event was stored 2 times after being delivered again past its flush: "
        "make deliver() idempotent by event['id'] in the target itself",
    ),
    (
        "TestNotFlushing",
        "test_a_kill_before_flush_then_redelivery_loses_and_doubles_nothing",
        "the message/text event, flushed before the kill, was lost: flush() must write every "
        "delivered event to the target before it returns",
    ),
    (
        "TestLossyNumbers",
        "test_unicode_and_exact_numbers_read_back_unchanged",
        "the numbers/raw event's raw.payment.big came back as 1.2345678901234568e+29 instead of "
        "123456789012345678901234567890: store events with wahookd.events.dump_json",
    ),
    (
        "TestStripsControls",
        "test_unicode_and_exact_numbers_read_back_unchanged",
        "the unicode/control event's text came back as 'NUL  inside, tab\\tnew\\nline\\nand  "
        "escape' instead of 'NUL \\x00 inside, tab\\tnew\\nline\\r\\nand \\x1b escape': store "
        "text as UTF-8 unchanged",
    ),
    (
        "TestTruncating",
        "test_a_3_mb_event_reads_back_whole",
        "the big/3mb event's raw.blob came back 1048576 characters long instead of",
    ),
    (
        "TestDownIsPermanent",
        "test_an_unreachable_target_raises_a_retryable_error",
        "flush() raised PermanentDeliveryError (cannot write",
    ),
    (
        "TestHangsWhenDown",
        "test_an_unreachable_target_raises_a_retryable_error",
        "flush() did not return within 2 s: give every call to the target a timeout",
    ),
    (
        "TestForgetsFailedBatch",
        "test_after_an_outage_retried_deliveries_are_stored_once",
        "the message/image event is missing although, after the outage, wahookd delivered it again "
        "and flush() then succeeded: a flush() that succeeds must have stored every event",
    ),
    (
        "TestRefusesAtFlush",
        "test_a_refused_event_is_dead_lettered",
        "the target refused a batch of 1 through 3 deliveries of it, failing only in flush() (the "
        "target refuses this batch): raise PermanentDeliveryError from deliver()",
    ),
    (
        "TestIgnoresRefusal",
        "test_a_refused_batch_is_never_acknowledged",
        "flush() returned success for events the target refused (refuse_target()): an event the "
        "target did not store must fail",
    ),
    (
        "TestRestartsItself",
        "test_start_and_close_are_called_once_each",
        "start() ran 4 times in one sink lifetime, in which wahookd calls it once",
    ),
    (
        "TestRacy",
        "test_concurrent_deliveries_store_every_event_once",
        "with 8 deliveries at once the message/text event was stored 2 times: make the check for an "
        "id and the write of its event one atomic step",
    ),
    (
        "TestLaxOptions",
        "test_options_reject_an_unknown_key_naming_it",
        "an unknown option 'no_such_option' was accepted silently: set model_config = "
        'ConfigDict(extra="forbid")',
    ),
    (
        "TestUnnamedErrors",
        "test_invalid_option_values_are_errors_naming_the_key",
        "leaving out the required option 'directory' gave ['sinks.conformance: the directory must be "
        "text'], which does not name it",
    ),
]


@pytest.mark.parametrize(("cls", "check", "says"), CAUGHT, ids=[f"{c}-{k}" for c, k, _ in CAUGHT])
def test_each_broken_promise_is_caught_by_its_check(
    results: Results, cls: str, check: str, says: str
) -> None:
    outcome, message = results[cls][check]
    assert outcome == "failure"
    assert message.startswith(says), message


def test_a_broken_example_passes_the_checks_of_the_promises_it_keeps(results: Results) -> None:
    # A check fails only where the promise is broken: the options examples pass the rest.
    assert set(failed(results, "TestLaxOptions")) == {"test_options_reject_an_unknown_key_naming_it"}
    assert set(failed(results, "TestRestartsItself")) == {"test_start_and_close_are_called_once_each"}
    assert set(failed(results, "TestTruncating")) == {"test_a_3_mb_event_reads_back_whole"}
    assert set(failed(results, "TestRacy")) == {"test_concurrent_deliveries_store_every_event_once"}


def test_every_failure_is_one_sentence_saying_what_to_fix(results: Results) -> None:
    messages = [
        message for cls in results for outcome, message in results[cls].values() if outcome == "failure"
    ]
    assert len(messages) > 30
    for message in messages:
        assert "\n" not in message, message
        assert "Traceback" not in message, message
        assert message.endswith("."), message
        assert not re.search(r"\.\s+[A-Z]", message), message  # one sentence
        assert ": " in message, message  # what happened: what to fix


def test_a_sink_nobody_installed_is_named_with_how_to_install_it(results: Results) -> None:
    for outcome, message in results["TestNotInstalled"].values():
        assert outcome == "failure"
        assert message.startswith("no installed plugin provides a sink named 'example_nobody_installed'")
        assert "pip install -e ." in message


def test_checks_without_their_optional_target_methods_skip_saying_so(tmp_path: Path) -> None:
    class TestNoBreak(SinkConformance):
        plugin = "file"

        def options(self, tmp_path: Path) -> dict[str, Any]:
            return {"path": str(tmp_path / "e.jsonl")}

        def read_back(self) -> list[dict[str, Any]]:
            return []

    with pytest.raises(
        pytest.skip.Exception, match=r"TestNoBreak defines no break_target\(\) and heal_target\(\)"
    ):
        TestNoBreak().test_an_unreachable_target_raises_a_retryable_error(tmp_path)
    with pytest.raises(pytest.skip.Exception, match=r"defines no refuse_target\(\): define it"):
        TestNoBreak().test_a_refused_event_is_dead_lettered(tmp_path)


# -- the suite drives the sink as the daemon does ------------------------------------------


def test_the_suite_drives_the_sink_through_sink_handle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import wahookd_examples  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLES))
    specs = {spec.name: spec for spec in wahookd_examples.wahookd_register_sinks()}
    monkeypatch.setattr(harness, "registry_sinks", lambda: specs)
    calls: list[str] = []
    guarded = SinkHandle._call

    async def recorded(self: SinkHandle, method: str, *args: Any) -> Any:
        calls.append(method)
        return await guarded(self, method, *args)

    monkeypatch.setattr(SinkHandle, "_call", recorded)

    class TestGoodInProcess(SinkConformance):
        plugin = "example_good"

        def options(self, tmp_path: Path) -> dict[str, Any]:
            self.path = tmp_path / "target" / "events.jsonl"
            return {"directory": str(tmp_path / "target")}

        def read_back(self) -> list[dict[str, Any]]:
            return [load_json(line) for line in self.path.read_bytes().splitlines()]

    TestGoodInProcess().test_start_and_close_are_called_once_each(tmp_path)
    assert calls[0] == "start"
    assert calls.count("start") == calls.count("close") == 2  # two sink lifetimes
    assert calls.count("flush") == 4
    assert calls.count("deliver") == 10


# -- the events it delivers -----------------------------------------------------------------


def test_the_schema_events_cover_every_kind_type_status_and_call_status() -> None:
    events = schema_events("t")
    assert {event["kind"] for event in events} == set(KINDS)
    assert {event["type"] for event in events if event["kind"] == "message"} == set(MESSAGE_TYPES)
    assert {event["status"] for event in events if event["kind"] == "status"} == set(STATUSES)
    assert {event["call"]["status"] for event in events if event["kind"] == "call"} == set(CALL_STATUSES)
    for event in [*events, *unicode_events("t")]:
        assert list(event) == list(EVENT_FIELDS)  # every field in every event (SPEC §4)
    assert set(make_event()) == set(EVENT_FIELDS)
    assert len({event["id"] for event in events}) == len(events)


def test_the_big_event_is_3_mb_and_the_numbers_are_exact() -> None:
    assert len(dump_json(big_event("t"))) >= THREE_MB
    [numbers] = [e for e in unicode_events("t") if e["id"].endswith("numbers/raw")]
    text = dump_json(numbers["raw"]).decode()
    assert "123456789012345678901234567890" in text
    assert "1e400" in text
    assert "0.1000000000000000055511151231257827" in text


@pytest.mark.parametrize(
    ("got", "where", "says"),
    [
        ({"a": 1.0, "b": {"c": "x"}}, "a", "came back as 1.0 instead of 1"),
        ({"a": 1, "b": {}}, "b.c", "is missing: store every field"),
        ({"a": 1, "b": {"c": "x", "d": 2}}, "b.d", "is not in the delivered event"),
        ({"a": True, "b": {"c": "x"}}, "a", "came back as True instead of 1"),
        ({"a": 1, "b": {"c": "y"}}, "b.c", "came back as 'y' instead of 'x': store text as UTF-8 unchanged"),
    ],
)
def test_a_difference_is_named_by_its_field_path(got: Any, where: str, says: str) -> None:
    found = first_difference({"a": 1, "b": {"c": "x"}}, got)
    assert found is not None
    assert found[0] == where
    assert found[1].startswith(says)


def test_exact_numbers_compare_by_their_text_and_extra_top_level_keys_are_the_targets() -> None:
    expected = load_json('{"n": 1e400, "m": 123456789012345678901234567890}')
    assert first_difference(expected, load_json('{"n": 1e400, "m": 123456789012345678901234567890}')) is None
    assert first_difference(expected, {"n": float("inf"), "m": 123456789012345678901234567890}) is not None
    assert first_difference({"id": "x"}, {"id": "x", "stored_at": "now"}) is None


# -- TcpProxy -----------------------------------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def talk(port: int, data: bytes) -> bytes | None:
    """Send `data` through a new connection and read it back; None when the connection fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(data)
            return conn.recv(len(data)) or None
    except OSError:
        return None


def test_the_tcp_proxy_relays_cuts_and_restores(echo_server: int) -> None:
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(b"hello")
        assert held.recv(5) == b"hello"
        proxy.cut()
        with contextlib.suppress(ConnectionResetError):  # a FIN or a reset, either way:
            assert held.recv(5) == b""  # the open connection is closed under it
        held.close()
        assert talk(proxy.port, b"x") is None  # and new ones get nowhere
        proxy.restore()
        assert talk(proxy.port, b"back") == b"back"
    assert proxy not in TcpProxy.live
