"""Retention: fold the recipient rows of old editions into per-edition totals, so the state stays bounded.

A delivery row costs about 320 bytes; a million readers add 320 MB a day. ``prune`` keeps
the rows of the last ``keep_days`` days whole (what bounce matching, the weekly digests,
the catch-up window and ``status --date`` read) and folds each older edition's rows
(``deliveries``, daily editions and digests alike, and its ``send --to`` test copies) into
``edition_totals``: one count per (date, kind, status). The ledger adds those totals to
its own counts, so ``status`` shows the same numbers before and after. The suppression
list is never touched, and the newest test copies (the ones ``status`` lists) stay whole.

Each edition is folded in its own transaction: its rows are counted, the counts added to
the totals and the rows deleted together, so a crash mid-prune loses nothing and counts
nothing twice, and a second run finds nothing left to fold. A folded edition cannot be
sent again (its recipients are no longer known): ``send`` refuses its date.

The inbox's record (``inbox_messages``: one key per handled message, so that a message
imported again changes nothing) is bounded too: records handled before the cutoff are
deleted, and in the same transaction the cutoff is recorded as the inbox's horizon. A
message stays in the mailbox (a Maildir's ``cur/`` is read again at every import), so it
can come back after its record is gone; ``inbox import`` therefore does not act on a
message dated before the horizon plus a day (``inbox_horizon``), and a message that was
handled on or after the cutoff is still known by its record. A message without a readable
``Date`` is known only as long as its record lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from newsletter import state
from newsletter.errors import DeliveryError
from newsletter.storage import Database, utc_text

PRUNE_LOCK = 7_310_090  # pg_advisory_xact_lock key: two prunes (two daemons) fold one edition at a time
TEST_COPIES_KEPT = 5  # the newest test copies stay whole: `status` lists them (status.TEST_COPIES_SHOWN)
KINDS = ("edition", "digest", "test")
INBOX_PRUNED = "inbox-pruned"  # the notice whose date is the inbox's horizon: records handled before it are deleted
CLOCK_MARGIN = timedelta(days=1)  # a sender's Date may run this far ahead of our clock

# The SQL of retention, portable between SQLite and PostgreSQL (placeholders are '?').
NEWEST_TESTS = f"SELECT id FROM test_sends ORDER BY id DESC LIMIT {TEST_COPIES_KEPT}"
OLD_DAYS = (
    "SELECT day FROM deliveries WHERE day < ? "
    f"UNION SELECT day FROM test_sends WHERE day < ? AND id NOT IN ({NEWEST_TESTS}) ORDER BY day"
)
KEPT_DAYS = "SELECT COUNT(DISTINCT day) FROM deliveries WHERE day >= ?"
COUNT_ROWS = "SELECT kind, status, COUNT(*) FROM deliveries WHERE day = ? GROUP BY kind, status"
COUNT_TESTS = f"SELECT status, COUNT(*) FROM test_sends WHERE day = ? AND id NOT IN ({NEWEST_TESTS}) GROUP BY status"
ADD_TOTAL = (
    "INSERT INTO edition_totals (day, kind, status, total) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (day, kind, status) DO UPDATE SET total = edition_totals.total + excluded.total"
)
DELETE_ROWS = "DELETE FROM deliveries WHERE day = ?"
DELETE_TESTS = f"DELETE FROM test_sends WHERE day = ? AND id NOT IN ({NEWEST_TESTS})"
TOTALS_OF_DAY = "SELECT status, total FROM edition_totals WHERE day = ? AND kind = ?"
TOTALS_OF_KIND = "SELECT day, status, total FROM edition_totals WHERE kind = ?"
LOCK_POSTGRES = "SELECT pg_advisory_xact_lock(?)"
PRUNED_ON = "SELECT 1 FROM notices WHERE kind = 'prune' AND day = ? AND zone = ''"
IS_FOLDED = "SELECT 1 FROM edition_totals WHERE day = ? AND kind IN ('edition', 'digest') LIMIT 1"
DELETE_INBOX = "DELETE FROM inbox_messages WHERE handled_at < ?"  # ISO UTC text on both backends (utcnow_text)
RECORD_HORIZON = (
    f"INSERT INTO notices (kind, day, zone, created_at) VALUES ('{INBOX_PRUNED}', ?, '', ?) ON CONFLICT DO NOTHING"
)
DROP_OLD_HORIZONS = f"DELETE FROM notices WHERE kind = '{INBOX_PRUNED}' AND day < ?"
HORIZON = f"SELECT MAX(day) FROM notices WHERE kind = '{INBOX_PRUNED}'"


@dataclass(frozen=True)
class Folded:
    """One edition folded into totals: its rows per (kind, status), and its test copies."""

    day: date
    rows: dict[tuple[str, str], int]
    tests: int

    @property
    def recipients(self) -> int:
        return sum(self.rows.values())

    def line(self) -> str:
        """'2026-06-25: 4998 recipient rows (4990 delivered, 5 bounced, 3 skipped), 1 test copy'."""
        by_status: dict[str, int] = {}
        for (_, status), count in sorted(self.rows.items()):
            by_status[status] = by_status.get(status, 0) + count
        detail = ", ".join(f"{count} {status}" for status, count in by_status.items())
        text = f"{self.day.isoformat()}: {_plural(self.recipients, 'recipient row')}"
        text += f" ({detail})" if detail else ""
        return text + (f", {_plural(self.tests, 'test copy', 'test copies')}" if self.tests else "")


@dataclass
class PruneResult:
    """What one prune did."""

    keep_days: int
    cutoff: date  # editions before this date were folded
    folded: list[Folded] = field(default_factory=list)
    kept: int = 0  # editions on or after the cutoff, kept whole
    inbox: int = 0  # inbox records (handled messages) deleted: handled before the cutoff

    def summary(self) -> str:
        """One line: how much was folded, and what was kept."""
        if self.keep_days == 0:
            return "database.keep_days is 0: every recipient row is kept; nothing folded"
        window = f"older than {self.cutoff.isoformat()} (keep_days {self.keep_days})"
        kept = f"; {_plural(self.kept, 'edition')} kept whole"
        if self.inbox:
            kept += f"; {_plural(self.inbox, 'inbox record')} handled before {self.cutoff.isoformat()} deleted"
        if not self.folded:
            return f"nothing to fold: no recipient rows {window}{kept}"
        rows = sum(f.recipients for f in self.folded)
        tests = sum(f.tests for f in self.folded)
        return (
            f"folded {_plural(len(self.folded), 'edition')} {window}: {_plural(rows, 'recipient row')} "
            f"and {_plural(tests, 'test copy', 'test copies')} into per-edition totals{kept}; "
            "the suppression list is unchanged"
        )


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def cutoff_for(today: date, keep_days: int) -> date:
    """The first date kept whole: editions of ``keep_days`` days ago and later stay."""
    return today - timedelta(days=keep_days)


def prune(conn: Database, today: date, keep_days: int) -> PruneResult:
    """Fold every edition older than ``keep_days`` days before ``today`` into totals, one transaction each.

    Then delete the inbox records handled before the same cutoff (``forget_inbox``).
    ``keep_days`` 0 keeps everything. Safe to run twice, and beside senders and another prune.
    """
    cutoff = cutoff_for(today, keep_days)
    result = PruneResult(keep_days, cutoff)
    if keep_days == 0:
        return result
    when = cutoff.isoformat()
    for (day,) in conn.execute(OLD_DAYS, (when, when)).fetchall():
        folded = fold_edition(conn, date.fromisoformat(day))
        if folded.recipients or folded.tests:
            result.folded.append(folded)
    result.kept = int(conn.execute(KEPT_DAYS, (when,)).fetchone()[0])
    result.inbox = forget_inbox(conn, cutoff)
    return result


def daily_prune(conn: Database, today: date, keep_days: int) -> PruneResult | None:
    """Prune once a local date (the daily job's beats, every cron run and every daemon share one record).

    Returns None when this date's prune was done already. The record is written after the
    prune, so one that failed is tried again at the next beat.
    """
    if conn.execute(PRUNED_ON, (today.isoformat(),)).fetchone() is not None:
        return None
    result = prune(conn, today, keep_days)
    state.first_notice(conn, "prune", today, "")
    return result


def fold_edition(conn: Database, day: date) -> Folded:
    """Count one date's recipient rows and test copies into the totals and delete them, in one transaction."""
    when = day.isoformat()
    with conn.transaction():  # counted and deleted under one write lock: nothing lost, nothing twice
        if conn.backend == "postgresql":  # SQLite's BEGIN IMMEDIATE already serializes; PostgreSQL counts
            conn.execute(LOCK_POSTGRES, (PRUNE_LOCK,))  # what is committed once it holds the lock
        rows = {(kind, status): int(n) for kind, status, n in conn.execute(COUNT_ROWS, (when,))}
        tests = {status: int(n) for status, n in conn.execute(COUNT_TESTS, (when,))}
        totals = [(when, kind, status, n) for (kind, status), n in rows.items()]
        totals += [(when, "test", status, n) for status, n in tests.items()]
        conn.executemany(ADD_TOTAL, totals)
        conn.execute(DELETE_ROWS, (when,))
        conn.execute(DELETE_TESTS, (when,))
    return Folded(day, rows, sum(tests.values()))


def forget_inbox(conn: Database, cutoff: date) -> int:
    """Delete the inbox records handled before ``cutoff`` (00:00 UTC) and move the horizon there, in one transaction.

    Returns how many were deleted. The horizon moves only when a record went, and never back.
    """
    moment = utc_text(_midnight(cutoff))  # the form of handled_at: '2026-06-25T00:00:00+00:00'
    with conn.transaction():  # the records and the horizon go together: no record lost without its horizon
        deleted = conn.execute(DELETE_INBOX, (moment,)).rowcount
        if deleted:
            conn.execute(RECORD_HORIZON, (cutoff.isoformat(), state.utcnow_text()))
            conn.execute(DROP_OLD_HORIZONS, (cutoff.isoformat(),))
    return int(deleted)


def inbox_horizon(conn: Database) -> datetime | None:
    """The moment before which a message's date makes it too old to act on; None while no inbox record was deleted.

    A record deleted by ``forget_inbox`` was handled before the horizon's date, so its message
    is dated before that too (give or take ``CLOCK_MARGIN``, the sender's clock): acting on
    such a message again could undo what was done since (a reader who unsubscribed by mail
    and subscribed again).
    """
    (day,) = conn.execute(HORIZON).fetchone()
    return _midnight(date.fromisoformat(day)) + CLOCK_MARGIN if day else None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def totals_of(conn: Database, day: date, kind: str) -> dict[str, int]:
    """The folded counts of one date and kind ('edition', 'digest', 'test'), per status."""
    return {status: int(n) for status, n in conn.execute(TOTALS_OF_DAY, (day.isoformat(), kind))}


def all_totals(conn: Database, kind: str) -> dict[str, dict[str, int]]:
    """The folded counts of every date of a kind: ISO date -> status -> count."""
    table: dict[str, dict[str, int]] = {}
    for day, status, n in conn.execute(TOTALS_OF_KIND, (kind,)):
        table.setdefault(day, {})[status] = int(n)
    return table


def is_folded(conn: Database, day: date) -> bool:
    """True when the recipient rows of a date's edition or digests were folded into totals."""
    return conn.execute(IS_FOLDED, (day.isoformat(),)).fetchone() is not None


def refuse_folded(conn: Database, day: date) -> None:
    """Refuse to send a folded edition: its recipients are no longer known, so everyone would be mailed again."""
    if is_folded(conn, day):
        raise DeliveryError(
            f"the {day.isoformat()} edition was pruned (its recipient rows are folded into totals, "
            "database.keep_days): it cannot be sent again"
        )
