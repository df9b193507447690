"""The SQL of the state kept beside the ledger: editions, suppressions, notices, the subscriber list.

Each function takes an open ``storage.Database`` (either backend: the SQL here is written
once for both, see ``newsletter.storage``). Tables are created by the named migrations of
``storage.sqlite`` and ``storage.postgres``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime

from newsletter.storage import Database, Row, utcnow_text


def recorded_editions(conn: Database) -> dict[date, str]:
    """Return every recorded edition as date -> event id."""
    return {date.fromisoformat(day): event_id for day, event_id in conn.execute("SELECT day, event_id FROM editions")}


def record_edition(conn: Database, day: date, event_id: str) -> str:
    """Record the event of an edition once; return the event id that is on record."""
    conn.execute(
        "INSERT INTO editions (day, event_id, recorded_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (day.isoformat(), event_id, utcnow_text()),
    )
    row = conn.execute("SELECT event_id FROM editions WHERE day = ?", (day.isoformat(),)).fetchone()
    return row[0]


def suppress(conn: Database, email: str, reason: str, detail: str = "") -> None:
    """Put an address on the suppression list (first reason wins)."""
    conn.execute(
        "INSERT INTO suppressions (email, reason, detail, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (email.strip().lower(), reason, detail, utcnow_text()),
    )


def unsubscribe(conn: Database, email: str, how: str) -> None:
    """Suppress an address as unsubscribed and retire its open confirmation links (call inside a transaction)."""
    suppress(conn, email, "unsubscribed", how)
    conn.execute("DELETE FROM signup_requests WHERE email = ?", (email.strip().lower(),))


def unsubscribed_since(conn: Database, email: str, moment: str) -> bool:
    """True if the address unsubscribed after an ISO UTC time (a confirmation link from before is void).

    ``unsubscribe`` also deletes the open links; this guards any other way a suppression is written.
    """
    row = conn.execute(
        "SELECT 1 FROM suppressions WHERE email = ? AND reason = 'unsubscribed' AND created_at > ?",
        (email.strip().lower(), moment),
    ).fetchone()
    return row is not None


def link_tokens_since(conn: Database) -> datetime:
    """When links with public ids began on this database (old-form links are read for a grace period after)."""
    row = conn.execute("SELECT since FROM link_tokens WHERE form = 'public-id'").fetchone()
    return datetime.fromisoformat(row[0]) if row else datetime.now(UTC)


def first_notice(conn: Database, kind: str, day: date, zone: str) -> bool:
    """Record a notice about an edition and zone; True only the first time (to log it once, ever)."""
    cursor = conn.execute(
        "INSERT INTO notices (kind, day, zone, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (kind, day.isoformat(), zone, utcnow_text()),
    )
    return cursor.rowcount == 1


def mailed_in_zone(conn: Database, day: date, zone: str, default_zone: str) -> int:
    """Count the readers of a zone (still on the list) with a final outcome for an edition."""
    row = conn.execute(
        "SELECT COUNT(*) FROM deliveries d WHERE day = ? AND status IN ('delivered', 'bounced', 'skipped') "
        "AND (CASE WHEN timezone = '' THEN ? ELSE timezone END) = ? "
        "AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = d.email)",
        (day.isoformat(), default_zone, zone),
    ).fetchone()
    return int(row[0])


def suppressed(conn: Database) -> dict[str, str]:
    """Return every suppressed address (lower case) with its reason."""
    return {row[0]: row[1] for row in conn.execute("SELECT email, reason FROM suppressions")}


# The subscriber list --------------------------------------------------------------------
# A subscriber's status is not stored beside the row: it is the suppression's reason
# ('unsubscribed', 'bounced', 'complained'), else 'active'. The suppression list stays the
# one thing delivery checks, so the two can never disagree, and it also holds addresses
# that are not (or no longer) on the list.

FREQUENCIES = ("daily", "weekly")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SUBSCRIBER_STATUSES = ("active", "unsubscribed", "bounced", "complained")

SELECT_SUBSCRIBERS = (
    "SELECT s.email, s.address, s.public_id, s.name, s.timezone, s.frequency, s.weekday, s.source, "
    "s.created_at, s.edited_at, COALESCE(x.reason, 'active') AS status "
    "FROM subscribers s LEFT JOIN suppressions x ON x.email = s.email"
)
INSERT_SUBSCRIBER = (
    "INSERT INTO subscribers (email, address, public_id, name, timezone, frequency, weekday, source, "
    "created_at, updated_at, edited_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_CSV_ROW = (
    "INSERT INTO subscribers (email, address, public_id, name, timezone, frequency, weekday, source, "
    "created_at, updated_at, csv_sync) VALUES (?, ?, ?, ?, ?, ?, ?, 'csv', ?, ?, ?) "
    "ON CONFLICT(email) DO UPDATE SET csv_sync = CASE WHEN excluded.csv_sync > subscribers.csv_sync "
    "THEN excluded.csv_sync ELSE subscribers.csv_sync END, "
    + ", ".join(
        f"{column} = CASE WHEN subscribers.source = 'csv' AND subscribers.edited_at = '' "
        f"THEN excluded.{column} ELSE subscribers.{column} END"
        for column in ("address", "name", "timezone", "frequency", "weekday", "updated_at")
    )
)  # the file rules its own rows until someone edits them; other sources' rows keep their values.
# csv_sync keeps the latest sync's stamp: two syncs at once (two senders) both find every row of the file
UPDATE_PREFERENCES = (
    "UPDATE subscribers SET name = ?, timezone = ?, frequency = ?, weekday = ?, updated_at = ?, edited_at = ? "
    "WHERE email = ?"
)
CONFIRM_SIGNUP = (
    INSERT_SUBSCRIBER + " ON CONFLICT(email) DO UPDATE SET name = excluded.name, timezone = excluded.timezone, "
    "updated_at = excluded.updated_at, edited_at = excluded.edited_at"
)


def new_public_id() -> str:
    """A subscriber's public id: 16 random bytes as hex (URL-safe), like the migration's."""
    return secrets.token_hex(16)


def add_subscriber(
    conn: Database,
    address: str,
    *,
    name: str = "",
    timezone: str = "",
    frequency: str = "daily",
    weekday: str = "monday",
    source: str,
    replace: bool = False,
) -> bool:
    """Add an address to the list; True if it was new. ``replace`` updates name and zone of a row already there."""
    now = utcnow_text()
    row = (address.lower(), address, new_public_id(), name, timezone, frequency, weekday, source, now, now, now)
    sql = CONFIRM_SIGNUP if replace else INSERT_SUBSCRIBER + " ON CONFLICT(email) DO NOTHING"
    exists = conn.execute("SELECT 1 FROM subscribers WHERE email = ?", (address.lower(),)).fetchone()
    changed = conn.execute(sql, row).rowcount
    return exists is None and changed > 0


def find_subscriber(conn: Database, email: str) -> Row | None:
    """The list's row of an address (any status), or None."""
    return conn.execute(SELECT_SUBSCRIBERS + " WHERE s.email = ?", (email.strip().lower(),)).fetchone()


