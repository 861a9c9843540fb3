"""The built-in `forward` sink passes the conformance suite (SPEC §6) against a real HTTP receiver.

The receiver is what a Standard Webhooks receiver should be: it verifies the signature
(401 when wrong, which the sink dead-letters, so a bad signature fails the checks) and
stores each event by its ``webhook-id``, the dedupe key forward sends for exactly that. So
"stored once in effect" holds for forward when the id it sends is the event's id every time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from wahookd.events import load_json
from wahookd.testing import SinkConformance

KEY = b"conformance-forward-key-0123456789"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


class Receiver:
    """A threaded HTTP server on a loopback port that can go away and come back on it."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.mismatched: list[str] = []  # webhook-id headers that were not the event's id
        self.refuse = False
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                msg_id, stamp = self.headers["webhook-id"], self.headers["webhook-timestamp"]
                signed = f"{msg_id}.{stamp}.".encode() + body
                expected = "v1," + base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
                if not hmac.compare_digest(self.headers.get("webhook-signature", ""), expected):
                    return self.answer(401)
                if receiver.refuse:
                    return self.answer(410)
                event = load_json(body)
                with receiver.lock:
                    if msg_id != event.get("id"):
                        receiver.mismatched.append(msg_id)
                    receiver.events[msg_id] = event  # a receiver dedupes by webhook-id
                return self.answer(204)

            def answer(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 128})
        self.server = server_class(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()  # the port refuses connections until start()
            self.server = None


class TestForwardSinkConformance(SinkConformance):
    plugin = "forward"
    concurrency = 16

    @pytest.fixture(autouse=True)
    def _stop_receiver(self) -> Iterator[None]:
        yield
        if hasattr(self, "receiver"):
            self.receiver.stop()
            assert self.receiver.mismatched == []  # webhook-id is always the event id

    def options(self, tmp_path: Path) -> dict[str, Any]:
        self.receiver = Receiver()
        return {"url": self.receiver.url, "secret": SECRET, "timeout": 10}

    def read_back(self) -> list[dict[str, Any]]:
        with self.receiver.lock:
            return list(self.receiver.events.values())

    def break_target(self) -> None:
        self.receiver.stop()

    def heal_target(self) -> None:
        self.receiver.refuse = False
        if self.receiver.server is None:
            self.receiver.start()

    def refuse_target(self) -> None:
        self.receiver.refuse = True  # 410 Gone: retrying cannot help
