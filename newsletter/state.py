"""The SQLite state database: one file in the state folder, schema kept by named migrations.

Every module that keeps state (the ledger, the edition record, suppressions, web
sign-ups) adds its tables here as a named migration; migrations run once, in order,
and are recorded in the ``migrations`` table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

from newsletter.errors import NewsletterError

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
]


def utcnow_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def db_path(state_dir: Path) -> Path:
    return state_dir / DB_NAME


def connect(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the state database in WAL mode with every migration applied."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(db_path(state_dir), timeout=30, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise NewsletterError(f"{state_dir}: cannot open the state database: {exc} (check paths.state)") from None
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


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


def suppressed(conn: sqlite3.Connection) -> dict[str, str]:
    """Return every suppressed address (lower case) with its reason."""
    return {row[0]: row[1] for row in conn.execute("SELECT email, reason FROM suppressions")}


def connect_readonly(state_dir: Path) -> sqlite3.Connection | None:
    """Open an existing state database without changing anything; None if there is none yet."""
    path = db_path(state_dir)
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("SELECT 1 FROM migrations")
    except sqlite3.Error as exc:
        raise NewsletterError(f"{path}: cannot read the state database: {exc}") from None
    conn.row_factory = sqlite3.Row
    return conn
