"""The shipped reverse-proxy examples, run for real in front of a real daemon: Debian's nginx
with contrib/nginx/wahookd.conf and Caddy with contrib/caddy/Caddyfile, each terminating TLS
with a certificate made here. A Twilio signature computed over the PUBLIC URL validates
behind them; one over any other URL, or a forged client address, does not (SPEC §3, §10)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import FIXTURES, DaemonProcess, free_port

REPO = Path(__file__).resolve().parents[1]
NGINX_EXAMPLE = REPO / "contrib" / "nginx" / "wahookd.conf"
CADDY_EXAMPLE = REPO / "contrib" / "caddy" / "Caddyfile"
PUBLIC_HOST = "public.example"
AUTH_TOKEN = "twilio-auth-token-behind-a-proxy"
VECTORS = json.loads((FIXTURES / "vectors.json").read_text())


def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's scheme, done here independently of wahookd's own code: base64 HMAC-SHA1 of
    the URL followed by each form parameter's name and value, sorted by name."""
    message = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha1).digest()).decode()


def test_the_signer_here_matches_twilios_published_vector() -> None:
    vector = VECTORS["twilio"]
    params = list(vector["params"].items())
    assert twilio_signature(vector["auth_token"], vector["url"], params) == vector["value"]


# -- a certificate, the daemon and the proxies ------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for public.example, as a real one would be for your host."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PUBLIC_HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(PUBLIC_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def daemon_config(sink: Path) -> str:
    # trusted_proxies stays the default (127.0.0.1/32, ::1/128): the proxy is on loopback.
    return f"""
[sources.tw]
provider = "twilio"
secret = "{AUTH_TOKEN}"

[sources.allowlisted]
provider = "twilio"
secret = "{AUTH_TOKEN}"
allow_ips = ["203.0.113.0/24"]

[sinks.archive]
plugin = "file"
path = "{sink}"
"""


def directives(text: str) -> str:
    """The example without its comments."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def left_in(value: str, text: str) -> bool:
    """`value` in `text`, a port only as a whole number: the free port 44359 holds ":443"."""
    return re.search(re.escape(value) + (r"(?!\d)" if value[-1].isdigit() else ""), text) is not None


def render_nginx(port: int, http_port: int, upstream: int, cert: Path, key: Path) -> str:
    """The example with only its site-specific values replaced: host name, certificate,
    loopback listeners on free ports, the daemon's port. Every proxy directive is the
    example's own."""
    text = NGINX_EXAMPLE.read_text()
    replacements = [
        ("/etc/letsencrypt/live/hooks.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/hooks.example.com/privkey.pem", str(key)),
        ("hooks.example.com", PUBLIC_HOST),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", ""),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};"),
    ]
    for old, new in replacements:
        assert text.count(old) >= 1, f"the nginx example no longer has {old!r}: update this test"
        text = text.replace(old, new)
    for left in ("hooks.example.com", ":443", ":8080", "listen 80", "letsencrypt"):
        assert not left_in(left, directives(text)), f"{left!r} left in the rendered example"
    return text


def render_caddy(port: int, http_port: int, upstream: int, cert: Path, key: Path, data: Path) -> str:
    text = CADDY_EXAMPLE.read_text()
    replacements = [
        # A certificate of our own instead of ACME, and loopback only.
        ("hooks.example.com {", f"https://{PUBLIC_HOST}:{port} {{\n\ttls {cert} {key}\n\tbind 127.0.0.1\n"),
        ("127.0.0.1:8080", f"127.0.0.1:{upstream}"),
    ]
    for old, new in replacements:
        assert old in text, f"the Caddyfile example no longer has {old!r}: update this test"
        text = text.replace(old, new)
    for left in (":8080", "hooks.example.com"):
        assert not left_in(left, directives(text)), f"{left!r} left in the rendered example"
    # No admin endpoint, no redirect listener, no ACME, state in the test's directory.
    options = (
        f"{{\n\tadmin off\n\tauto_https disable_redirects\n\thttp_port {http_port}\n"
        f"\thttps_port {port}\n\tstorage file_system {data}\n\tskip_install_trust\n}}\n\n"
    )
    return options + text


