"""The SQLite state database: one file in the state folder, schema kept by named migrations.

Every module that keeps state (the ledger, the edition record, suppressions, web
sign-ups) adds its tables here as a named migration; migrations run once, in order,
and are recorded in the ``migrations`` table.
"""

from __future__ import annotations

import errno
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

from newsletter.errors import StorageError

DB_NAME = "newsletter.sqlite3"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-editions",
        """
        CREATE TABLE editions (
            day TEXT PRIMARY KEY,            -- the edition's date, YYYY-MM-DD
            event_id TEXT NOT NULL,          -- the event file's stem
            recorded_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0002-suppressions",
        """
        CREATE TABLE suppressions (
            email TEXT PRIMARY KEY,          -- lower-cased address
            reason TEXT NOT NULL,            -- 'unsubscribed' | 'bounced' | 'complained' | ...
            detail TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0003-web-subscribers",
        """
        CREATE TABLE web_subscribers (
            email TEXT PRIMARY KEY,          -- lower-cased address
            name TEXT NOT NULL DEFAULT '',
            timezone TEXT NOT NULL DEFAULT '',
            confirmed_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0010-deliveries",
        """
        CREATE TABLE deliveries (
            day TEXT NOT NULL,               -- the edition date (the reader's local date)
            email TEXT NOT NULL,             -- lower-cased address: the key
            address TEXT NOT NULL,           -- the address as written
            name TEXT NOT NULL DEFAULT '',
            timezone TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'delivered', 'failed', 'bounced', 'skipped')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_reply TEXT NOT NULL DEFAULT '',
            message_id TEXT NOT NULL DEFAULT '',
            updated_at TEXT NOT NULL,
            PRIMARY KEY (day, email)
        );
        CREATE INDEX deliveries_by_message_id ON deliveries (message_id);
        CREATE TABLE test_sends (
            id INTEGER PRIMARY KEY,
            day TEXT NOT NULL,
            email TEXT NOT NULL,
            status TEXT NOT NULL,
            last_reply TEXT NOT NULL DEFAULT '',
            message_id TEXT NOT NULL DEFAULT '',
            sent_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0020-web-signups",
        """
        CREATE TABLE pending_signups (
            email TEXT PRIMARY KEY,          -- lower-cased address, until its link is confirmed
            name TEXT NOT NULL DEFAULT '',
            timezone TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        );
        CREATE TABLE signup_attempts (
            email TEXT NOT NULL,
            at REAL NOT NULL                 -- Unix time, for the rate limit
        );
        CREATE INDEX signup_attempts_by_email ON signup_attempts (email, at);
        """,
    ),
    (
        "0030-signup-requests",
        """
        CREATE TABLE signup_requests (
            token_hash TEXT PRIMARY KEY,     -- SHA-256 of the confirmation token: each link confirms its own request
            email TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            timezone TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        );
        INSERT INTO signup_requests (token_hash, email, name, timezone, created_at)
            SELECT 'legacy:' || email, email, name, timezone, created_at FROM pending_signups;
        DROP TABLE pending_signups;
        """,
    ),
    (
        "0040-subscriber-list",
        """
        CREATE TABLE subscribers (
            email TEXT PRIMARY KEY,          -- lower-cased address: the key
            address TEXT NOT NULL,           -- the address as given (normalized by email-validator)
            public_id TEXT NOT NULL UNIQUE,  -- 16 random bytes, hex, for links: it never changes
            name TEXT NOT NULL DEFAULT '',
            timezone TEXT NOT NULL DEFAULT '',  -- IANA zone, empty for newsletter.timezone
            frequency TEXT NOT NULL DEFAULT 'daily' CHECK (frequency IN ('daily', 'weekly')),
            weekday TEXT NOT NULL DEFAULT 'monday'
                CHECK (weekday IN ('monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday')),
            source TEXT NOT NULL,            -- 'csv' (paths.subscribers) | 'web' | 'cli' | 'import'
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            edited_at TEXT NOT NULL DEFAULT '',  -- set when the reader or operator changes preferences: the CSV no longer rules the row
            csv_sync TEXT NOT NULL DEFAULT ''    -- the last sync of paths.subscribers that found this address
        );
        INSERT INTO subscribers (email, address, public_id, name, timezone, source, created_at, updated_at)
            SELECT email, email, lower(hex(randomblob(16))), name, timezone, 'web', confirmed_at, confirmed_at
            FROM web_subscribers;
        DROP TABLE web_subscribers;
        CREATE TABLE csv_syncs (
            path TEXT PRIMARY KEY,           -- the CSV file, resolved
            signature TEXT NOT NULL,         -- size and mtime when it was last synced: unchanged files are not read again
            synced_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0041-deliveries-by-day",
        """
        -- ordered by (day, rowid): the due query walks an edition's rows by rowid, with no sort
        CREATE INDEX deliveries_by_day ON deliveries (day);
        """,
    ),
    (
        "0060-inbox-messages",
        """
        CREATE TABLE inbox_messages (
            key TEXT PRIMARY KEY,            -- 'id:' + Message-ID, else 'sha256:' + digest of the bytes
            outcome TEXT NOT NULL,           -- what the first import did, for the record
            handled_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0061-notices",
        """
        CREATE TABLE notices (
            kind TEXT NOT NULL,              -- 'stale': the catch-up window passed for a zone's edition
            day TEXT NOT NULL,
            zone TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (kind, day, zone)
        );
        """,
    ),
    (
        "0070-weekly-digests",
        """
        -- a weekly digest is a row of the ledger like an edition: one row per (local date, reader), so a
        -- reader gets at most one message a day, daily edition or digest, whatever they switch to
        ALTER TABLE deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'edition' CHECK (kind IN ('edition', 'digest'));
        ALTER TABLE deliveries ADD COLUMN digest_from TEXT NOT NULL DEFAULT '';  -- a digest's first edition date
        CREATE INDEX deliveries_by_email ON deliveries (email, day);
        """,
    ),
    (
        "0071-link-tokens",
        """
        CREATE TABLE link_tokens (
            form TEXT PRIMARY KEY,           -- 'public-id': links carry a random id and its HMAC, never the address
            since TEXT NOT NULL              -- when this database first made them: old-form links expire from here
        );
        INSERT INTO link_tokens VALUES ('public-id', strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now'));
        """,
    ),
]


def utcnow_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def db_path(state_dir: Path) -> Path:
    return state_dir / DB_NAME


def db_file(conn: sqlite3.Connection) -> str:
    """The file of an open database, for messages."""
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row and row[2] else "the state database"


def connect(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the state database in WAL mode with every migration applied.

    Raise StorageError (one line: the file, what is wrong, what to do) when the folder is
    read-only, the disk is full, or the file is not a newsletter state database.
    """
    path = db_path(state_dir)
    conn: sqlite3.Connection | None = None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        _refuse_foreign(conn, path)  # before anything writes to the file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn)
    except (OSError, sqlite3.Error) as exc:
        if conn is not None:
            conn.close()
        raise storage_error(exc, path) from exc
    return conn


def _refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database that has tables but none of ours: never migrate someone else's file."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "migrations" not in tables:
        raise StorageError(
            f"{path}: not a newsletter state database (it holds other tables: {', '.join(sorted(tables)[:3])}); "
            "point paths.state at another folder, or move the file away"
        )


def storage_error(exc: BaseException, path: Path) -> StorageError:
    """One line for a problem with the state database: which file, what is wrong, and what to do."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc) or type(exc).__name__
    low = text.lower()
    code = getattr(exc, "errno", None)
    if "full" in low or code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        advice = "the disk is full: free some space and run the command again (nothing was half-written)"
    elif "disk i/o error" in low:
        advice = "the disk could not be written (full, or failing): free some space or check the disk, then run the command again (nothing was half-written)"
    elif "readonly" in low or "read-only" in low or code in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = f"{path.parent} is read-only or not writable for this user: fix its permissions or set paths.state"
    elif "not a database" in low or "malformed" in low or "corrupt" in low:
        advice = "not a usable newsletter state database: restore it from a backup, or move it away to start afresh"
    elif "unable to open" in low:
        advice = f"cannot open it: check that {path.parent} exists and is writable (paths.state)"
    else:
        advice = "check the file and paths.state"
    return StorageError(f"{path}: {advice} ({text})")


@contextmanager
def guarded(state_dir: Path) -> Iterator[None]:
    """Turn a SQLite error inside the block into StorageError naming the state database."""
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(exc, db_path(state_dir)) from exc


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this database has not seen yet, each in its own transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with transaction(conn):
            if conn.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone():
                continue  # another process applied it while we waited for the lock
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)
            conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, utcnow_text()))


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run a block in one immediate (write-locking) transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def recorded_editions(conn: sqlite3.Connection) -> dict[date, str]:
    """Return every recorded edition as date -> event id."""
    return {date.fromisoformat(day): event_id for day, event_id in conn.execute("SELECT day, event_id FROM editions")}


