"""Media: keep every attachment before the provider's link expires (issue 4).

- `stage`: `MediaStage`, between the journal and the sinks; retries, ``media.error``.
- `retrieval`: how each provider hands out media (Baileys/Wasender, Evolution, Meta,
  Twilio, WAHA).
- `decrypt`: WhatsApp media decryption (HKDF-SHA256 -> AES-256-CBC, 10-byte MAC).
- `fetch`: streaming HTTP downloads, redirects followed hop by hop.
- `guard`: the SSRF guard (allowed hosts, public addresses only).
- `store`: the local directory and S3/MinIO stores, object keys.
- `errors`: `MediaError` and friends, each with a short, secret-free reason.
"""

from wahookd.media.stage import MediaStage

__all__ = ["MediaStage"]
