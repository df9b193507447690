"""The bounce mailbox, read: delivery status notifications, complaint reports and mailto unsubscribes.

``newsletter inbox import PATH...`` takes ``.eml`` files and Maildir folders (what an MTA
delivers the bounce mailbox into). Each message is handled once: its key (the Message-ID,
else a digest of its bytes) is recorded in the state database in the same transaction as
what it changed, and a Maildir message is then moved to ``cur`` with the Seen flag. A second
import of the same message changes nothing and says so.

``newsletter prune`` deletes the records handled more than ``keep_days`` ago
(``retention.forget_inbox``), while the message may still be in the mailbox: a message
dated before the horizon that prune leaves (``retention.inbox_horizon``) is therefore
ignored, not acted on again. A message without a readable ``Date`` header is recognized
only while its record lives.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import cast

from newsletter import bounces, retention, state
from newsletter.bounces import Outcome
from newsletter.config import Settings
from newsletter.ledger import DatabaseLedger
from newsletter.storage import Database, utc_text

SEEN = "S"  # the Maildir flag set on a handled message (cur/KEY:2,S)


@dataclass(frozen=True)
class Report:
    """One message of an import: where it was, what it changed, whether an earlier import had handled it."""

    source: str
    outcomes: tuple[Outcome, ...]
    handled_before: str = ""  # when it was handled first; empty for a message new to us

    def lines(self) -> list[str]:
        if self.handled_before:
            return [f"{self.source}: already handled on {self.handled_before}; nothing changed"]
        return [f"{self.source}: {outcome}" for outcome in self.outcomes]


@dataclass(frozen=True)
class _Item:
    """A message found in a path: its bytes, and for a Maildir message how to mark it handled."""

    source: str
    data: bytes | None  # None when it could not be read
    error: str = ""
    maildir_file: Path | None = None


def import_paths(paths: list[Path], settings: Settings, conn: Database, now: datetime | None = None) -> list[Report]:
    """Handle every message of every path (.eml file or Maildir folder), each message once.

    ``now`` (aware; default the clock) is when they are recorded as handled.
    """
    reader = _Reader(settings, conn, now or datetime.now(UTC))
    return [reader.handle(item) for path in paths for item in _items(path)]


def summary(reports: list[Report]) -> str:
    """'3 messages: 1 suppressed, 1 complained, 1 unsubscribed' (and what was handled before)."""
    counts: dict[str, int] = {"suppressed": 0, "complained": 0, "unsubscribed": 0}
    for report in reports:
        if not report.handled_before:
            for outcome in report.outcomes:
                if outcome.action in counts:
                    counts[outcome.action] += 1
    parts = [f"{count} {action}" for action, count in counts.items() if count or action == "suppressed"]
    text = f"{len(reports)} message{'' if len(reports) == 1 else 's'}: {', '.join(parts)}"
    before = sum(1 for r in reports if r.handled_before)
    if before:
        text += f"; {before} already handled" + (", nothing changed" if before == len(reports) else "")
    return text


def failed(reports: list[Report]) -> bool:
    return any(o.action == "error" for r in reports for o in r.outcomes)


# Finding the messages -----------------------------------------------------------------------------


def _items(path: Path) -> Iterator[_Item]:
    if path.is_dir():
        yield from _maildir_items(path)
        return
    try:
        yield _Item(str(path), path.read_bytes())
    except OSError as exc:
        yield _Item(str(path), None, f"cannot read: {exc.strerror}")


def _maildir_items(folder: Path) -> Iterator[_Item]:
    """Every message in new/ and cur/ of a Maildir, oldest name first; tmp/ is still being written."""
    if not all((folder / sub).is_dir() for sub in ("new", "cur", "tmp")):
        yield _Item(str(folder), None, "not a Maildir (a folder with cur, new and tmp) and not a file")
        return
    files = [folder / sub / name for sub in ("new", "cur") for name in sorted(os.listdir(folder / sub))]
    for file in files:  # listed first: handled messages move into cur/ while we go
        if not file.name.startswith(".") and file.is_file():
            try:
                yield _Item(str(file), file.read_bytes(), maildir_file=file)
            except OSError as exc:  # removed meanwhile, or unreadable
                yield _Item(str(file), None, f"cannot read: {exc.strerror}")


def mark_seen(file: Path) -> Path:
    """Move a Maildir message to cur/ with the Seen flag (one atomic rename); return its new path."""
    key, _, info = file.name.partition(":")
    flags = info[2:] if info.startswith("2,") else ""
    if file.parent.name == "cur" and SEEN in flags:
        return file
    target = file.parent.parent / "cur" / f"{key}:2,{''.join(sorted(set(flags + SEEN)))}"
    os.replace(file, target)
    return target


def message_key(data: bytes, message: Message) -> str:
    """What identifies a message across imports: its Message-ID, else the digest of its bytes."""
    message_id = " ".join(str(message.get("Message-ID", "")).split())
    return f"id:{message_id}" if message_id else f"sha256:{hashlib.sha256(data).hexdigest()}"


# Handling one message ----------------------------------------------------------------------------


class _Reader:
    """Handles messages against one state database; knows the unsubscribe address."""

    def __init__(self, settings: Settings, conn: Database, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        self.settings, self.conn = settings, conn
        self.handled_at = utc_text(now)
        self.ledger = DatabaseLedger(conn)
        self.unsubscribe_address = settings.unsubscribe_address.lower()
        # when the mailto address is also From or Reply-To, replies land there too: only a subject asking counts
        self.dedicated = self.unsubscribe_address not in {
            settings.sender.address.lower(),
            settings.sender.reply_to.lower(),
        }

    def handle(self, item: _Item) -> Report:
        if item.data is None:
            return Report(item.source, (Outcome("error", "", item.error),))
        message = email.message_from_bytes(item.data, policy=email.policy.compat32)
        key = message_key(item.data, message)
        with self.conn.transaction():
            before = self.conn.execute("SELECT handled_at FROM inbox_messages WHERE key = ?", (key,)).fetchone()
            if before is not None:
                report = Report(item.source, (), before[0][:10])
            else:
                report = Report(item.source, tuple(self._outcomes(message)))
                self.conn.execute(
                    "INSERT INTO inbox_messages (key, outcome, handled_at) VALUES (?, ?, ?)",
                    (key, "; ".join(map(str, report.outcomes))[:500], self.handled_at),
                )
        if item.maildir_file is not None:
            mark_seen(item.maildir_file)
        return report

    def _outcomes(self, message: Message) -> list[Outcome]:
        too_old = self._too_old(message)
        if too_old:
            return [Outcome("ignored", "", too_old)]
        report_type = str(message.get_param("report-type") or "").lower()
        if message.get_content_type() == "multipart/report" and report_type == "delivery-status":
            return bounces.dsn_outcomes(message, self.conn, self.ledger)
        if message.get_content_type() == "multipart/report" and report_type == "feedback-report":
            return [self._complaint(message)]
        if self._to_unsubscribe_address(message):
            return [self._mailto_unsubscribe(message)]
        return [
            Outcome(
                "ignored",
                "",
                "not a delivery status notification, a complaint report or a mail to "
                f"{self.settings.unsubscribe_address}",
            )
        ]

    def _too_old(self, message: Message) -> str:
        """Why a message is too old to act on ('' if it is not): dated before the inbox's horizon.

        Read after the message's record was looked for, so a prune committed in between is seen.
        """
        horizon = retention.inbox_horizon(self.conn)
        dated = _date_of(message)
        if horizon is None or dated is None or dated >= horizon:
            return ""
        return (
            f"dated {dated.date().isoformat()}, before {horizon.date().isoformat()}: the inbox records of "
            "its time were pruned (database.keep_days), so it may have been handled already; not acted on"
        )

    # Complaint reports (ARF, RFC 5965)

    def _complaint(self, message: Message) -> Outcome:
        fields = _feedback_fields(message)
        kind = str(fields.get("Feedback-Type", "")).strip().lower()
        found = self.ledger.find_message(bounces.original_message_id(message))
        address = (found[1] if found else "") or _plain(str(fields.get("Original-Rcpt-To", "")))
        address = address or _plain(bounces.original_header(message, "To"))
        if not address:
            return Outcome("ignored", "", "complaint report naming no recipient and no Message-ID of ours")
        if kind == "not-spam":
            return Outcome("ignored", address.lower(), "a not-spam report: not a complaint")
        reporter = _plain(str(fields.get("Reporting-MTA") or "")) or str(fields.get("User-Agent") or "").strip()
        detail = f"{kind or 'unspecified'} report" + (f" from {reporter}" if reporter else "")
        state.suppress(self.conn, address, "complained", detail)
        return Outcome("complained", address.lower(), f"{detail}; suppressed")

    # Mail to the List-Unsubscribe mailto address

    def _to_unsubscribe_address(self, message: Message) -> bool:
        headers = ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To")
        recipients = {
            addr.lower() for _, addr in getaddresses([str(v) for h in headers for v in message.get_all(h, [])])
        }
        if self.unsubscribe_address not in recipients:
            return False
        return self.dedicated or "unsubscribe" in str(message.get("Subject", "")).lower()

    def _mailto_unsubscribe(self, message: Message) -> Outcome:
        auto = str(message.get("Auto-Submitted", "no")).strip().lower()
        sender = _plain(str(message.get("From", ""))).lower()
        if auto != "no":
            return Outcome("ignored", sender, f"an automatic message (Auto-Submitted: {auto}): not a request")
        if not sender:
            return Outcome("ignored", "", "a mail to the unsubscribe address without a From address")
        if not self._is_subscriber(sender):
            return Outcome("ignored", sender, "not a subscriber: nothing to do")
        state.unsubscribe(self.conn, sender, "mailto")
        return Outcome("unsubscribed", sender, f"mail to {self.settings.unsubscribe_address}")

    def _is_subscriber(self, address: str) -> bool:
        """On the list of record, or someone we mailed."""
        if state.find_subscriber(self.conn, address) is not None:
            return True
        return self.conn.execute("SELECT 1 FROM deliveries WHERE email = ? LIMIT 1", (address,)).fetchone() is not None


def _date_of(message: Message) -> datetime | None:
    """The message's Date header as an aware datetime (no zone read as UTC); None if absent or unreadable."""
    try:
        dated = parsedate_to_datetime(str(message.get("Date", "")))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return dated if dated.tzinfo is not None else dated.replace(tzinfo=UTC)


def _feedback_fields(message: Message) -> Message:
    """The machine-readable part of an ARF report (message/feedback-report) as header fields."""
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                # typeshed: list[Message | str]; a parsed multipart payload holds only Messages
                return cast(Message, payload[0])
            return email.message_from_string(str(payload), policy=email.policy.compat32)
    return Message()


def _plain(field: str) -> str:
    """'rfc822; Ada <ada@example.com>' or '<ada@example.com>' -> 'ada@example.com'."""
    return parseaddr(field.split(";", 1)[-1].strip())[1]