class Proxy:
    """A proxy process serving one of the examples on 127.0.0.1:port."""

    def __init__(self, command: list[str], port: int, workdir: Path, env: dict[str, str]) -> None:
        self.port = port
        self.log_path = workdir / "proxy.log"
        self.proc = subprocess.Popen(
            command, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, cwd=workdir, env=env
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{command[0]} did not listen on {port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_nginx(workdir: Path, upstream: int, cert: Path, key: Path) -> Proxy:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port, http_port = free_port(), free_port()
    site = workdir / "wahookd.conf"
    site.write_text(render_nginx(port, http_port, upstream, cert, key))
    temp = workdir / "temp"
    temp.mkdir()
    # Debian's nginx.conf includes sites-enabled/* inside http {}; this one includes the example.
    main = workdir / "nginx.conf"
    main.write_text(
        f"""
        {"user root;" if os.geteuid() == 0 else ""}
        worker_processes 1;
        pid {workdir}/nginx.pid;
        error_log {workdir}/error.log info;
        events {{ worker_connections 64; }}
        http {{
            access_log {workdir}/access.log;
            client_body_temp_path {temp}/body;
            proxy_temp_path {temp}/proxy;
            fastcgi_temp_path {temp}/fastcgi;
            uwsgi_temp_path {temp}/uwsgi;
            scgi_temp_path {temp}/scgi;
            include {site};
        }}
        """
    )
    command = [nginx, "-p", str(workdir), "-c", str(main), "-e", str(workdir / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    return Proxy([*command, "-g", "daemon off;"], port, workdir, dict(os.environ))


def start_caddy(workdir: Path, upstream: int, cert: Path, key: Path) -> Proxy:
    caddy = shutil.which("caddy")
    assert caddy is not None
    port, http_port = free_port(), free_port()
    data = workdir / "caddy-data"
    caddyfile = workdir / "Caddyfile"
    caddyfile.write_text(render_caddy(port, http_port, upstream, cert, key, data))
    env = {**os.environ, "HOME": str(workdir), "XDG_DATA_HOME": str(data), "XDG_CONFIG_HOME": str(data)}
    command = [caddy, "run", "--adapter", "caddyfile", "--config", str(caddyfile)]
    return Proxy(command, port, workdir, env)


PROXIES = {
    "nginx": (start_nginx, "nginx", "apt-get install nginx (.ci/run does)"),
    "caddy": (start_caddy, "caddy", "apt-get install caddy (.ci/run does)"),
}


@pytest.fixture(params=sorted(PROXIES))
def proxied(
    request: pytest.FixtureRequest, daemon_factory: Any, tmp_path: Path, certificate: tuple[Path, Path]
) -> Iterator[tuple[Proxy, DaemonProcess, Path]]:
    start, binary, hint = PROXIES[request.param]
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        pytest.skip(f"{binary} is not installed: {hint}")
    sink = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(daemon_config(sink)).start()
    workdir = tmp_path / request.param
    workdir.mkdir()
    proxy = start(workdir, daemon.port, *certificate)
    try:
        yield proxy, daemon, sink
    finally:
        proxy.stop()
        daemon.stop()


def post_tls(
    port: int, cafile: Path, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST over TLS to 127.0.0.1:port as a provider calling https://public.example would:
    SNI and Host public.example, the certificate checked for that name."""
    context = ssl.create_default_context(cafile=str(cafile))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPSConnection(PUBLIC_HOST, port, timeout=10, context=context)
    conn.sock = context.wrap_socket(raw, server_hostname=PUBLIC_HOST)
    try:
        conn.putrequest("POST", path, skip_host=True)
        conn.putheader("Host", PUBLIC_HOST)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def twilio_form() -> tuple[bytes, list[tuple[str, str]]]:
    body = (FIXTURES / "twilio" / "text.form").read_bytes().strip()
    return body, parse_qsl(body.decode(), keep_blank_values=True)


def wait_for_events(path: Path, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} events in {path}")


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_a_twilio_signature_over_the_public_url_validates_behind_the_proxy(
    proxied: tuple[Proxy, DaemonProcess, Path], certificate: tuple[Path, Path]
) -> None:
    proxy, daemon, sink = proxied
    cert, _ = certificate
    body, params = twilio_form()
    public_url = f"https://{PUBLIC_HOST}/webhooks/tw"
    # The client's own X-Forwarded-* claims are replaced by the proxy's, never believed.
    spoofed = {
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "198.51.100.7",
    }
    headers = {**FORM, **spoofed, "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, public_url, params)}
    status, answer_headers, answer = post_tls(proxy.port, cert, "/webhooks/tw", body, headers)
    assert status == 200, (answer, proxy.log(), daemon.log())
    assert answer_headers["content-type"].startswith("text/xml")
    assert b"<Response/>" in answer
    (event,) = wait_for_events(sink, 1)
    assert event["source"] == "tw"
    assert event["message_id"] == "SM0123456789abcdef0123456789abcdef"
    assert event["text"] == "Hello"

    # Redelivered through the proxy: 200, nothing new.
    assert post_tls(proxy.port, cert, "/webhooks/tw", body, headers)[0] == 200


@pytest.mark.parametrize(
    "signed_url",
    [
        "http://public.example/webhooks/tw",  # the scheme wahookd itself is spoken to in
        f"https://{PUBLIC_HOST}/webhooks/other",  # another path
        "https://evil.example/webhooks/tw",  # the Host a client claimed in X-Forwarded-Host
        "http://127.0.0.1:8080/webhooks/tw",  # the upstream's own address
    ],
)
def test_a_twilio_signature_over_any_other_url_is_refused_behind_the_proxy(
    proxied: tuple[Proxy, DaemonProcess, Path], certificate: tuple[Path, Path], signed_url: str
) -> None:
    proxy, _, sink = proxied
    body, params = twilio_form()
    headers = {
        **FORM,
        "X-Forwarded-Host": "evil.example",
        "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, signed_url, params),
    }
    status, _, answer = post_tls(proxy.port, certificate[0], "/webhooks/tw", body, headers)
    assert status == 401, answer
    assert not sink.exists() or sink.read_text() == ""


def test_a_forged_x_forwarded_for_does_not_pass_an_ip_allow_list_behind_the_proxy(
    proxied: tuple[Proxy, DaemonProcess, Path], certificate: tuple[Path, Path]
) -> None:
    proxy, _, _ = proxied
    body, params = twilio_form()
    public_url = f"https://{PUBLIC_HOST}/webhooks/allowlisted"
    headers = {
        **FORM,
        "X-Forwarded-For": "203.0.113.9",  # inside the source's allow_ips
        "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, public_url, params),
    }
    status, _, answer = post_tls(proxy.port, certificate[0], "/webhooks/allowlisted", body, headers)
    assert status == 401, answer


def test_the_proxy_refuses_bodies_over_max_body_bytes_and_hides_metrics(
    proxied: tuple[Proxy, DaemonProcess, Path], certificate: tuple[Path, Path]
) -> None:
    proxy, _, _ = proxied
    cert = certificate[0]
    too_big = b"x" * (3 * 1024 * 1024 + 1)  # server.max_body_bytes + 1
    assert refused(proxy.port, cert, too_big) == 413
    assert get_tls(proxy.port, cert, "/healthz") == 200
    assert get_tls(proxy.port, cert, "/metrics") == 404
    assert get_tls(proxy.port, cert, "/readyz") == 404


def refused(port: int, cafile: Path, body: bytes) -> int:
    """POST `body` until the proxy's 413 is read. The proxy answers it on the headers, while
    the client is still sending the body, and now and then the client meets the closed
    connection first (nginx), or the proxy had begun to stream the body and hits the limit
    there (Caddy: 502): the proxy's race, seen once in a few runs. Either way the body was
    refused; anything else fails at once."""
    status = 0
    for _ in range(4):
        try:
            status = post_tls(port, cafile, "/webhooks/tw", body, FORM)[0]
        except (ConnectionError, http.client.HTTPException, ssl.SSLError):
            continue
        if status == 413:
            return status
        assert status == 502, status
    return status


def get_tls(port: int, cafile: Path, path: str) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPSConnection(PUBLIC_HOST, port, timeout=10, context=context)
    conn.sock = context.wrap_socket(raw, server_hostname=PUBLIC_HOST)
    try:
        conn.request("GET", path, headers={"Host": PUBLIC_HOST})
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()
