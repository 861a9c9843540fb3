"""Helpers for the media tests: a provider stand-in, an S3 server, WhatsApp media encryption.

The stand-in plays a provider's media host and API on a free loopback port, in its own
thread (so a daemon process can reach it as well as in-process code). It checks the
credentials a real provider would check and answers 401 otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.web
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from prometheus_client import CollectorRegistry, Counter


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- WhatsApp media encryption (the inverse of wahookd.media.decrypt) -------------------


@dataclass
class EncryptedMedia:
    plaintext: bytes
    media_key: bytes
    encrypted: bytes

    @property
    def file_sha256(self) -> str:
        return base64.b64encode(hashlib.sha256(self.plaintext).digest()).decode()

    @property
    def file_enc_sha256(self) -> str:
        return base64.b64encode(hashlib.sha256(self.encrypted).digest()).decode()

    def baileys(self, url: str, mimetype: str = "image/jpeg") -> dict[str, Any]:
        return {
            "url": url,
            "mimetype": mimetype,
            "fileSha256": self.file_sha256,
            "fileEncSha256": self.file_enc_sha256,
            "fileLength": str(len(self.plaintext)),
            "mediaKey": base64.b64encode(self.media_key).decode(),
        }


def encrypt_media(
    plaintext: bytes, info: bytes = b"WhatsApp Image Keys", media_key: bytes | None = None
) -> EncryptedMedia:
    media_key = media_key or os.urandom(32)
    expanded = HKDF(algorithm=hashes.SHA256(), length=112, salt=None, info=info).derive(media_key)
    iv, cipher_key, mac_key = expanded[:16], expanded[16:48], expanded[48:80]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    mac = hmac.new(mac_key, iv + ciphertext, hashlib.sha256).digest()[:10]
    return EncryptedMedia(plaintext, media_key, ciphertext + mac)


# --- metrics as the daemon passes them -------------------------------------------------


@dataclass
class MediaMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.media_downloads = Counter(
            "wahookd_media_downloads",
            "media downloads",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.media_bytes = Counter("wahookd_media_bytes", "media bytes", registry=self.registry)

    def downloads(self, source: str, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "wahookd_media_downloads_total", {"source": source, "outcome": outcome}
        )
        return value or 0.0


# --- the provider stand-in -------------------------------------------------------------


@dataclass
class Route:
    body: bytes | Callable[[], Iterator[bytes]] | None = None
    json: Any = None
    status: int = 200
    content_type: str = "application/octet-stream"
    redirect: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # required request headers
    forbid: tuple[str, ...] = ()  # request headers that must be absent
    length: bool = True  # send Content-Length for generated bodies
    delay: float = 0.0  # seconds before answering


class _Handler(tornado.web.RequestHandler):
    def initialize(self, standin: StandIn) -> None:
        self.standin = standin

    async def get(self, path: str) -> None:
        path = "/" + path
        self.standin.hits.append((path, dict(self.request.headers)))
        route = self.standin.routes.get(path)
        if route is None:
            raise tornado.web.HTTPError(404)
        if route.delay:
            await asyncio.sleep(route.delay)
        for name, value in route.headers.items():
            if self.request.headers.get(name) != value:
                raise tornado.web.HTTPError(401)
        for name in route.forbid:
            if name in self.request.headers:
                raise tornado.web.HTTPError(400)
        if route.redirect is not None:
            self.redirect(route.redirect, status=302)
            return
        self.set_status(route.status)
        if route.json is not None:
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(route.json))
            return
        self.set_header("Content-Type", route.content_type)
        if callable(route.body):
            chunks = list(route.body()) if route.length else None
            if chunks is not None:
                self.set_header("Content-Length", str(sum(map(len, chunks))))
            for chunk in chunks if chunks is not None else route.body():
                self.write(chunk)
                await self.flush()
            return
        self.write(route.body or b"")


class StandIn:
    """A provider's media host / API on 127.0.0.1, in its own thread (module doc)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.routes: dict[str, Route] = {}
        self.hits: list[tuple[str, dict[str, str]]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def url(self, path: str = "", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths_hit(self) -> list[str]:
        return [path for path, _ in self.hits]

    def start(self) -> StandIn:
        ready = threading.Event()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            app = tornado.web.Application([(r"/(.*)", _Handler, {"standin": self})])
            server = tornado.httpserver.HTTPServer(app)
            server.listen(self.port, "127.0.0.1")
            ready.set()
            await self._stop.wait()
            server.stop()
            await server.close_all_connections()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        assert ready.wait(5), "stand-in did not start"
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
        self._thread = None


@contextmanager
def standin(port: int | None = None) -> Iterator[StandIn]:
    server = StandIn(port).start()
    try:
        yield server
    finally:
        server.stop()


# --- a real S3-compatible server -------------------------------------------------------


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields ``host:port``."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()
