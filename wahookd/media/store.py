"""Where media files end up: a local directory (the embedded default) or S3/MinIO.

Keys are ``<source>/<yyyy>/<mm>/<dd>/<sha256>.<ext>``: the configured source name, the
day the event was received, the plaintext's SHA-256 and an extension from a fixed
MIME table. Nothing in a key comes from the payload, so a hostile filename cannot climb
out of the directory or the bucket, and storing the same file twice (a retry, a restart)
writes the same object.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from datetime import date
from hashlib import sha256
from pathlib import Path
from typing import Any, Protocol

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from wahookd.media.errors import MediaError
from wahookd.settings import Settings

# A fixed table: the extension never comes from a payload's filename.
MIME_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "video/mp4": "mp4",
    "video/3gpp": "3gp",
    "video/quicktime": "mov",
    "video/webm": "webm",
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/mpeg": "mp3",
    "audio/mp4": "m4a",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/wav": "wav",
    "audio/webm": "weba",
    "application/pdf": "pdf",
    "text/plain": "txt",
    "text/csv": "csv",
    "application/zip": "zip",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "text/vcard": "vcf",
}
SAFE_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def bare_mime(mime_type: str | None) -> str | None:
    """``audio/ogg; codecs=opus`` -> ``audio/ogg``."""
    if not mime_type:
        return None
    return mime_type.split(";", 1)[0].strip().lower() or None


def object_key(source: str, day: date, digest: str, mime_type: str | None) -> str:
    """``<source>/<yyyy>/<mm>/<dd>/<sha256>.<ext>`` (module doc)."""
    if not SAFE_SOURCE.fullmatch(source) or ".." in source:
        # Source names come from the config, but a key is a path: keep it a plain segment.
        source = "source-" + sha256(source.encode()).hexdigest()[:16]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("digest must be a hex SHA-256")
    extension = MIME_EXTENSIONS.get(bare_mime(mime_type) or "", "bin")
    return f"{source}/{day:%Y/%m/%d}/{digest}.{extension}"


class MediaStore(Protocol):
    """Keeps a finished plaintext file under a key; returns ``{bucket, key, url}``."""

    async def put(self, path: Path, key: str, mime_type: str | None) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LocalStore:
    """Files under a directory, each written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path, fsync: bool) -> None:
        self.root = root
        self.fsync = fsync

    async def put(self, path: Path, key: str, mime_type: str | None) -> dict[str, Any]:
        target = await asyncio.to_thread(self._put, path, key)
        return {"bucket": None, "key": key, "url": target.as_uri()}

    def _put(self, path: Path, key: str) -> Path:
        target = (self.root / key).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            # `durability = "fsync"`: the file, then its directory entry, reach the disk
            # before the event that points at it is released to the sinks.
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        # Same filesystem (the work directory is under the store root), so this is atomic.
        os.replace(path, target)
        if self.fsync:
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return target

    async def close(self) -> None:
        return None


class S3Store:
    """An S3/MinIO bucket through the `minio` client; its blocking calls run in threads."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        secure: bool,
        region: str | None,
        timeout: float,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            maxsize=10,
            # The system trust store (and $SSL_CERT_FILE): where a self-hosted MinIO's CA lives.
            cert_reqs="CERT_REQUIRED",
            # Few quick retries here: the media stage has its own backoff.
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._pool,
        )
        self._bucket_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        media = settings.media
        return cls(
            endpoint=media.endpoint,
            bucket=media.bucket,
            access_key=media.access_key.get_secret_value() if media.access_key else None,
            secret_key=media.secret_key.get_secret_value() if media.secret_key else None,
            secure=media.secure,
            region=media.region,
            timeout=media.timeout,
        )

    async def put(self, path: Path, key: str, mime_type: str | None) -> dict[str, Any]:
        await asyncio.to_thread(self._put, path, key, mime_type or "application/octet-stream")
        return {"bucket": self.bucket, "key": key, "url": f"s3://{self.bucket}/{key}"}

    def _put(self, path: Path, key: str, content_type: str) -> None:
        try:
            self._ensure_bucket()
            self._client.fput_object(self.bucket, key, str(path), content_type=content_type)
        except S3Error as exc:
            raise MediaError(f"object store error: {exc.code}", retry=True) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError):
            raise MediaError(f"object store unreachable: {self.endpoint}", retry=True) from None

    def _ensure_bucket(self) -> None:
        with self._lock:
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    # Another wahookd (or a person) made it in between: that is fine.
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.clear)


def make_store(settings: Settings) -> MediaStore:
    """The store `[media] store` names."""
    if settings.media.store == "s3":
        return S3Store.from_settings(settings)
    return LocalStore(settings.media_dir, fsync=settings.state.durability == "fsync")