def record_edition(conn: sqlite3.Connection, day: date, event_id: str) -> str:
    """Record the event of an edition once; return the event id that is on record."""
    conn.execute(
        "INSERT OR IGNORE INTO editions (day, event_id, recorded_at) VALUES (?, ?, ?)",
        (day.isoformat(), event_id, utcnow_text()),
    )
    row = conn.execute("SELECT event_id FROM editions WHERE day = ?", (day.isoformat(),)).fetchone()
    return row[0]


def suppress(conn: sqlite3.Connection, email: str, reason: str, detail: str = "") -> None:
    """Put an address on the suppression list (first reason wins)."""
    conn.execute(
        "INSERT OR IGNORE INTO suppressions (email, reason, detail, created_at) VALUES (?, ?, ?, ?)",
        (email.strip().lower(), reason, detail, utcnow_text()),
    )


def unsubscribe(conn: sqlite3.Connection, email: str, how: str) -> None:
    """Suppress an address as unsubscribed and retire its open confirmation links (call inside a transaction)."""
    suppress(conn, email, "unsubscribed", how)
    conn.execute("DELETE FROM signup_requests WHERE email = ?", (email.strip().lower(),))


def unsubscribed_since(conn: sqlite3.Connection, email: str, moment: str) -> bool:
    """True if the address unsubscribed after an ISO UTC time (a confirmation link from before is void).

    ``unsubscribe`` also deletes the open links; this guards any other way a suppression is written.
    """
    row = conn.execute(
        "SELECT 1 FROM suppressions WHERE email = ? AND reason = 'unsubscribed' AND created_at > ?",
        (email.strip().lower(), moment),
    ).fetchone()
    return row is not None


