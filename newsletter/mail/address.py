"""Addresses as they go on the wire: domains in IDNA A-labels, local parts as written (SMTPUTF8 when not ASCII)."""

from __future__ import annotations

import re
from email.utils import formataddr
from functools import lru_cache

import idna


def wire_address(address: str) -> str:
    """The address for the envelope and the headers: its domain in A-labels (``x@xn--bcher-kva.de``).

    Raise ValueError for a domain that has no A-label form.
    """
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    return f"{local}@{a_labels(domain)}"


@lru_cache(maxsize=4096)
def a_labels(domain: str) -> str:
    """The domain in IDNA 2008 A-labels (RFC 5891, with UTS 46 mapping); ASCII domains unchanged."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"the domain {domain!r} has no IDNA form: {exc}") from exc


def header_address(name: str, address: str) -> bytes:
    """A To: or From: value: the display name RFC 2047-encoded when needed, the address as given.

    An address with a non-ASCII local part goes as UTF-8 (RFC 6532): only over SMTPUTF8.
    """
    if address.isascii():
        if not name:
            return address.encode("ascii")
        if name.isascii() and not _SPECIALS.search(name):  # what formataddr leaves as it is
            return f"{name} <{address}>".encode("ascii")
        return formataddr((name, address), charset="utf-8").encode("ascii", "surrogateescape")
    if not name:
        return address.encode("utf-8")
    shown = formataddr((name, "a@b"), charset="utf-8").removesuffix("<a@b>")
    return shown.encode("ascii", "surrogateescape") + b"<" + address.encode("utf-8") + b">"


_SPECIALS = re.compile(r'[][\\()<>@,:;".\x00-\x1f\x7f]')  # email.utils' specials, and controls: formataddr decides
