"""DKIM signing (RFC 6376): every message carries a signature over its identity and unsubscribe headers.

RFC 8058 requires List-Unsubscribe and List-Unsubscribe-Post to be covered by the signature,
so a mailbox provider can trust the one-click link. Canonicalization is relaxed/relaxed,
done here with a few byte operations per message; the signature itself is made by OpenSSL
through ``cryptography`` (RSA-SHA256, and Ed25519-SHA256 of RFC 8463 beside it when
``dkim.ed25519_key`` is set), with the keys loaded once per run. dkimpy, an independent
implementation, verifies what we sign in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

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
INCLUDED = tuple(name.lower() for name in (*SIGNED_HEADERS, *OVERSIGNED_HEADERS))

_WSP = re.compile(rb" [ \t]+|\t[ \t]*")  # runs to collapse: single spaces (most of them) are left alone


@dataclass(frozen=True)
class DkimKey:
    """A loaded private key and where its public half is published (selector._domainkey.domain)."""

    domain: bytes
    selector: bytes
    algorithm: bytes  # b"rsa-sha256" or b"ed25519-sha256"
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def sign(self, digest: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.key.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 of the signed data


def signer(settings: Settings) -> Callable[[bytes], bytes] | None:
    """Return a function that DKIM-signs a message, or None when [dkim] is not configured."""
    if not settings.dkim_enabled:
        return None
    dkim = settings.dkim
    domain = dkim.domain.encode()
    keys = [DkimKey(domain, dkim.selector.encode(), b"rsa-sha256", load_key("dkim.private_key", dkim.private_key))]
    if dkim.ed25519_key:
        selector = (dkim.ed25519_selector or f"{dkim.selector}-ed25519").encode()
        keys.append(DkimKey(domain, selector, b"ed25519-sha256", load_key("dkim.ed25519_key", dkim.ed25519_key)))

    def sign(message: bytes, body_hash: bytes | None = None, headers: bytes | None = None) -> bytes:
        now = int(time.time())
        return b"".join(signature(message, key, now, body_hash, headers) for key in keys) + message

    return sign


def load_key(field: str, path: Path | None) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """Read a PEM private key (RSA for dkim.private_key, Ed25519 for dkim.ed25519_key), or raise ConfigError."""
    try:
        data = path.read_bytes() if path else b""
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{field}: {path} is not a usable PEM private key ({exc})") from None
    wanted = rsa.RSAPrivateKey if field == "dkim.private_key" else ed25519.Ed25519PrivateKey
    if not isinstance(key, wanted):
        kind = "an RSA" if wanted is rsa.RSAPrivateKey else "an Ed25519"
        raise ConfigError(f"{field}: {path} is not a usable PEM private key (it must be {kind} key)")
    return key


def signature(
    message: bytes, key: DkimKey, now: int, body_hash: bytes | None = None, headers: bytes | None = None
) -> bytes:
    """The DKIM-Signature header field (folded, ending with CRLF) of a CRLF message.

    ``body_hash`` (base64, from ``body_hasher``) saves canonicalizing the body again, and
    ``headers`` (from ``header_canonicalizer``: the signed fields, canonical, in h= order) the head.
    """
    head, _, body = message.partition(b"\r\n\r\n")
    body_hash = body_hash or base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    stamp = str(now).encode()
    folded, canonical = _signature_field(key.algorithm, key.domain, key.selector, len(stamp), len(body_hash))
    unsigned = folded.replace(_STAMP * len(stamp), stamp).replace(_BODY_HASH * len(body_hash), body_hash)
    if headers is None:
        headers = canonical_headers(head)
    hasher = hashlib.sha256(headers)
    hasher.update(canonical.replace(_STAMP * len(stamp), stamp).replace(_BODY_HASH * len(body_hash), body_hash))
    signed = base64.b64encode(key.sign(hasher.digest()))
    return b"DKIM-Signature: " + unsigned + _fold_b(signed) + b"\r\n"


_STAMP, _BODY_HASH = b"\x00", b"\x01"  # placeholders, repeated to the length of t= and bh=


@lru_cache(maxsize=16)
def _signature_field(
    algorithm: bytes, domain: bytes, selector: bytes, stamp_length: int, hash_length: int
) -> tuple[bytes, bytes]:
    """The DKIM-Signature value without b='s value, folded, and its relaxed canonical form (as hashed).

    Both with placeholders of the right length for t= and bh=: folding depends only on the
    lengths, and neither value has whitespace for canonicalization to change, so a message
    only substitutes its own values (no folding or canonicalizing per message).
    """
    fields = [
        (b"v", b"1"), (b"a", algorithm), (b"c", b"relaxed/relaxed"), (b"d", domain),
        (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", selector), (b"t", _STAMP * stamp_length),
        (b"h", b" : ".join(INCLUDED)), (b"bh", _BODY_HASH * hash_length),
    ]  # fmt: skip
    folded = _fold(b"; ".join(b"=".join(f) for f in fields) + b"; b=")
    return folded, relaxed_header(b"DKIM-Signature", b" " + folded).removesuffix(b"\r\n")


def canonical_headers(head: bytes) -> bytes:
    """The signed header fields of a message head, relaxed-canonical, in the order of h= (INCLUDED)."""
    return b"".join(relaxed_header(name, value) for name, value in select_headers(parse_headers(head), INCLUDED))


def parse_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a message head as (name, raw value with its folding)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields


def select_headers(fields: list[tuple[bytes, bytes]], names: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    """The fields to sign, in the order of ``names``: each name takes the last unused instance (RFC 6376 5.4.2)."""
    chosen = []
    last: dict[bytes, int] = {}
    for wanted in names:
        i = last.get(wanted, len(fields))
        while i > 0:
            i -= 1
            if fields[i][0].lower() == wanted:
                chosen.append(fields[i])
                break
        last[wanted] = i
    return chosen


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """Relaxed header canonicalization (RFC 6376 3.4.2): lower-case name, unfolded, one space for each run."""
    return name.strip().lower() + b":" + _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" \t") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """Relaxed body canonicalization (RFC 6376 3.4.4) of a CRLF body."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = _WSP.sub(b" ", body).replace(b" \r\n", b"\r\n").rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _fold(value: bytes, width: int = 76) -> bytes:
    """Fold a tag list at '; ' so no line is longer than ``width`` (the tags' values have no spaces)."""
    lines, line = [], b"DKIM-Signature:"
    for part in value.split(b" "):
        if len(line) + 1 + len(part) > width:
            lines.append(line)
            line = b"\t" + part
        else:
            line += b" " + part
    lines.append(line)
    return b"\r\n".join(lines)[len(b"DKIM-Signature: ") :]


