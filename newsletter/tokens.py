"""Tokens for links in emails: one spelling, nothing inside but a random id and its HMAC.

A link token is 64 lowercase hex characters: a random id (32) and an HMAC-SHA256 over
(purpose, list id, that id) with NEWSLETTER_SECRET, truncated to 128 bits (32). The id is a
subscriber's ``public_id`` (unsubscribe and preference links) or a sign-up request's id
(confirmation links); the web side looks it up in the state database. So a token tells a
proxy or an analytics log nothing about its reader, and any other spelling (upper case,
padding, spaces, an inserted byte) is refused before the HMAC is even computed.

The old form (``make_token``/``read_token``: the address in base64 with an HMAC) is still
read, for links already in readers' inboxes, during ``web.legacy_link_days``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime, timedelta

LINK_TOKEN = re.compile(r"[0-9a-f]{64}")  # the only spelling; re.fullmatch, so no newline slips through
LINK_ID = re.compile(r"[0-9a-f]{32}")
NO_ID = "0" * 32  # stands for "no subscriber" (a sample or a test copy to an address not on the list)


def _link_mac(secret: str, purpose: str, list_id: str, link_id: str) -> str:
    message = "\0".join(("link", purpose, list_id, link_id)).encode("utf-8")
    return hmac.digest(secret.encode("utf-8"), message, "sha256").hex()[:32]  # one call into OpenSSL


def make_link_token(secret: str, list_id: str, link_id: str, purpose: str) -> str:
    """Return the token of an id (32 lowercase hex) for one purpose: 'unsubscribe', 'confirm', 'preferences'."""
    if not LINK_ID.fullmatch(link_id):
        raise ValueError(f"a link id is 32 lowercase hex characters, not {link_id!r}")
    return link_id + _link_mac(secret, purpose, list_id, link_id)


def read_link_token(secret: str, list_id: str, token: object, purpose: str) -> str | None:
    """Return the id of a valid token, or None for anything else (forged, altered, respelled, another purpose, NO_ID)."""
    link_id = _signed_id(secret, list_id, token, purpose)
    return None if link_id == NO_ID else link_id


def is_sample_token(secret: str, list_id: str, token: object, purpose: str) -> bool:
    """Whether a token is ours for no subscriber (NO_ID): a link of a sample or of a test copy to an address not on the list."""
    return _signed_id(secret, list_id, token, purpose) == NO_ID


def _signed_id(secret: str, list_id: str, token: object, purpose: str) -> str | None:
    """The id of a token in its one spelling whose HMAC is ours for this purpose (NO_ID included); else None."""
    if not isinstance(token, str) or not LINK_TOKEN.fullmatch(token):
        return None
    link_id, mac = token[:32], token[32:]
    return link_id if hmac.compare_digest(mac, _link_mac(secret, purpose, list_id, link_id)) else None


def legacy_accepted(since: datetime, now: datetime, days: float) -> bool:
    """Whether old-form links are still read: for ``days`` after the new form was first used."""
    return now < since + timedelta(days=days)


# The old form: the address inside. Read during the grace period; made only by tests and old links.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, list_id: str, email: str, expires: int) -> bytes:
    message = "\0".join((purpose, list_id, email.lower(), str(expires))).encode("utf-8")
    return hmac.digest(secret.encode("utf-8"), message, hashlib.sha256)[:18]


def make_token(secret: str, email: str, list_id: str, *, purpose: str = "unsubscribe", expires: int = 0) -> str:
    """Return an old-form token (the address in base64); expires is a Unix time, 0 for never."""
    payload = _b64(email.encode("utf-8"))
    stamp = f".{expires:x}" if expires else ""
    return f"{payload}{stamp}.{_b64(_mac(secret, purpose, list_id, email, expires))}"


def read_token(
    secret: str, token: str, list_id: str, *, purpose: str = "unsubscribe", now: float | None = None
) -> str | None:
    """Return the address of a valid old-form token, or None if it is forged, altered, malformed or expired."""
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
    if token != make_token(secret, email, list_id, purpose=purpose, expires=expires):
        return None  # one spelling only: no padding, no '.0.', no spaces
    return email
