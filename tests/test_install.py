"""systemd/install.sh run into a scratch root, as CI can: the files it lays out and their modes,
the installed venv's daemon really serving, `systemd-analyze verify` on the installed unit,
and `systemd-analyze security` on the shipped one (SPEC §10: 2.0 or lower)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wasender_body, wasender_headers

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "wahookd.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
IS_ROOT = os.geteuid() == 0

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or shutil.which("systemd-sysusers") is None,
    reason="systemd-analyze/systemd-sysusers absent (apt-get install systemd; .ci/run does)",
)


def debian_python() -> str:
    """The interpreter a plain Debian server has, when it is new enough; else this one."""
    system = Path("/usr/bin/python3")
    if system.exists():
        check = subprocess.run(
            [system, "-c", "import sys, ensurepip; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
        )
        if check.returncode == 0:
            return str(system)
    return sys.executable


def run_install(root: Path, fake_bin: Path) -> subprocess.CompletedProcess[str]:
    # A systemctl that records being called: under --root the script must never call it.
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    return subprocess.run(
        ["sh", str(INSTALL), "--root", str(root), "--python", debian_python(), "plugins/wahookd-redis"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("bin")
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {bin_dir}/systemctl.calls\nexit 1\n')
    systemctl.chmod(0o755)
    return bin_dir


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, fake_bin: Path) -> tuple[Path, str]:
    """One install for the module (a venv and a pip install take ~15 s)."""
    root = tmp_path_factory.mktemp("root")
    done = run_install(root, fake_bin)
    assert done.returncode == 0, done.stdout + done.stderr
    return root, done.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def group_id(root: Path, name: str) -> int:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no group {name} in {root}/etc/group")


def unit_settings(text: str) -> dict[str, list[str]]:
    """A unit file's `Key=value` lines by key (keys may repeat, as SystemCallFilter= does)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_install_lays_out_the_venv_unit_user_config_and_credentials(
    installed: tuple[Path, str], fake_bin: Path
) -> None:
    root, output = installed
    wahookd = root / "opt" / "wahookd" / "bin" / "wahookd"
    assert os.access(wahookd, os.X_OK)
    unit = root / "etc" / "systemd" / "system" / "wahookd.service"
    assert mode(unit) == 0o644
    assert unit.read_text() == UNIT.read_text()  # the default prefix: the shipped unit as is
    dropin = unit.parent / "wahookd.service.d" / "credentials.conf"
    assert "LoadCredential=" in dropin.read_text()
    assert mode(dropin) == 0o644

    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^wahookd:x:\d+:\d+:[^:]*:/var/lib/wahookd:/usr/sbin/nologin$", passwd, re.M)
    assert (root / "etc" / "sysusers.d" / "wahookd.conf").exists()

    config = root / "etc" / "wahookd" / "wahookd.toml"
    assert config.read_text() == (REPO / "etc" / "wahookd.toml").read_text()
    assert mode(config) == 0o640
    credentials = root / "etc" / "wahookd" / "credentials"
    assert mode(credentials) == 0o700
    if IS_ROOT:  # the service user reads the config through its group; only root the secrets
        assert config.stat().st_uid == 0
        assert config.stat().st_gid == group_id(root, "wahookd")
        assert credentials.stat().st_uid == 0

    docs = root / "opt" / "wahookd" / "share" / "doc" / "wahookd"
    assert (docs / "install.md").exists()
    assert (docs / "wahookd.toml").exists()

    assert "systemctl daemon-reload" in output
    assert "systemctl enable --now wahookd" in output
    assert not (fake_bin / "systemctl.calls").exists(), "install.sh called systemctl under --root"


