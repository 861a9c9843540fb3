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
from datetime import date
from hashlib import sha256
from pathlib import Path
from typing import Any, Protocol

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

    async def delete(self, key: str, bucket: str | None = None) -> bool:
        """Remove the object (`wahookd forget`); False when it was not there. `bucket` is
        the one `put` answered with (None for the local store)."""
        ...

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

    async def delete(self, key: str, bucket: str | None = None) -> bool:
        return await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> bool:
        root = self.root.resolve()
        target = (root / key).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"media key outside the store: {key!r}")
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        # The day's directories go with their last file (never the store's root).
        parent = target.parent
        while parent != root:
            try:
                parent.rmdir()
            except OSError:  # not empty
                break
            parent = parent.parent
        return True

    async def close(self) -> None:
        return None


def make_store(settings: Settings) -> MediaStore:
    """The store `[media] store` names."""
    if settings.media.store == "s3":
        # minio and urllib3 only when S3 is configured: a few MB the local store need not pay.
        from wahookd.media.s3 import S3Store

        return S3Store.from_settings(settings)
    return LocalStore(settings.media_dir, fsync=settings.state.durability == "fsync")
