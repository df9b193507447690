"""DKIM signing (dkimpy): every message carries a signature over its identity and unsubscribe headers.

RFC 8058 requires List-Unsubscribe and List-Unsubscribe-Post to be covered by the signature,
so a mailbox provider can trust the one-click link.
"""

from __future__ import annotations

from collections.abc import Callable

import dkim

from newsletter.config import Settings
from newsletter.errors import ConfigError

SIGNED_HEADERS = (
    b"From", b"To", b"Subject", b"Date", b"Message-ID", b"Reply-To", b"List-Id",
    b"List-Unsubscribe", b"List-Unsubscribe-Post", b"MIME-Version", b"Content-Type",
)  # fmt: skip
# Listed once more than they occur (RFC 6376 section 8.15, "oversigning"): a copy added in
# transit, such as a second List-Unsubscribe pointing elsewhere, breaks the signature.
OVERSIGNED_HEADERS = (
    b"From", b"To", b"Subject", b"Reply-To", b"List-Id", b"List-Unsubscribe", b"List-Unsubscribe-Post",
)  # fmt: skip


def signer(settings: Settings) -> Callable[[bytes], bytes] | None:
    """Return a function that DKIM-signs a message, or None when [dkim] is not configured."""
    if not settings.dkim_enabled:
        return None
    path = settings.dkim.private_key
    try:
        key = path.read_bytes() if path else b""
    except OSError as exc:
        raise ConfigError(f"dkim.private_key: cannot read {path}: {exc.strerror}") from None
    selector, domain = settings.dkim.selector.encode(), settings.dkim.domain.encode()
    try:
        dkim.sign(b"From: a@b.c\r\nSubject: test\r\n\r\nbody\r\n", selector, domain, key, include_headers=[b"From"])
    except (dkim.DKIMException, ValueError, IndexError) as exc:
        raise ConfigError(f"dkim.private_key: {path} is not a usable PEM private key ({exc})") from None

    def sign(message: bytes) -> bytes:
        signature = dkim.sign(message, selector, domain, key, include_headers=[*SIGNED_HEADERS, *OVERSIGNED_HEADERS])
        return signature + message

    return sign
