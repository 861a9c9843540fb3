"""WhatsApp end-to-end media decryption (Baileys-style payloads: Wasender, Evolution).

WhatsApp stores media encrypted on its CDN (``mmg.whatsapp.net``); the message carries the
``mediaKey``. HKDF-SHA256(mediaKey, salt=b"", info by media type, 112 bytes) gives
``iv[0:16]``, ``cipherKey[16:48]`` and ``macKey[48:80]``. The downloaded file is
AES-256-CBC/PKCS7 ciphertext followed by a 10-byte MAC, the first 10 bytes of
HMAC-SHA256(macKey, iv + ciphertext).

Checks run in the order the issue requires — ``fileEncSha256`` (the whole downloaded file),
then the MAC, then decryption, then ``fileSha256`` (the plaintext) — and a mismatch raises
`MediaIntegrityError`; nothing half-checked is ever returned as a stored file.
Both passes stream in chunks so a 100 MB video never sits in memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from wahookd.media.errors import MediaIntegrityError

MAC_LENGTH = 10
CHUNK = 256 * 1024

# HKDF "info" per Baileys message type; stickers share the image keys.
INFO_BY_MESSAGE = {
    "imageMessage": b"WhatsApp Image Keys",
    "stickerMessage": b"WhatsApp Image Keys",
    "videoMessage": b"WhatsApp Video Keys",
    "ptvMessage": b"WhatsApp Video Keys",
    "audioMessage": b"WhatsApp Audio Keys",
    "documentMessage": b"WhatsApp Document Keys",
}


@dataclass(frozen=True, slots=True)
class MediaKeys:
    """The three keys HKDF derives from one ``mediaKey``."""

    iv: bytes
    cipher_key: bytes
    mac_key: bytes


def derive_keys(media_key: bytes, info: bytes) -> MediaKeys:
    """HKDF-SHA256(mediaKey, salt=empty, info, 112) split into iv, cipher key and MAC key."""
    # cryptography is imported where it is used: a daemon without encrypted media need not
    # carry its ~6 MB.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(media_key) != 32:
        raise MediaIntegrityError("mediaKey is not 32 bytes")
    expanded = HKDF(algorithm=hashes.SHA256(), length=112, salt=None, info=info).derive(media_key)
    return MediaKeys(iv=expanded[:16], cipher_key=expanded[16:48], mac_key=expanded[48:80])


def decode_b64(value: object, name: str) -> bytes | None:
    """A base64 field of the Baileys message (None when absent); malformed is an error."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MediaIntegrityError(f"{name} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MediaIntegrityError(f"{name} is not base64") from None


def decrypt_file(
    encrypted: Path,
    plaintext: Path,
    media_key: bytes,
    info: bytes,
    file_enc_sha256: bytes | None,
    file_sha256: bytes | None,
) -> tuple[str, int]:
    """Verify and decrypt `encrypted` into `plaintext`; returns (sha256 hex, size).

    Blocking (disk and CPU): run it in a worker thread.
    """
    keys = derive_keys(media_key, info)
    total = encrypted.stat().st_size
    body_length = total - MAC_LENGTH
    # AES-CBC ciphertext is a non-empty multiple of the 16-byte block.
    if body_length <= 0 or body_length % 16:
        raise MediaIntegrityError("encrypted file has an impossible length")

    # Pass 1: the hash of the whole file, and the MAC over iv + ciphertext.
    whole = hashlib.sha256()
    mac = hmac.new(keys.mac_key, keys.iv, hashlib.sha256)
    with encrypted.open("rb") as source:
        remaining = body_length
        while remaining:
            chunk = source.read(min(CHUNK, remaining))
            if not chunk:
                raise MediaIntegrityError("encrypted file shrank while reading")
            remaining -= len(chunk)
            whole.update(chunk)
            mac.update(chunk)
        tag = source.read(MAC_LENGTH)
        whole.update(tag)
    if file_enc_sha256 is not None and not hmac.compare_digest(whole.digest(), file_enc_sha256):
        # A CDN can hand out a truncated or stale object; a fresh download may be fine.
        raise MediaIntegrityError("fileEncSha256 mismatch", retry=True)
    if not hmac.compare_digest(mac.digest()[:MAC_LENGTH], tag):
        raise MediaIntegrityError("MAC mismatch")

    # Pass 2: decrypt and hash the plaintext.
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    digest = hashlib.sha256()
    size = 0
    with encrypted.open("rb") as source, plaintext.open("wb") as sink:
        remaining = body_length
        while remaining:
            chunk = source.read(min(CHUNK, remaining))
            remaining -= len(chunk)
            data = unpadder.update(decryptor.update(chunk))
            digest.update(data)
            sink.write(data)
            size += len(data)
        try:
            data = unpadder.update(decryptor.finalize()) + unpadder.finalize()
        except ValueError:
            raise MediaIntegrityError("bad padding") from None
        digest.update(data)
        sink.write(data)
        size += len(data)
    if file_sha256 is not None and not hmac.compare_digest(digest.digest(), file_sha256):
        raise MediaIntegrityError("fileSha256 mismatch")
    return digest.hexdigest(), size