def link_tokens_since(conn: sqlite3.Connection) -> datetime:
    """When links with public ids began on this database (old-form links are read for a grace period after)."""
    row = conn.execute("SELECT since FROM link_tokens WHERE form = 'public-id'").fetchone()
    return datetime.fromisoformat(row[0]) if row else datetime.now(UTC)


def first_notice(conn: sqlite3.Connection, kind: str, day: date, zone: str) -> bool:
    """Record a notice about an edition and zone; True only the first time (to log it once, ever)."""
    cursor = conn.execute(
        "INSERT INTO notices (kind, day, zone, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (kind, day.isoformat(), zone, utcnow_text()),
    )
    return cursor.rowcount == 1


def mailed_in_zone(conn: sqlite3.Connection, day: date, zone: str, default_zone: str) -> int:
    """Count the readers of a zone (still on the list) with a final outcome for an edition."""
    row = conn.execute(
        "SELECT COUNT(*) FROM deliveries d WHERE day = ? AND status IN ('delivered', 'bounced', 'skipped') "
        "AND (CASE WHEN timezone = '' THEN ? ELSE timezone END) = ? "
        "AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = d.email)",
        (day.isoformat(), default_zone, zone),
    ).fetchone()
    return int(row[0])


def suppressed(conn: sqlite3.Connection) -> dict[str, str]:
    """Return every suppressed address (lower case) with its reason."""
    return {row[0]: row[1] for row in conn.execute("SELECT email, reason FROM suppressions")}


def _open_readonly(path: Path) -> sqlite3.Connection:
    """Open for reading; in a read-only folder (where WAL's shared-memory file cannot be made) as immutable."""
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc):
            raise
        conn.close()
        conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    return conn


def connect_readonly(state_dir: Path) -> sqlite3.Connection | None:
    """Open an existing state database without changing anything; None if there is none yet."""
    path = db_path(state_dir)
    if not path.is_file():
        return None
    try:
        conn = _open_readonly(path)
        _refuse_foreign(conn, path)
        applied = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    except sqlite3.Error as exc:
        raise storage_error(exc, path) from exc
    if not applied.issuperset(name for name, _ in MIGRATIONS):  # written by an older version: upgrade it once
        conn.close()
        connect(state_dir).close()
        return connect_readonly(state_dir)
    conn.row_factory = sqlite3.Row
    return conn


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
    "ON CONFLICT(email) DO UPDATE SET csv_sync = excluded.csv_sync, "
    + ", ".join(
        f"{column} = CASE WHEN subscribers.source = 'csv' AND subscribers.edited_at = '' "
        f"THEN excluded.{column} ELSE subscribers.{column} END"
        for column in ("address", "name", "timezone", "frequency", "weekday", "updated_at")
    )
)  # the file rules its own rows until someone edits them; other sources' rows keep their values
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
    conn: sqlite3.Connection,
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
    before = conn.total_changes
    exists = conn.execute("SELECT 1 FROM subscribers WHERE email = ?", (address.lower(),)).fetchone()
    conn.execute(sql, row)
    return exists is None and conn.total_changes > before


def find_subscriber(conn: sqlite3.Connection, email: str) -> sqlite3.Row | None:
    """The list's row of an address (any status), or None."""
    return conn.execute(SELECT_SUBSCRIBERS + " WHERE s.email = ?", (email.strip().lower(),)).fetchone()


def find_subscriber_by_public_id(conn: sqlite3.Connection, public_id: str) -> sqlite3.Row | None:
    """The list's row with this public id, or None."""
    return conn.execute(SELECT_SUBSCRIBERS + " WHERE s.public_id = ?", (public_id,)).fetchone()