def find_subscriber_by_public_id(conn: Database, public_id: str) -> Row | None:
    """The list's row with this public id, or None."""
    return conn.execute(SELECT_SUBSCRIBERS + " WHERE s.public_id = ?", (public_id,)).fetchone()


def subscriber_rows(conn: Database, status: str | None = None) -> Iterator[Row]:
    """Stream the list (oldest first), optionally of one status."""
    where = " WHERE COALESCE(x.reason, 'active') = ?" if status else ""
    yield from conn.execute(SELECT_SUBSCRIBERS + where + " ORDER BY s.created_at, s.email", (status,) if status else ())


def subscriber_rows_for(conn: Database, emails: list[str]) -> dict[str, Row]:
    """The rows of some addresses (lower case), by address; at most 500 at a time."""
    marks = ",".join("?" * len(emails))
    return {row["email"]: row for row in conn.execute(SELECT_SUBSCRIBERS + f" WHERE s.email IN ({marks})", emails)}


def rows_ruled_by_list(conn: Database, emails: list[str]) -> list[str]:
    """Which of these addresses (lower case, at most 500) the list rules: not from the CSV, or edited since."""
    marks = ",".join("?" * len(emails))
    rows = conn.execute(
        f"SELECT email FROM subscribers WHERE email IN ({marks}) AND (source != 'csv' OR edited_at != '')", emails
    )
    return [row[0] for row in rows]


