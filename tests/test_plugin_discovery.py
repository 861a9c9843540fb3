"""Plugins for teams: the installed plugins/ sink is found by its entry point, and the
"write a sink" guide's example works as written."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wahookd.errors import ConfigError, PluginError
from wahookd.plugins import collect, get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"


def guide_blocks(language: str) -> list[str]:
    """Code blocks of the plugin guide (docs/plugins.md)."""
    section = GUIDE.read_text()
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_redis_plugin_is_installed_and_discovered_through_its_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "plugins"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "redis  [wahookd-redis 0.1.0 (entry point)]" in done.stdout
    assert "  sink redis: append events to a Redis stream" in done.stdout
    registry = collect(get_plugin_manager())
    assert registry.sink_owners["redis"] == "redis"


def test_an_installed_plugin_sink_name_clashing_with_a_builtin_is_an_error_naming_both() -> None:
    import wahookd.sinks.file as file_sink

    manager = get_plugin_manager(load_entrypoints=False)

    class Impostor:
        from wahookd.hookspecs import hookimpl

        @hookimpl
        def wahookd_register_sinks(self):  # type: ignore[no-untyped-def]
            return file_sink.wahookd_register_sinks()

    manager.register(Impostor(), name="impostor")
    with pytest.raises(PluginError, match=r"sink .file. is provided by both wahookd.sinks.file and impostor"):
        collect(manager)


@pytest.fixture
def guide_package(tmp_path: Path) -> Path:
    """The guide's plugin module and its test, written out as a plugin author would."""
    module, test = guide_blocks("python")
    package = tmp_path / "wahookd-csv"
    package.mkdir()
    (package / "wahookd_csv.py").write_text(module)
    (package / "test_wahookd_csv.py").write_text(test)
    return package


def test_the_guide_example_test_passes_as_written(guide_package: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:tornasync",
            str(guide_package / "test_wahookd_csv.py"),
            "--rootdir",
            str(guide_package),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=guide_package,
        env={"PYTHONPATH": str(guide_package), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_the_guide_example_registers_and_validates_like_a_builtin(
    guide_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wahookd.delivery import build_sink
    from wahookd.settings import SinkSettings
    from wahookd.testing import make_context

    monkeypatch.syspath_prepend(str(guide_package))
    import wahookd_csv  # type: ignore[import-not-found]

    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(wahookd_csv, name="wahookd_csv")
    registry = collect(manager)
    assert registry.sinks["csv"].description == "append messages to a CSV file"
    with pytest.raises(ConfigError) as caught:
        build_sink(
            "sheet", SinkSettings(plugin="csv", file="x.csv"), registry, make_context(guide_package, "sheet")
        )
    assert "sinks.sheet.file: unknown key" in caught.value.problems
    assert "sinks.sheet.path: field required" in caught.value.problems


def test_the_guide_config_and_entry_point_snippets_match_the_example() -> None:
    toml_blocks = guide_blocks("toml")
    assert any('csv = "wahookd_csv"' in block for block in toml_blocks)
    assert any('plugin = "csv"' in block for block in toml_blocks)


def test_the_daemon_delivers_to_the_installed_redis_plugin(daemon_factory: Any) -> None:
    pytest.importorskip("wahookd.providers.wasender", reason="the wasender provider is not merged yet")
    import json
    import urllib.request
    import uuid

    import redis

    from tests.conftest import wasender_body, wasender_headers

    stream = f"wahookd-test:{uuid.uuid4().hex[:12]}"
    daemon = daemon_factory(
        '[sources.shop]\nprovider = "wasender"\nsecret = "s"\n\n'
        f'[sinks.stream]\nplugin = "redis"\nurl = "redis://127.0.0.1:6379/0"\nstream = "{stream}"\n'
    ).start()
    ids = [f"3EBREDIS{n:02d}" for n in range(3)]
    for message_id in [*ids, ids[0]]:  # the repeat is a provider retry: no new event
        request = urllib.request.Request(
            daemon.url + "/webhooks/shop",
            data=wasender_body(message_id),
            headers=wasender_headers("s"),
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    try:
        deadline = time.monotonic() + 15
        while client.xlen(stream) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.stop() == 0
        entries = [json.loads(fields["event"]) for _, fields in client.xrange(stream)]
        assert [entry["message_id"] for entry in entries] == ids
    finally:
        client.delete(stream, *client.scan_iter(match=f"{stream}:seen:*"))
        client.close()


def test_testing_helpers_build_valid_events_and_a_capture_sink_that_fails_on_demand(
    tmp_path: Path,
) -> None:
    import asyncio

    from wahookd.errors import DeliveryError, PermanentDeliveryError
    from wahookd.events import KINDS, MESSAGE_TYPES, STATUSES
    from wahookd.testing import CAPTURE_SPEC, build_sink, make_event, make_status

    event = make_event(from_="15550009999", text="hi")
    assert event["from"] == "15550009999"
    assert event["kind"] in KINDS
    assert event["type"] in MESSAGE_TYPES
    assert make_event()["id"] != make_event()["id"]
    status = make_status("wamid.X", "read")
    assert status["kind"] == "status"
    assert status["status"] in STATUSES
    assert status["id"] == "test:wamid.X:read"
    with pytest.raises(TypeError, match="colour"):
        make_event(colour="red")

    async def scenario() -> None:
        sink = build_sink(CAPTURE_SPEC, {"fail_times": 2, "retry_after": 3}, state_dir=tmp_path)
        for _ in range(2):
            with pytest.raises(DeliveryError) as caught:
                await sink.deliver(event)
            assert caught.value.retry_after == 3
        await sink.deliver(event)
        assert sink.ids == [event["id"]]  # type: ignore[attr-defined]
        permanent = build_sink(CAPTURE_SPEC, {"fail_times": 1, "permanent": True}, state_dir=tmp_path)
        with pytest.raises(PermanentDeliveryError):
            await permanent.deliver(event)

    asyncio.run(scenario())


@pytest.mark.parametrize("module", ["forward", "sql"])
def test_every_builtin_sink_option_is_documented(module: str) -> None:
    import importlib

    [spec] = importlib.import_module(f"wahookd.sinks.{module}").wahookd_register_sinks()
    text = (ROOT / "docs" / "sinks.md").read_text()
    missing = [
        name
        for name in spec.options.model_fields
        if f"{name} =" not in text and f"# {name}_file =" not in text
    ]
    assert missing == []
    assert all(field.description for field in spec.options.model_fields.values())


def test_a_misspelled_hook_fails_loudly(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "broken_plugin.py").write_text(
        "from wahookd import hookimpl\n\n\n"
        "@hookimpl\ndef wahookd_register_sink():  # the spec is wahookd_register_sinks\n    return []\n"
    )
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wahookd]\nbroken = broken_plugin\n")
    result = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("wahookd: error: plugin 'broken'")
    assert "wahookd_register_sink" in result.stderr
    assert "Traceback" not in result.stderr
