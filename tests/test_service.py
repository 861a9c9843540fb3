"""wahookd as a service: one daemon per state directory, private state, SIGHUP reload,
systemd notifications and watchdog, TLS, and logs a sysadmin can filter. Every test drives
the daemon as a real process, as systemd or an operator would."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, free_port, wasender_body, wasender_headers
from tests.test_daemon_process import get, post, sink_config, wait_for_lines

SECRET = "s3cret"
SOURCES = f"""
[ratelimit]
rate = 100000
burst = 100000

[sources.shop]
provider = "wasender"
secret = "{SECRET}"
"""


def metric_value(port: int, name: str, labels: str = "") -> float:
    status, body = get(port, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# -- one daemon per state directory; private state -----------------------------------------


def test_a_second_daemon_on_the_same_state_dir_refuses_naming_the_first(
    daemon_factory: Any, tmp_path: Path
) -> None:
    first: DaemonProcess = daemon_factory(SOURCES).start()
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    config = first.config_path.read_text().replace(str(first.port), str(free_port()))
    (second_dir / "wahookd.toml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "serve", "--config", str(second_dir / "wahookd.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert first.proc is not None
    assert f"is used by pid {first.proc.pid}" in result.stderr
    assert result.stderr.startswith("wahookd: error: state directory ")
    assert "Traceback" not in result.stderr
    # Commands that only read keep working while the daemon runs.
    status = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "status", "--json", "--config", str(first.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    assert first.stop() == 0
    # The lock dies with its holder, SIGKILL included: a restart is never blocked.
    restarted: DaemonProcess = daemon_factory(SOURCES).start()  # same tmp_path/state
    restarted.kill()
    assert daemon_factory(SOURCES).start().stop() == 0


def test_state_files_are_for_the_service_user_only(daemon_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "state" / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(SOURCES + sink_config(out)).start()
    assert post(daemon.port, "/webhooks/shop", wasender_body("PRIV1"), wasender_headers(SECRET))[0] == 200
    # verified but unparseable: kept in rejected/
    assert post(daemon.port, "/webhooks/shop", b"[1, 2", wasender_headers(SECRET))[0] == 400
    assert wait_for_lines(out, 1)
    assert daemon.stop() == 0
    state = daemon.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    found = list(state.rglob("*"))
    assert any(path.name.endswith(".jsonl") for path in found)
    assert any("rejected" in path.parts for path in found if path.is_file())
    for path in found:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
        else:
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


# -- SIGHUP reload ---------------------------------------------------------------------------


def test_sighup_applies_a_new_source_and_secret_and_reports_restart_keys(
    daemon_factory: Any, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(SOURCES + sink_config(out)).start()
    assert post(daemon.port, "/webhooks/new", wasender_body("R1"), wasender_headers("n3w"))[0] == 404
    text = daemon.config_path.read_text()
    text = text.replace("drain_seconds = 10", 'drain_seconds = 10\nlog_level = "debug"')
    text = text.replace(f'listen = "127.0.0.1:{daemon.port}"', f'listen = "127.0.0.1:{free_port()}"')
    text += '\n[sources.new]\nprovider = "wasender"\nsecret = "n3w"\n'
    text = text.replace(f'secret = "{SECRET}"', 'secret = "rotated"')
    daemon.config_path.write_text(text)
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: metric_value(daemon.port, "wahookd_reloads_total", '{outcome="ok"}') == 1)
    assert post(daemon.port, "/webhooks/new", wasender_body("R2"), wasender_headers("n3w"))[0] == 200
    assert post(daemon.port, "/webhooks/shop", wasender_body("R3"), wasender_headers("rotated"))[0] == 200
    assert post(daemon.port, "/webhooks/shop", wasender_body("R4"), wasender_headers(SECRET))[0] == 401
    # listen needs a restart: reported, and the old address keeps serving.
    assert wait_until(lambda: '"reloaded"' in daemon.log())
    reloaded = [json.loads(line) for line in daemon.log().splitlines() if '"reloaded"' in line]
    assert reloaded[-1]["restart_required"] == ["server.listen"]
    assert get(daemon.port, "/healthz")[0] == 200
    assert daemon.stop() == 0


def test_an_invalid_reload_changes_nothing_and_counts_an_error(daemon_factory: Any, tmp_path: Path) -> None:
    daemon: DaemonProcess = daemon_factory(SOURCES).start()
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace(f'secret = "{SECRET}"', 'secret = " "')
    )
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: metric_value(daemon.port, "wahookd_reloads_total", '{outcome="error"}') == 1)
    assert post(daemon.port, "/webhooks/shop", wasender_body("I1"), wasender_headers(SECRET))[0] == 200
    failures = [json.loads(line) for line in daemon.log().splitlines() if '"reload_failed"' in line]
    assert failures[-1]["problems"] == [
        "sources.shop.secret: must not be empty: an empty secret signs nothing, anyone could forge it"
    ]
    assert failures[-1]["level"] == "error"
    daemon.config_path.write_text("this is [not toml")
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: metric_value(daemon.port, "wahookd_reloads_total", '{outcome="error"}') == 2)
    assert post(daemon.port, "/webhooks/shop", wasender_body("I2"), wasender_headers(SECRET))[0] == 200
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


def test_twenty_reloads_under_load_fail_no_request(daemon_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(SOURCES + sink_config(out)).start()
    statuses: list[int] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        n = 0
        while not stop.is_set():
            conn.request("POST", "/webhooks/shop", wasender_body(f"L{worker}-{n}"), wasender_headers(SECRET))
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
            n += 1
        conn.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(20):
            time.sleep(0.1)
            # Alternate the rate limit so that every reload really changes something.
            text = daemon.config_path.read_text()
            text = re.sub(r"rate = \d+", f"rate = {100000 + n}", text, count=1)
            daemon.config_path.write_text(text)
            daemon.signal(signal.SIGHUP)
        assert wait_until(lambda: metric_value(daemon.port, "wahookd_reloads_total", '{outcome="ok"}') >= 1)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    reloads = metric_value(daemon.port, "wahookd_reloads_total", '{outcome="ok"}')
    print(f"reload under load: {len(statuses)} requests, {reloads:.0f} reloads applied")
    assert len(statuses) > 100
    assert [s for s in statuses if s != 200] == []
    assert reloads >= 2  # SIGHUPs during a reload coalesce into one more pass
    assert daemon.stop() == 0


# -- systemd notifications and the watchdog ----------------------------------------------------


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket at $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [text for _, text in self.messages]

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Any:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_systemd_hears_ready_reloading_and_stopping(daemon_factory: Any, notify_socket: NotifySocket) -> None:
    daemon: DaemonProcess = daemon_factory(SOURCES, env={"NOTIFY_SOCKET": str(notify_socket.path)}).start()
    assert wait_until(lambda: "READY=1" in notify_socket.texts())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: notify_socket.texts().count("READY=1") == 2)
    reloading = [text for text in notify_socket.texts() if text.startswith("RELOADING=1")]
    assert len(reloading) == 1
    usec = int(reloading[0].split("MONOTONIC_USEC=")[1])
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify_socket.texts().index(reloading[0]) < len(notify_socket.texts()) - 1
    assert daemon.stop() == 0
    assert wait_until(lambda: "STOPPING=1" in notify_socket.texts())


def test_watchdog_pings_stop_while_the_journal_writer_is_stuck(
    daemon_factory: Any, notify_socket: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"}  # pings every 0.5 s
    daemon: DaemonProcess = daemon_factory(SOURCES, env=env).start()
    assert wait_until(lambda: notify_socket.texts().count("WATCHDOG=1") >= 3)
    # Inject a stuck writer: another process holds the journal's write lock, so the
    # daemon's group commit waits (as on a hung disk) while webhooks keep arriving.
    journal = next(daemon.state_dir.glob("*.db"))
    blocker = sqlite3.connect(journal, timeout=1, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    stuck_at = time.monotonic()
    answers: list[int] = []
    poster = threading.Thread(
        target=lambda: answers.append(
            post(daemon.port, "/webhooks/shop", wasender_body("W1"), wasender_headers(SECRET), timeout=30)[0]
        )
    )
    poster.start()
    time.sleep(4.0)
    blocker.execute("ROLLBACK")
    blocker.close()
    released_at = time.monotonic()
    poster.join(30)
    assert wait_until(
        lambda: any(at > released_at and text == "WATCHDOG=1" for at, text in notify_socket.messages), 10
    )
    pings = [at for at, text in notify_socket.messages if text == "WATCHDOG=1"]
    during = [at for at in pings if stuck_at + 1.5 < at < released_at]
    assert during == [], "pings went on while the writer was stuck"
    assert '"watchdog_withheld"' in daemon.log()
    assert answers[0] in (200, 503)  # never a 2xx for an event not durable


# -- TLS ----------------------------------------------------------------------------------------


def make_certificate(directory: Path, name: str, common_name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def https_post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("POST", "/webhooks/shop", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        assert conn.sock is not None
        peer = conn.sock.getpeercert(binary_form=True)
        from cryptography import x509

        assert peer is not None
        subject = x509.load_der_x509_certificate(peer).subject.rfc4514_string()
        return answer.status, subject
    finally:
        conn.close()


def test_tls_listener_serves_https_and_rereads_the_certificate_on_reload(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "live", "first")
    daemon = DaemonProcess(tmp_path, SOURCES)
    text = daemon.config_path.read_text().replace(
        "drain_seconds = 10", f'drain_seconds = 10\ntls_cert = "{cert}"\ntls_key = "{key}"'
    )
    daemon.config_path.write_text(text)
    log = daemon.log_path.open("ab")
    daemon.proc = subprocess.Popen(
        [sys.executable, "-m", "wahookd.cli", "serve", "--config", str(daemon.config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        assert wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", daemon.port)) == 0, 15)
        assert https_post(daemon.port, wasender_body("T1"), wasender_headers(SECRET)) == (200, "CN=first")
        # Plain HTTP on the TLS port is refused, not served.
        with pytest.raises((http.client.HTTPException, OSError)):
            post(daemon.port, "/webhooks/shop", wasender_body("T2"), wasender_headers(SECRET), timeout=3)
        # A renewal: new files in place, SIGHUP, new handshakes get the new certificate.
        renewed_cert, renewed_key = make_certificate(tmp_path, "renewed", "second")
        renewed_cert.replace(cert)
        renewed_key.replace(key)
        daemon.signal(signal.SIGHUP)
        assert wait_until(lambda: '"reloaded"' in daemon.log())
        assert https_post(daemon.port, wasender_body("T3"), wasender_headers(SECRET)) == (200, "CN=second")
    finally:
        daemon.kill()


def test_a_tls_key_that_does_not_match_fails_check_config(tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path, "a", "a")
    _, other_key = make_certificate(tmp_path, "b", "b")
    config = tmp_path / "wahookd.toml"
    config.write_text(f'[server]\ntls_cert = "{cert}"\ntls_key = "{other_key}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("wahookd: error: server.tls_cert: cannot load")


# -- logs ---------------------------------------------------------------------------------------


def test_under_journald_each_line_carries_its_syslog_priority(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, '\n[sources.open]\nprovider = "wasender"\nverify = "none"\n')
    with daemon.log_path.open("ab") as log:
        status = os.fstat(log.fileno())
        daemon.env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
    daemon.start()
    assert (
        post(daemon.port, "/webhooks/open", wasender_body("J1"), {"Content-Type": "application/json"})[0]
        == 200
    )
    assert daemon.stop() == 0
    lines = [line for line in daemon.log().splitlines() if line]
    assert lines
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines[:3]
    by_event = {json.loads(line[3:])["event"]: line[:3] for line in lines if line[3:].startswith("{")}
    assert by_event["source_unverified"] == "<4>"
    assert by_event["request"] == "<6>"


def test_log_level_and_access_log_settings(daemon_factory: Any) -> None:
    quiet = SOURCES + '\n[sources.open]\nprovider = "wasender"\nverify = "none"\n'
    daemon: DaemonProcess = daemon_factory(quiet)
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace(
            "drain_seconds = 10", 'drain_seconds = 10\nlog_level = "warning"\naccess_log = false'
        )
    )
    daemon.start()
    assert post(daemon.port, "/webhooks/shop", wasender_body("Q1"), wasender_headers(SECRET))[0] == 200
    assert post(daemon.port, "/webhooks/shop", wasender_body("Q2"), wasender_headers("forged"))[0] == 401
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    assert records, daemon.log()
    assert {record["level"] for record in records} == {"warning"}  # source_unverified
    assert not any(record["event"] == "request" for record in records)


def test_no_phone_number_or_jid_in_any_log_line(daemon_factory: Any, tmp_path: Path) -> None:
    from tests.conftest import FIXTURES

    out = tmp_path / "events.jsonl"
    # A sink that fails (nothing listens there) logs each retry, naming the event.
    failing = f'\n[sinks.crm]\nplugin = "forward"\nurl = "http://127.0.0.1:{free_port()}/"\nsecret = "x"\n'
    waha = '\n[sources.waha]\nprovider = "waha"\nverify = "none"\n'
    daemon: DaemonProcess = daemon_factory(SOURCES + waha + sink_config(out) + failing).start()
    assert post(daemon.port, "/webhooks/shop", wasender_body("P1"), wasender_headers(SECRET))[0] == 200
    # WAHA's message id itself carries the phone number: false_11111111111@c.us_AAA...
    body = (FIXTURES / "waha" / "message.json").read_bytes()
    assert post(daemon.port, "/webhooks/waha", body, {"Content-Type": "application/json"})[0] == 200
    assert wait_for_lines(out, 2)[0]["from"] == "1234567890"
    assert wait_until(lambda: "sink_delivery_failed" in daemon.log())
    assert daemon.stop() == 0
    log = daemon.log()
    assert '"event_ref":' in log
    for needle in ("1234567890", "11111111111", "@c.us", "@s.whatsapp.net"):
        assert needle not in log


def test_version_and_operator_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "--version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0
    assert re.fullmatch(r"wahookd \d+\.\d+\.\d+\S*\n", version.stdout)
    helptext = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for needed in ("WAHOOKD_CONFIG", "CREDENTIALS_DIRECTORY", "SIGHUP", "check-config"):
        assert needed in helptext


def test_a_reload_applies_sink_filters_at_once(daemon_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    sink = sink_config(out) + 'kinds = ["status"]\n'
    daemon: DaemonProcess = daemon_factory(SOURCES + sink).start()
    assert post(daemon.port, "/webhooks/shop", wasender_body("F1"), wasender_headers(SECRET))[0] == 200
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace('kinds = ["status"]', 'kinds = ["message"]')
    )
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: metric_value(daemon.port, "wahookd_reloads_total", '{outcome="ok"}') == 1)
    assert post(daemon.port, "/webhooks/shop", wasender_body("F2"), wasender_headers(SECRET))[0] == 200
    lines = wait_for_lines(out, 1)
    assert [line["message_id"] for line in lines] == ["F2"]  # F1 was filtered out before
    assert daemon.stop() == 0


def test_wahookd_reload_waits_for_the_verdict_and_fails_on_a_bad_file(daemon_factory: Any) -> None:
    # The unit's ExecReload=: `systemctl reload` ends when the reload has, and fails with it.
    daemon: DaemonProcess = daemon_factory(SOURCES).start()

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wahookd.cli", "reload", "--config", str(daemon.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = reload()
    assert good.returncode == 0, good.stderr
    assert good.stdout == "reloaded\n"
    good_text = daemon.config_path.read_text()
    # Refused by the daemon (its secret file is missing), not by this command.
    daemon.config_path.write_text(good_text.replace(f'secret = "{SECRET}"', 'secret_file = "missing"'))
    bad = reload()
    assert bad.returncode == 1
    assert bad.stderr.startswith(
        "wahookd: error: reload refused, nothing changed: sources.shop.secret_file: "
    )
    # Refused here already: the daemon would say the same.
    daemon.config_path.write_text(good_text.replace(f'secret = "{SECRET}"', 'secret = ""'))
    assert reload().stderr.startswith(
        "wahookd: error: reload refused, nothing changed: sources.shop.secret: "
    )
    assert post(daemon.port, "/webhooks/shop", wasender_body("V1"), wasender_headers(SECRET))[0] == 200
    daemon.config_path.write_text(good_text)
    assert daemon.stop() == 0
    stopped = reload()
    assert stopped.returncode == 1
    assert "no daemon is running on" in stopped.stderr
