"""The operator's view: what ``newsletter status`` shows, as plain data (the CLI prints it as text or JSON).

Read-only over the state database: subscribers by status and frequency, suppressions by
reason, the last editions with their counts, the last test copies, and when each zone is
due next; for one date, that edition's outcomes and the last replies of its failures.
One write comes first (``settle_journals``): the journals of senders that stopped move into
the ledger, as the next send would do before anything else, so that the counts are true;
what cannot be moved yet (a full disk) is shown as ``journaled``.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from newsletter import retention, state
from newsletter.config import Settings
from newsletter.errors import StorageError
from newsletter.ledger import STATUSES, DatabaseLedger, DigestLedger
from newsletter.scheduler import mailed_on, send_moment
from newsletter.sending import journal
from newsletter.storage import Database
from newsletter.subscribers import Subscriber, Tally, iter_recipients

EDITIONS_SHOWN = 7
TEST_COPIES_SHOWN = 5
FAILURES_SHOWN = 20

log = logging.getLogger(__name__)


def settle_journals(conn: Database) -> None:
    """Move the journals of senders that stopped (SQLite) into the ledger; one that cannot move yet stays, and is logged."""
    folder = journal.folder_of(conn)
    if folder is None:
        return
    failures: tuple[type[BaseException], ...] = (OSError, StorageError, *conn.errors)
    try:
        journal.replay(folder, DatabaseLedger(conn))
    except failures as exc:
        reason = conn.error(exc) if isinstance(exc, conn.errors) else exc
        log.warning("the journals in %s stay until the next send: %s", folder, reason)


def journaled(conn: Database) -> dict[str, int]:
    """Acceptances by date still in the journals of stopped senders: delivered, not yet in the ledger's counts."""
    folder = journal.folder_of(conn)
    found = journal.waiting(folder) if folder is not None else {}
    return {day.isoformat(): n for day, n in sorted(found.items())}


def overview(settings: Settings, conn: Database, now: datetime) -> dict[str, Any]:
    """Everything ``status`` shows without --date."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return {
        "subscribers": subscriber_counts(conn),
        "suppressions": suppression_counts(conn),
        "editions": last_editions(conn),
        "test_copies": test_copies(conn),
        "next_due": next_due(settings, conn, now),
        "journaled": journaled(conn),
    }


def subscriber_counts(conn: Database) -> dict[str, dict[str, int]]:
    """{status: {frequency: count, 'total': count}} for every status, zeros included."""
    counts = state.subscriber_counts(conn)
    table: dict[str, dict[str, int]] = {}
    for status in state.SUBSCRIBER_STATUSES:
        row = {frequency: counts.get((status, frequency), 0) for frequency in state.FREQUENCIES}
        table[status] = {**row, "total": sum(row.values())}
    return table


def suppression_counts(conn: Database) -> dict[str, int]:
    """Suppressed addresses by reason (on the list or not), the usual reasons always present."""
    found = dict.fromkeys(("unsubscribed", "bounced", "complained"), 0)
    for reason, count in conn.execute("SELECT reason, COUNT(*) FROM suppressions GROUP BY reason ORDER BY reason"):
        found[reason] = count
    return found


def last_editions(conn: Database, limit: int = EDITIONS_SHOWN) -> list[dict[str, Any]]:
    """The newest dates in the ledger, newest first: each edition with its event, then that date's weekly digests."""
    events = state.recorded_editions(conn)
    rows = [
        {"date": day.isoformat(), "kind": "edition", "event": events.get(day, ""), **counts}
        for day, counts in DatabaseLedger(conn).editions()[:limit]
    ]
    rows += [
        {"date": day.isoformat(), "kind": "digest", "event": "weekly digest", **counts}
        for day, counts in DigestLedger(conn).editions()[:limit]
        if any(counts.values())
    ]
    rows.sort(key=lambda row: (row["date"], row["kind"] == "edition"), reverse=True)
    return rows[: limit * 2]


