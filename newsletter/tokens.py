"""Signed tokens for links in emails: unsubscribe (no expiry) and sign-up confirmation (expiring).

A token carries the address it is for, so the web side needs no lookup table, and an
HMAC-SHA256 over (purpose, list id, address, expiry) with NEWSLETTER_SECRET, so that it
cannot be forged or altered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, list_id: str, email: str, expires: int) -> bytes:
    message = "\0".join((purpose, list_id, email.lower(), str(expires))).encode("utf-8")
    return hmac.digest(secret.encode("utf-8"), message, hashlib.sha256)[:18]


def make_token(secret: str, email: str, list_id: str, *, purpose: str = "unsubscribe", expires: int = 0) -> str:
    """Return a URL-safe token for an address; expires is a Unix time, 0 for never."""
    payload = _b64(email.encode("utf-8"))
    stamp = f".{expires:x}" if expires else ""
    return f"{payload}{stamp}.{_b64(_mac(secret, purpose, list_id, email, expires))}"


def read_token(
    secret: str, token: str, list_id: str, *, purpose: str = "unsubscribe", now: float | None = None
) -> str | None:
    """Return the address of a valid token, or None if it is forged, altered, malformed or expired."""
    parts = token.strip().split(".")
    if len(parts) not in (2, 3):
        return None
    try:
        email = _unb64(parts[0]).decode("utf-8")
        expires = int(parts[1], 16) if len(parts) == 3 else 0
        signature = _unb64(parts[-1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(signature, _mac(secret, purpose, list_id, email, expires)):
        return None
    if expires and (now is None or now > expires):
        return None
    return email
