"""WhatsApp media decryption: the known-answer vector, tampering, large files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from media_support import encrypt_media

from wahookd.media.decrypt import INFO_BY_MESSAGE, decrypt_file, derive_keys
from wahookd.media.errors import MediaIntegrityError

FIXTURES = Path(__file__).parent / "fixtures"
VECTOR = json.loads((FIXTURES / "vectors.json").read_text())["whatsapp_media"]


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def run(
    tmp_path: Path,
    encrypted: bytes,
    media_key: bytes,
    enc_sha: bytes | None,
    sha: bytes | None,
    info: bytes = VECTOR["info"].encode(),
) -> tuple[str, int, bytes]:
    source = tmp_path / "in.enc"
    target = tmp_path / "out.bin"
    source.write_bytes(encrypted)
    digest, size = decrypt_file(source, target, media_key, info, enc_sha, sha)
    return digest, size, target.read_bytes()


def test_vector_decrypts_to_its_plaintext(tmp_path: Path) -> None:
    digest, size, plaintext = run(
        tmp_path,
        bytes.fromhex(VECTOR["enc_hex"]),
        b64(VECTOR["media_key_b64"]),
        b64(VECTOR["fileEncSha256"]),
        b64(VECTOR["fileSha256"]),
    )
    assert plaintext == VECTOR["plaintext"].encode()
    assert size == len(plaintext)
    assert digest == hashlib.sha256(plaintext).hexdigest()


def test_fixture_file_is_the_vector_and_decrypts(tmp_path: Path) -> None:
    encrypted = (FIXTURES / "wasender" / "3EB0IMG0000001.enc").read_bytes()
    image = json.loads((FIXTURES / "wasender" / "messages-upsert-image.json").read_text())
    media = image["data"]["message"]["imageMessage"]
    _, _, plaintext = run(
        tmp_path, encrypted, b64(media["mediaKey"]), b64(media["fileEncSha256"]), b64(media["fileSha256"])
    )
    assert plaintext == VECTOR["plaintext"].encode()


@pytest.mark.parametrize("position", [0, 5, 15, -11])
def test_flipped_byte_in_the_file_fails_the_file_hash(tmp_path: Path, position: int) -> None:
    encrypted = bytearray.fromhex(VECTOR["enc_hex"])
    encrypted[position] ^= 0x01
    with pytest.raises(MediaIntegrityError, match="fileEncSha256 mismatch"):
        run(
            tmp_path,
            bytes(encrypted),
            b64(VECTOR["media_key_b64"]),
            b64(VECTOR["fileEncSha256"]),
            b64(VECTOR["fileSha256"]),
        )
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("position", [-10, -1])
def test_flipped_byte_in_the_mac_fails_the_mac(tmp_path: Path, position: int) -> None:
    encrypted = bytearray.fromhex(VECTOR["enc_hex"])
    encrypted[position] ^= 0x80
    # A file hash that matches the tampered file, so the MAC check is what must catch it.
    enc_sha = hashlib.sha256(encrypted).digest()
    with pytest.raises(MediaIntegrityError, match="MAC mismatch"):
        run(tmp_path, bytes(encrypted), b64(VECTOR["media_key_b64"]), enc_sha, b64(VECTOR["fileSha256"]))


def test_flipped_byte_in_the_key_fails_the_mac(tmp_path: Path) -> None:
    key = bytearray(b64(VECTOR["media_key_b64"]))
    key[7] ^= 0x01
    with pytest.raises(MediaIntegrityError, match="MAC mismatch"):
        run(
            tmp_path,
            bytes.fromhex(VECTOR["enc_hex"]),
            bytes(key),
            b64(VECTOR["fileEncSha256"]),
            b64(VECTOR["fileSha256"]),
        )


def test_wrong_media_type_info_fails_the_mac(tmp_path: Path) -> None:
    with pytest.raises(MediaIntegrityError, match="MAC mismatch"):
        run(
            tmp_path,
            bytes.fromhex(VECTOR["enc_hex"]),
            b64(VECTOR["media_key_b64"]),
            b64(VECTOR["fileEncSha256"]),
            b64(VECTOR["fileSha256"]),
            info=b"WhatsApp Video Keys",
        )


def test_plaintext_hash_mismatch_is_refused_after_decrypting(tmp_path: Path) -> None:
    with pytest.raises(MediaIntegrityError, match="fileSha256 mismatch"):
        run(
            tmp_path,
            bytes.fromhex(VECTOR["enc_hex"]),
            b64(VECTOR["media_key_b64"]),
            b64(VECTOR["fileEncSha256"]),
            hashlib.sha256(b"something else").digest(),
        )


def test_truncated_file_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(MediaIntegrityError):
        run(tmp_path, bytes.fromhex(VECTOR["enc_hex"])[:-3], b64(VECTOR["media_key_b64"]), None, None)


def test_key_of_wrong_length_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(MediaIntegrityError, match="32 bytes"):
        run(tmp_path, bytes.fromhex(VECTOR["enc_hex"]), b"short", None, None)


def test_stickers_use_image_keys_and_each_type_its_own() -> None:
    key = os.urandom(32)
    assert INFO_BY_MESSAGE["stickerMessage"] == INFO_BY_MESSAGE["imageMessage"]
    derived = {derive_keys(key, info) for info in set(INFO_BY_MESSAGE.values())}
    assert len(derived) == 4


@pytest.mark.parametrize("kind", ["videoMessage", "audioMessage", "documentMessage"])
def test_large_file_of_each_type_round_trips(tmp_path: Path, kind: str) -> None:
    plaintext = os.urandom(3 * 1024 * 1024 + 7)  # several read chunks, odd length
    media = encrypt_media(plaintext, INFO_BY_MESSAGE[kind])
    digest, size, out = run(
        tmp_path,
        media.encrypted,
        media.media_key,
        b64(media.file_enc_sha256),
        b64(media.file_sha256),
        info=INFO_BY_MESSAGE[kind],
    )
    assert out == plaintext
    assert (digest, size) == (hashlib.sha256(plaintext).hexdigest(), len(plaintext))


def test_memory_stays_flat_while_decrypting_a_large_file(tmp_path: Path) -> None:
    plaintext = os.urandom(64 * 1024 * 1024)
    media = encrypt_media(plaintext, INFO_BY_MESSAGE["videoMessage"])
    source, target = tmp_path / "in.enc", tmp_path / "out.bin"
    source.write_bytes(media.encrypted)
    expected = hashlib.sha256(plaintext).hexdigest()
    del plaintext
    key, enc_sha, sha = media.media_key, b64(media.file_enc_sha256), b64(media.file_sha256)
    media = None  # drop the in-memory copies before measuring
    tracemalloc.start()
    try:
        digest, size = decrypt_file(source, target, key, INFO_BY_MESSAGE["videoMessage"], enc_sha, sha)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == expected
    assert size == 64 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