def subscriber_rows_not_from_csv(conn: Database, chunk: int = 1000) -> Iterator[Row]:
    """Stream the rows added on the web, by the CLI or by an import (not by paths.subscribers).

    Read ``chunk`` rows at a time, each query read whole: no read transaction stays open
    while the caller writes (planning inserts ledger rows between them, and on SQLite a
    snapshot held across another connection's commit could not write any more).
    """
    created, email = "", ""
    while True:
        rows = conn.execute(
            SELECT_SUBSCRIBERS + " WHERE s.source != 'csv' AND (s.created_at > ? OR (s.created_at = ? AND s.email > ?)) "
            "ORDER BY s.created_at, s.email LIMIT ?",
            (created, created, email, chunk),
        ).fetchall()
        yield from rows
        if len(rows) < chunk:
            return
        created, email = rows[-1]["created_at"], rows[-1]["email"]


def update_preferences(
    conn: Database, email: str, *, name: str, timezone: str, frequency: str, weekday: str
) -> bool:
    """Store a subscriber's own choices (from then on the CSV no longer changes the row); False if not on the list."""
    now = utcnow_text()
    cursor = conn.execute(UPDATE_PREFERENCES, (name, timezone, frequency, weekday, now, now, email.strip().lower()))
    return cursor.rowcount == 1


def has_weekly_readers(conn: Database) -> bool:
    """True if anyone on the list reads weekly (whatever their status)."""
    return conn.execute("SELECT 1 FROM subscribers WHERE frequency = 'weekly' LIMIT 1").fetchone() is not None


def subscriber_counts(conn: Database) -> dict[tuple[str, str], int]:
    """Count the list by (status, frequency)."""
    rows = conn.execute(
        "SELECT COALESCE(x.reason, 'active'), s.frequency, COUNT(*) FROM subscribers s "
        "LEFT JOIN suppressions x ON x.email = s.email GROUP BY 1, 2"
    )
    return {(status, frequency): count for status, frequency, count in rows}


def suppression_of(conn: Database, email: str) -> Row | None:
    """The suppression of an address (reason, detail, created_at), or None."""
    return conn.execute(
        "SELECT email, reason, detail, created_at FROM suppressions WHERE email = ?", (email.strip().lower(),)
    ).fetchone()


def suppression_rows(conn: Database) -> list[Row]:
    """Every suppression, oldest first."""
    return conn.execute(
        "SELECT email, reason, detail, created_at FROM suppressions ORDER BY created_at, email"
    ).fetchall()


def lift_suppression(conn: Database, email: str) -> bool:
    """Remove an address from the suppression list; False if it was not on it."""
    return conn.execute("DELETE FROM suppressions WHERE email = ?", (email.strip().lower(),)).rowcount == 1


def csv_signature(conn: Database, path: str) -> str:
    """The signature (size, mtime) of the CSV file when it was last synced; '' if never."""
    row = conn.execute("SELECT signature FROM csv_syncs WHERE path = ?", (path,)).fetchone()
    return row[0] if row else ""


def upsert_csv_rows(conn: Database, rows: Sequence[tuple[str, ...]], stamp: str) -> None:
    """Add or refresh rows of the CSV file: (address, name, timezone, frequency, weekday) each."""
    now = utcnow_text()
    conn.executemany(
        UPSERT_CSV_ROW,
        [(a.lower(), a, new_public_id(), n, z, f, w, now, now, stamp) for a, n, z, f, w in rows],
    )


def finish_csv_sync(conn: Database, path: str, signature: str, stamp: str) -> int:
    """Drop the CSV's rows that neither this sync nor a later one found; record the file's signature; return how many left."""
    dropped = conn.execute("DELETE FROM subscribers WHERE source = 'csv' AND csv_sync < ?", (stamp,)).rowcount
    conn.execute(
        "INSERT INTO csv_syncs (path, signature, synced_at) VALUES (?, ?, ?) "
        "ON CONFLICT(path) DO UPDATE SET signature = excluded.signature, synced_at = excluded.synced_at",
        (path, signature, utcnow_text()),
    )
    return dropped
