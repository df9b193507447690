"""Read delivery status notifications (RFC 3464) and suppress addresses that bounced for good.

``inbox.py`` calls ``dsn_outcomes`` for each report it finds in the bounce mailbox;
``import_bounce`` reads one ``.eml`` file on its own.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from datetime import date
from email.message import Message
from pathlib import Path
from typing import cast

from newsletter import state
from newsletter.ledger import DatabaseLedger
from newsletter.storage import Database


@dataclass(frozen=True)
class Outcome:
    """What one message said about one address, and what was done about it."""

    action: str  # "suppressed" | "temporary" | "complained" | "unsubscribed" | "ignored" | "error"
    address: str
    detail: str

    def __str__(self) -> str:
        who = f" {self.address}" if self.address else ""
        return f"{self.action}{who}: {self.detail}"


@dataclass(frozen=True)
class BounceReport:
    """What one DSN file said, and what we did about it."""

    path: Path
    action: str  # "suppressed" | "temporary" | "ignored" | "error"
    address: str
    detail: str

    def __str__(self) -> str:
        who = f" {self.address}" if self.address else ""
        return f"{self.path}: {self.action}{who}: {self.detail}"


def _parts(message: Message, content_type: str) -> list[Message]:
    return [part for part in message.walk() if part.get_content_type() == content_type]


def _status_fields(message: Message) -> list[Message]:
    """Return the per-recipient field groups of the message/delivery-status part."""
    for part in _parts(message, "message/delivery-status"):
        payload = part.get_payload()
        if isinstance(payload, list) and len(payload) > 1:
            # typeshed types a multipart payload as list[Message | str]; the parser puts only Messages there
            return cast(list[Message], payload[1:])  # the first group is per-message
    return []


def _original(message: Message) -> Message | None:
    """The returned message (or its headers) inside a report: message/rfc822 or text/rfc822-headers."""
    for kind in ("message/rfc822", "text/rfc822-headers"):
        for part in _parts(message, kind):
            payload = part.get_payload()
            if isinstance(payload, list):
                # typeshed: list[Message | str]; a parsed multipart payload holds only Messages
                return cast(Message, payload[0]) if payload else None
            return email.message_from_string(str(payload))
    return None


def original_header(message: Message, name: str) -> str:
    """A header of the returned message inside a report, or ''."""
    inner = _original(message)
    return str(inner.get(name, "")).strip() if inner is not None else ""


def original_message_id(message: Message) -> str:
    return original_header(message, "Message-ID")


def _address(field: str) -> str:
    """'rfc822; ada@example.com' -> 'ada@example.com'."""
    return field.split(";", 1)[-1].strip().strip("<>")


def import_bounce(path: Path, conn: Database) -> list[BounceReport]:
    """Read one DSN file; suppress every recipient in it that failed permanently (5.x.x)."""
    try:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    except OSError as exc:
        return [BounceReport(path, "error", "", f"cannot read: {exc.strerror}")]
    return [BounceReport(path, o.action, o.address, o.detail) for o in dsn_outcomes(message, conn)]


def dsn_outcomes(message: Message, conn: Database, ledger: DatabaseLedger | None = None) -> list[Outcome]:
    """Act on a parsed DSN: suppress every recipient that failed permanently; one outcome per recipient."""
    if message.get_content_type() != "multipart/report" or message.get_param("report-type") != "delivery-status":
        return [
            Outcome("ignored", "", "not a delivery status notification (multipart/report; report-type=delivery-status)")
        ]
    groups = _status_fields(message)
    if not groups:
        return [Outcome("ignored", "", "no per-recipient delivery status")]
    ledger = ledger or DatabaseLedger(conn)
    found = ledger.find_message(original_message_id(message))
    return [_recipient(conn, ledger, group, found, alone=len(groups) == 1) for group in groups]


def _recipient(
    conn: Database, ledger: DatabaseLedger, group: Message, found: tuple[date, str] | None, alone: bool
) -> Outcome:
    """Act on one recipient's status group of a report."""
    status = str(group.get("Status", "")).strip()
    action = str(group.get("Action", "")).strip().lower()
    recipient = _address(str(group.get("Final-Recipient") or group.get("Original-Recipient") or "")).lower()
    # each of our messages goes to one address: its Message-ID names that address even when the
    # report shows another one (a forwarding mailbox); with several recipients, each must match
    row = found if found is not None and (alone or recipient == found[1].lower()) else None
    address = row[1] if row else recipient
    if not address:
        return Outcome("ignored", "", "no recipient and no known Message-ID")
    diagnostic = " ".join(str(group.get("Diagnostic-Code", "")).split()) or status
    if action == "failed" and status.startswith("5"):
        if row:
            ledger.bounce(row[0], address, diagnostic)  # the row and the suppression in one transaction
        else:
            state.suppress(conn, address, "bounced", diagnostic)
        return Outcome("suppressed", address, f"permanent failure {status}")
    if action in ("delivered", "relayed", "expanded"):
        return Outcome("ignored", address, f"{action} {status}: not a failure")
    return Outcome("temporary", address, f"{action or 'unknown action'} {status}; not suppressed")