def subscriber_rows(conn: sqlite3.Connection, status: str | None = None) -> Iterator[sqlite3.Row]:
    """Stream the list (oldest first), optionally of one status."""
    where = " WHERE COALESCE(x.reason, 'active') = ?" if status else ""
    yield from conn.execute(SELECT_SUBSCRIBERS + where + " ORDER BY s.created_at, s.email", (status,) if status else ())


def subscriber_rows_for(conn: sqlite3.Connection, emails: list[str]) -> dict[str, sqlite3.Row]:
    """The rows of some addresses (lower case), by address; at most 500 at a time."""
    marks = ",".join("?" * len(emails))
    return {row["email"]: row for row in conn.execute(SELECT_SUBSCRIBERS + f" WHERE s.email IN ({marks})", emails)}


def rows_ruled_by_list(conn: sqlite3.Connection, emails: list[str]) -> list[str]:
    """Which of these addresses (lower case, at most 500) the list rules: not from the CSV, or edited since."""
    marks = ",".join("?" * len(emails))
    rows = conn.execute(
        f"SELECT email FROM subscribers WHERE email IN ({marks}) AND (source != 'csv' OR edited_at != '')", emails
    )
    return [row[0] for row in rows]


def subscriber_rows_not_from_csv(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Stream the rows added on the web, by the CLI or by an import (not by paths.subscribers)."""
    yield from conn.execute(SELECT_SUBSCRIBERS + " WHERE s.source != 'csv' ORDER BY s.created_at, s.email")


def update_preferences(
    conn: sqlite3.Connection, email: str, *, name: str, timezone: str, frequency: str, weekday: str
) -> bool:
    """Store a subscriber's own choices (from then on the CSV no longer changes the row); False if not on the list."""
    now = utcnow_text()
    cursor = conn.execute(UPDATE_PREFERENCES, (name, timezone, frequency, weekday, now, now, email.strip().lower()))
    return cursor.rowcount == 1


def has_weekly_readers(conn: sqlite3.Connection) -> bool:
    """True if anyone on the list reads weekly (whatever their status)."""
    return conn.execute("SELECT 1 FROM subscribers WHERE frequency = 'weekly' LIMIT 1").fetchone() is not None


def subscriber_counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Count the list by (status, frequency)."""
    rows = conn.execute(
        "SELECT COALESCE(x.reason, 'active'), s.frequency, COUNT(*) FROM subscribers s "
        "LEFT JOIN suppressions x ON x.email = s.email GROUP BY 1, 2"
    )
    return {(status, frequency): count for status, frequency, count in rows}


def suppression_of(conn: sqlite3.Connection, email: str) -> sqlite3.Row | None:
    """The suppression of an address (reason, detail, created_at), or None."""
    return conn.execute(
        "SELECT email, reason, detail, created_at FROM suppressions WHERE email = ?", (email.strip().lower(),)
    ).fetchone()


def suppression_rows(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every suppression, oldest first."""
    return conn.execute(
        "SELECT email, reason, detail, created_at FROM suppressions ORDER BY created_at, email"
    ).fetchall()


def lift_suppression(conn: sqlite3.Connection, email: str) -> bool:
    """Remove an address from the suppression list; False if it was not on it."""
    return conn.execute("DELETE FROM suppressions WHERE email = ?", (email.strip().lower(),)).rowcount == 1


def csv_signature(conn: sqlite3.Connection, path: str) -> str:
    """The signature (size, mtime) of the CSV file when it was last synced; '' if never."""
    row = conn.execute("SELECT signature FROM csv_syncs WHERE path = ?", (path,)).fetchone()
    return row[0] if row else ""


def upsert_csv_rows(conn: sqlite3.Connection, rows: list[tuple[str, ...]], stamp: str) -> None:
    """Add or refresh rows of the CSV file: (address, name, timezone, frequency, weekday) each."""
    now = utcnow_text()
    conn.executemany(
        UPSERT_CSV_ROW,
        [(a.lower(), a, new_public_id(), n, z, f, w, now, now, stamp) for a, n, z, f, w in rows],
    )


def finish_csv_sync(conn: sqlite3.Connection, path: str, signature: str, stamp: str) -> int:
    """Drop the CSV's rows that this sync did not find; record the file's signature; return how many left."""
    dropped = conn.execute("DELETE FROM subscribers WHERE source = 'csv' AND csv_sync != ?", (stamp,)).rowcount
    conn.execute(
        "INSERT INTO csv_syncs (path, signature, synced_at) VALUES (?, ?, ?) "
        "ON CONFLICT(path) DO UPDATE SET signature = excluded.signature, synced_at = excluded.synced_at",
        (path, signature, utcnow_text()),
    )
    return dropped
