"""Media stores: object keys, the local directory store, S3 through a real moto server."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from media_support import s3_server
from minio import Minio

from wahookd.media.errors import MediaError
from wahookd.media.s3 import S3Store
from wahookd.media.store import LocalStore, make_store, object_key
from wahookd.settings import Settings

DIGEST = hashlib.sha256(b"photo").hexdigest()


def test_key_is_source_date_hash_and_extension_from_the_mime_table() -> None:
    key = object_key("shop", date(2026, 11, 26), DIGEST, "image/jpeg")
    assert key == f"shop/2026/11/26/{DIGEST}.jpg"


@pytest.mark.parametrize(
    ("mime", "ext"),
    [
        ("audio/ogg; codecs=opus", "ogg"),
        ("application/pdf", "pdf"),
        ("application/x-evil/../../x", "bin"),
        (None, "bin"),
    ],
)
def test_extension_comes_only_from_the_fixed_table(mime: str | None, ext: str) -> None:
    assert object_key("shop", date(2026, 1, 2), DIGEST, mime).endswith(f"{DIGEST}.{ext}")


@pytest.mark.parametrize("source", ["../etc", "a/b", "", "x" * 100, "sp ace"])
def test_odd_source_names_become_a_plain_segment(source: str) -> None:
    key = object_key(source, date(2026, 1, 2), DIGEST, "image/png")
    first = key.split("/")[0]
    assert first.startswith("source-")
    assert ".." not in key
    assert len(key.split("/")) == 5


def test_key_refuses_a_digest_that_is_not_a_sha256() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        object_key("shop", date(2026, 1, 2), "../../etc/passwd", "image/png")


@pytest.mark.parametrize("fsync", [True, False])
def test_local_store_moves_the_file_into_place(tmp_path: Path, fsync: bool) -> None:
    root = tmp_path / "media"
    (root / ".incoming").mkdir(parents=True)
    scratch = root / ".incoming" / "x.part"
    scratch.write_bytes(b"photo")
    key = object_key("shop", date(2026, 11, 26), DIGEST, "image/jpeg")
    stored = asyncio.run(LocalStore(root, fsync=fsync).put(scratch, key, "image/jpeg"))
    target = root / key
    assert target.read_bytes() == b"photo"
    assert not scratch.exists()
    assert stored == {"bucket": None, "key": key, "url": target.resolve().as_uri()}
    assert Path(urlsplit(stored["url"]).path) == target.resolve()


def test_local_store_storing_the_same_file_twice_keeps_one_copy(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, fsync=True)
    key = object_key("shop", date(2026, 11, 26), DIGEST, "image/jpeg")
    for _ in range(2):
        scratch = tmp_path / "x.part"
        scratch.write_bytes(b"photo")
        asyncio.run(store.put(scratch, key, "image/jpeg"))
    assert [p.name for p in (tmp_path / "shop").rglob("*") if p.is_file()] == [f"{DIGEST}.jpg"]


def test_make_store_follows_the_settings(tmp_path: Path) -> None:
    local = make_store(Settings(state={"dir": str(tmp_path)}))
    assert isinstance(local, LocalStore)
    assert local.root == tmp_path / "media"
    assert local.fsync
    s3 = make_store(Settings(media={"store": "s3", "endpoint": "127.0.0.1:1", "secure": False}))
    assert isinstance(s3, S3Store)


def test_s3_store_creates_the_bucket_and_uploads(tmp_path: Path) -> None:
    with s3_server() as endpoint:
        store = S3Store(
            endpoint, "whatsapp-media", "testing", "testing", secure=False, region=None, timeout=5
        )
        scratch = tmp_path / "x.part"
        scratch.write_bytes(b"photo")
        key = object_key("shop", date(2026, 11, 26), DIGEST, "image/jpeg")
        stored = asyncio.run(store.put(scratch, key, "image/jpeg"))
        assert stored == {"bucket": "whatsapp-media", "key": key, "url": f"s3://whatsapp-media/{key}"}
        client = Minio(endpoint, access_key="testing", secret_key="testing", secure=False)
        answer = client.get_object("whatsapp-media", key)
        try:
            assert answer.read() == b"photo"
            assert answer.headers["Content-Type"] == "image/jpeg"
        finally:
            answer.close()
            answer.release_conn()
        # A second store (a restart) finds the bucket already there.
        again = S3Store(
            endpoint, "whatsapp-media", "testing", "testing", secure=False, region=None, timeout=5
        )
        scratch.write_bytes(b"photo")
        assert asyncio.run(again.put(scratch, key, "image/jpeg"))["key"] == key


def test_s3_store_unreachable_is_a_retryable_error(tmp_path: Path) -> None:
    from media_support import free_port

    store = S3Store(
        f"127.0.0.1:{free_port()}", "b", "testing", "testing", secure=False, region=None, timeout=2
    )
    scratch = tmp_path / "x.part"
    scratch.write_bytes(b"photo")
    with pytest.raises(MediaError, match="object store unreachable") as info:
        asyncio.run(store.put(scratch, "k", None))
    assert info.value.retry
    assert "testing" not in info.value.reason
