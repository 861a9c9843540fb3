"""The S3/MinIO media store (`[media] store = "s3"`), through the `minio` client."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from wahookd.media.errors import MediaError
from wahookd.settings import Settings


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
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
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

    async def delete(self, key: str, bucket: str | None = None) -> bool:
        return await asyncio.to_thread(self._delete, key, bucket or self.bucket)

    def _delete(self, key: str, bucket: str) -> bool:
        try:
            try:
                self._client.stat_object(bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                    return False
                raise
            self._client.remove_object(bucket, key)
        except S3Error as exc:
            raise MediaError(f"object store error: {exc.code}", retry=True) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError):
            raise MediaError(f"object store unreachable: {self.endpoint}", retry=True) from None
        return True

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