def test_copies(conn: Database, limit: int = TEST_COPIES_SHOWN) -> list[dict[str, Any]]:
    """The newest ``send --to`` copies."""
    rows = conn.execute(
        "SELECT day, email, status, last_reply, sent_at FROM test_sends ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [dict(zip(("date", "email", "status", "last_reply", "sent_at"), row, strict=True)) for row in rows]


def next_due(settings: Settings, conn: Database, now: datetime) -> list[dict[str, Any]]:
    """For each zone with readers: the next date something goes out there, when, and to how many readers.

    A weekly reader counts on their weekday only (the digest goes instead of that date's edition).
    """
    by_zone: dict[str, list[Subscriber]] = {}
    for subscriber in iter_recipients(settings.paths.subscribers, conn, Tally(), None):
        by_zone.setdefault(subscriber.timezone or settings.newsletter.timezone, []).append(subscriber)
    return [_zone_next(settings, conn, now, zone, readers) for zone, readers in sorted(by_zone.items())]


def _zone_next(
    settings: Settings, conn: Database, now: datetime, zone: str, readers: list[Subscriber]
) -> dict[str, Any]:
    info = ZoneInfo(zone)
    day = now.astimezone(info).date()
    moment = send_moment(day, settings.newsletter.send_time, info)
    count = sum(mailed_on(s, day) for s in readers)
    while now >= moment and not (count and _pending(settings, conn, day, zone, count, now, moment)):
        day += timedelta(days=1)  # today's send is done (or over): the next date with someone to mail
        moment = send_moment(day, settings.newsletter.send_time, info)
        count = sum(mailed_on(s, day) for s in readers)
    while not count:
        day += timedelta(days=1)
        moment = send_moment(day, settings.newsletter.send_time, info)
        count = sum(mailed_on(s, day) for s in readers)
    digests = sum(s.frequency == "weekly" for s in readers if mailed_on(s, day))
    return {
        "zone": zone,
        "readers": count,
        "weekly_digests": digests,
        "date": day.isoformat(),
        "at": moment.isoformat(),
        "due_now": now >= moment,
    }


def _pending(
    settings: Settings, conn: Database, day: date, zone: str, readers: int, now: datetime, moment: datetime
) -> bool:
    """True while today's edition of a zone is still to be sent: inside the catch-up window, readers unmailed."""
    if now > moment + timedelta(hours=settings.newsletter.catchup_hours):
        return False
    return state.mailed_in_zone(conn, day, zone, settings.newsletter.timezone) < readers


def edition_detail(conn: Database, day: date, limit: int = FAILURES_SHOWN) -> dict[str, Any]:
    """One edition: its event, counts per status, and the recipients that did not get it, with the last replies."""
    counts = DatabaseLedger(conn).counts(day)
    digests = DigestLedger(conn).counts(day)
    rows = conn.execute(  # editions and digests alike: a reader gets one message a date
        "SELECT address, status, attempts, last_reply, updated_at FROM deliveries "
        "WHERE day = ? AND status IN ('failed', 'bounced', 'skipped') ORDER BY status, updated_at DESC LIMIT ?",
        (day.isoformat(), limit),
    )
    keys = ("email", "status", "attempts", "last_reply", "updated_at")
    return {
        "date": day.isoformat(),
        "event": state.recorded_editions(conn).get(day, ""),
        "counts": {status: counts.get(status, 0) for status in STATUSES},
        "digest_counts": {status: digests.get(status, 0) for status in STATUSES},
        "not_delivered": [dict(zip(keys, row, strict=True)) for row in rows],
        "pruned": retention.is_folded(conn, day),  # its recipient rows are folded into totals: counts only
        "tests": [copy for copy in test_copies(conn, limit) if copy["date"] == day.isoformat()],
        "journaled": journaled(conn).get(day.isoformat(), 0),
    }
