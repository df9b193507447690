"""The wire format after DATA: CRLF lines, leading dots doubled, ended by CRLF.CRLF (RFC 5321 4.5.2)."""

from __future__ import annotations

import re

from newsletter.render import RenderedEdition
from newsletter.subscribers import Subscriber


def crlf_only(data: bytes) -> bool:
    """True when every line break is CRLF: no bare CR and no bare LF."""
    lines = data.count(b"\r\n")
    return data.count(b"\n") == lines and data.count(b"\r") == lines


def wire_data(message: bytes) -> bytes:
    """The message as it goes after DATA: CRLF lines, leading dots doubled (RFC 5321 4.5.2), ending with CRLF.CRLF."""
    if not crlf_only(message):
        message = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class Wire:
    """An edition's messages as they go after DATA, built per subscriber from pre-stuffed segments.

    Dot-stuffing and the CRLF check run once per edition on the segments. That is exact when
    no placeholder starts a line and no segment after the first starts with a dot (values are
    single lines and never start or end a line there); otherwise each message goes through
    ``wire_data``. A DKIM signature covers the unstuffed bytes: it is computed over them and
    put before the stuffed message (its header lines never start with a dot).
    """

    def __init__(self, rendered: RenderedEdition) -> None:
        self.rendered = rendered
        segments = rendered.segments
        safe = (
            not segments[0].startswith(b".")
            and all(not s.endswith(b"\n") for s in segments[:-1])
            and all(not s.startswith(b".") for s in segments[1:])
            and all(crlf_only(s) for s in segments)
            and segments[-1].endswith(b"\r\n")
        )
        self.template: bytes | None = None  # the stuffed segments joined by %s: one C call fills in the values
        if safe:
            stuffed = [s.replace(b"\r\n.", b"\r\n..") for s in segments]
            stuffed[-1] += b".\r\n"
            self.template = b"%s".join(s.replace(b"%", b"%%") for s in stuffed)
        self.slots = rendered.slots

    def data_for(self, subscriber: Subscriber, message_id: str = "") -> bytes:
        """The message for one subscriber, dot-stuffed and ended with CRLF.CRLF."""
        if self.template is None:
            return wire_data(self.rendered.message_for(subscriber, message_id))
        values = self.rendered.values_for(subscriber, message_id)
        data = self.template % tuple([values[slot] for slot in self.slots])
        return data if self.rendered.sign is None else self.rendered.signature_for(values) + data