def _fold_b(signature: bytes, width: int = 72) -> bytes:
    """The b= value, on lines of its own (folding inside b= is allowed: whitespace there is ignored)."""
    return b"".join(b"\r\n\t" + signature[i : i + width] for i in range(0, len(signature), width))


_TOKEN = b"XXNEWSLETTER%bXX"
_TOKENS = re.compile(rb"XXNEWSLETTER([A-Z]+)XX")
_UNSAFE_VALUE = re.compile(rb"[\t\r\n]|  |^ | $")


def _filler(canonical: bytes, slots: tuple[bytes, ...]) -> Callable[[dict[bytes, bytes]], list[bytes] | None] | None:
    """Split a canonicalized template at its placeholder tokens; a function that fills it with clean values, else None.

    ``slots`` are the placeholders the template must hold, in order. An empty value is safe
    only between two characters that canonicalization leaves alone.
    """
    pieces = _TOKENS.split(canonical)
    parts, found = pieces[0::2], tuple(pieces[1::2])
    if found != slots:
        return None
    soft = (b"", b" ", b"\t", b"\r", b"\n")
    hard = [
        before[-1:] not in soft and after[:1] not in soft for before, after in zip(parts[:-1], parts[1:], strict=True)
    ]

    def fill(values: dict[bytes, bytes]) -> list[bytes] | None:
        out = [parts[0]]
        for i, slot in enumerate(slots):
            value = values[slot]
            if _UNSAFE_VALUE.search(value) or not (value or hard[i]):
                return None
            out.append(value)
            out.append(parts[i + 1])
        return out

    return fill


def _tokened(
    segments: tuple[bytes, ...], slots: tuple[bytes, ...]
) -> tuple[bytes, tuple[bytes, ...], bytes, tuple[bytes, ...]] | None:
    """The message with a token for each placeholder: its head, the head's placeholders, its body and the body's; None without a body."""
    first = next((i for i, segment in enumerate(segments) if b"\r\n\r\n" in segment), None)
    if first is None:
        return None
    whole = segments[0] + b"".join(_TOKEN % slot + segment for slot, segment in zip(slots, segments[1:], strict=True))
    head, _, body = whole.partition(b"\r\n\r\n")
    return head, slots[:first], body, slots[first:]


def header_canonicalizer(
    segments: tuple[bytes, ...], slots: tuple[bytes, ...]
) -> Callable[[dict[bytes, bytes]], bytes | None] | None:
    """The signed header fields of an edition's messages, canonicalized once from the segments; None if unsafe.

    The same reasoning as ``body_hasher``: a clean one-line value changes no run of
    whitespace and no line end, so the canonical fields of a message are the canonical
    template's fields joined with its values. A function answering None for a value that is
    not clean (the head is then canonicalized whole).
    """
    template = _tokened(segments, slots)
    if template is None or sorted(_TOKENS.findall(template[0])) != sorted(template[1]):
        return None  # no body, or the head's text holds something that reads as a placeholder
    canonical = canonical_headers(template[0])
    used = tuple(_TOKENS.findall(canonical))
    fill = _filler(canonical, used)
    if fill is None:
        return None

    def headers(values: dict[bytes, bytes]) -> bytes | None:
        parts = fill(values)
        return None if parts is None else b"".join(parts)

    return headers


def body_hasher(
    segments: tuple[bytes, ...], slots: tuple[bytes, ...]
) -> Callable[[dict[bytes, bytes]], bytes | None] | None:
    """The relaxed body hash of an edition's messages from its segments, canonicalized once; None if unsafe.

    Relaxed canonicalization changes only runs of whitespace and line ends. A value without
    tabs, line breaks, double spaces or spaces at its ends (a clean one-line value, as
    ``values_for`` makes them) cannot change them, and an empty one cannot either where its
    placeholder sits between two characters that are neither: then the canonical body is
    the canonical segments joined with the values. Otherwise the hasher answers None and
    the message is canonicalized whole.
    """
    template = _tokened(segments, slots)
    if template is None:
        return None
    _, _, body, body_slots = template
    fill = _filler(relaxed_body(body), body_slots)
    if fill is None:
        return None

    def body_hash(values: dict[bytes, bytes]) -> bytes | None:
        parts = fill(values)
        if parts is None:
            return None
        hasher = hashlib.sha256()
        for part in parts:
            hasher.update(part)
        return base64.b64encode(hasher.digest())

    return body_hash