def test_the_installed_daemon_checks_its_config_and_serves_a_webhook(
    installed: tuple[Path, str], tmp_path: Path
) -> None:
    root, _ = installed
    wahookd = root / "opt" / "wahookd" / "bin" / "wahookd"
    installed_config = root / "etc" / "wahookd" / "wahookd.toml"
    # As systemd runs it: the secret from $CREDENTIALS_DIRECTORY (LoadCredential=).
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "wasender-secret").write_text("install-test-secret")
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("WAHOOKD_")},
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    version = subprocess.run([wahookd, "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("wahookd "), version.stdout
    # check-config only reads: the installed config as is, /var/lib/wahookd and all.
    checked = subprocess.run(
        [wahookd, "check-config", "--config", installed_config], capture_output=True, text=True, env=env
    )
    assert checked.returncode == 0, checked.stderr
    plugins = subprocess.run([wahookd, "plugins"], capture_output=True, text=True, env=env)
    assert "redis" in plugins.stdout, plugins  # the plugin path given to install.sh

    # Serving writes: the same config with its state directory moved off the real one.
    state = tmp_path / "state"
    config = tmp_path / "wahookd.toml"
    config.write_text(installed_config.read_text().replace("/var/lib/wahookd", str(state)))
    events = state / "events.jsonl"
    port = free_port()
    env["WAHOOKD_SERVER__LISTEN"] = f"127.0.0.1:{port}"
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [wahookd, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
    )
    try:
        wait_healthy(port, daemon, tmp_path / "daemon.log")
        body = wasender_body("INSTALLED-1")
        assert post(port, "/webhooks/shop", body, wasender_headers("install-test-secret")) == 200
        assert post(port, "/webhooks/shop", body, wasender_headers("forged")) == 401
        lines = wait_for_lines(events, 1)
        assert [line["message_id"] for line in lines] == ["INSTALLED-1"]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def test_the_installed_unit_passes_systemd_analyze_verify(installed: tuple[Path, str]) -> None:
    root, _ = installed
    # verify --root resolves units and Exec paths inside the root; a scratch root has no base
    # system, so give it what a Debian root has: the stock units (sysinit.target, ...) and kill.
    stock = root / "usr" / "lib" / "systemd" / "system"
    if not stock.exists():
        shutil.copytree("/usr/lib/systemd/system", stock, symlinks=True)
    kill = root / "bin" / "kill"
    kill.parent.mkdir(exist_ok=True)
    if not kill.exists():
        shutil.copy2(shutil.which("kill") or "/bin/kill", kill)

    verified = verify(root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "wahookd" not in verified.stdout + verified.stderr  # nothing to say about our unit

    # It really looked inside the root: without the venv's wahookd the unit does not verify.
    wahookd = root / "opt" / "wahookd" / "bin" / "wahookd"
    hidden = wahookd.with_name("wahookd.hidden")
    wahookd.rename(hidden)
    try:
        broken = verify(root)
    finally:
        hidden.rename(wahookd)
    assert broken.returncode != 0
    assert "/opt/wahookd/bin/wahookd is not executable" in broken.stderr


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--man=no", "wahookd.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_shipped_unit_rates_2_0_or_lower_in_systemd_analyze_security() -> None:
    assert SYSTEMD_ANALYZE is not None
    rated = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for wahookd\.service: (\d+\.\d+)", rated.stdout)
    assert found, rated.stdout + rated.stderr
    assert float(found.group(1)) <= 2.0, rated.stdout


def test_the_unit_runs_the_venv_as_a_notify_service_with_reload_watchdog_and_state() -> None:
    settings = unit_settings(UNIT.read_text())
    config = "--config /etc/wahookd/wahookd.toml"
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["ExecStart"] == [f"/opt/wahookd/bin/wahookd serve {config}"]
    assert settings["ExecStartPre"] == [f"/opt/wahookd/bin/wahookd check-config {config}"]
    assert settings["ExecReload"] == [f"/opt/wahookd/bin/wahookd reload {config}"]
    assert settings["WatchdogSec"] == ["30"]
    assert settings["StateDirectory"] == ["wahookd"]
    assert settings["StateDirectoryMode"] == ["0700"]
    assert settings["User"] == ["wahookd"]
    assert settings["MemoryDenyWriteExecute"] == ["yes"]
    # sd_notify and PostgreSQL's socket need AF_UNIX.
    assert set(settings["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_rerunning_the_install_upgrades_and_keeps_config_and_credentials(
    installed: tuple[Path, str], fake_bin: Path
) -> None:
    # Last in this module: it edits the shared install the tests above looked at.
    root, _ = installed
    config = root / "etc" / "wahookd" / "wahookd.toml"
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    secret = root / "etc" / "wahookd" / "credentials" / "wasender-secret"
    secret.write_text("kept")
    dropin = root / "etc" / "systemd" / "system" / "wahookd.service.d" / "credentials.conf"
    dropin.write_text("[Service]\nLoadCredential=wasender-secret:/etc/wahookd/credentials/wasender-secret\n")
    unit = root / "etc" / "systemd" / "system" / "wahookd.service"
    unit.write_text("stale")

    again = run_install(root, fake_bin)
    assert again.returncode == 0, again.stdout + again.stderr
    assert config.read_text().endswith("# edited by the operator\n")
    assert "kept " + str(config) in again.stdout
    assert secret.read_text() == "kept"
    assert dropin.read_text().startswith("[Service]\nLoadCredential=wasender-secret:")
    assert unit.read_text() == UNIT.read_text()


def wait_healthy(port: int, daemon: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"daemon did not become healthy:\n{log.read_text()}")


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def wait_for_lines(path: Path, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} lines in {path}")
