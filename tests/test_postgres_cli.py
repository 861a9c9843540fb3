"""The CLI beside a daemon on `state.backend = "postgres"`: trace, pause/resume, status,
replay, fsck and forget read and change the shared database, as on sqlite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProcess, free_port
from tests.test_postgres_journal import node_config, pg_url, post, pytestmark, sink_ids, wait_for

__all__ = ["pg_url", "pytestmark"]  # fixtures and marks this module uses


def cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_works_on_the_postgres_backend(daemon_factory: Any, tmp_path: Path, pg_url: str) -> None:
    sink_path = tmp_path / "events.jsonl"
    failing = f'\n[sinks.crm]\nplugin = "forward"\nurl = "http://127.0.0.1:{free_port()}/"\nsecret = "x"\n'
    daemon: DaemonProcess = daemon_factory(node_config(pg_url, sink_path) + failing).start()
    assert post(daemon.url, "PGCLI1") == 200
    assert wait_for(lambda: sink_ids(sink_path) == ["shop:PGCLI1"], 15)
    assert wait_for(lambda: "sink_delivery_failed" in daemon.log(), 10)

    traced = cli(daemon, "trace", "shop:PGCLI1", "--json")
    assert traced.returncode == 0, traced.stderr
    sinks = json.loads(traced.stdout)["events"][0]["sinks"]
    assert sinks["archive"]["status"] == "delivered"
    assert sinks["crm"]["status"] in ("retrying", "pending")

    assert cli(daemon, "pause", "crm").returncode == 0
    status = json.loads(cli(daemon, "status", "--json").stdout)
    assert [sink["paused"] for sink in status["sinks"] if sink["name"] == "crm"] == [True]
    assert cli(daemon, "resume", "crm").returncode == 0

    replayed = cli(daemon, "replay", "--sink", "archive")
    assert replayed.returncode == 0, replayed.stderr
    checked = cli(daemon, "fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    forgotten = cli(daemon, "forget", "1234567890")
    assert forgotten.returncode == 0, forgotten.stderr
    assert cli(daemon, "trace", "shop:PGCLI1").returncode == 1  # erased
    assert post(daemon.url, "PGCLI1") == 200  # a provider retry is still a duplicate
    assert wait_for(lambda: "privacy.forget" in sink_path.read_text(), 15)
    assert sink_path.read_text().count('"shop:PGCLI1"') == 1
    assert daemon.stop() == 0


def test_reload_finds_a_postgres_node_and_a_second_daemon_on_its_state_dir_is_refused(
    daemon_factory: Any, tmp_path: Path, pg_url: str
) -> None:
    """`systemctl reload` (`wahookd reload`) finds the daemon by its state directory's lock,
    which every backend takes: on PostgreSQL it once answered "no daemon is running"."""
    config = node_config(pg_url, tmp_path / "events.jsonl")
    daemon: DaemonProcess = daemon_factory(config).start()
    reloaded = cli(daemon, "reload")
    assert (reloaded.returncode, reloaded.stdout) == (0, "reloaded\n"), reloaded.stderr
    assert post(daemon.url, "PGRELOAD1") == 200

    second = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "serve", "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert "is used by pid" in second.stderr
    assert daemon.stop() == 0
