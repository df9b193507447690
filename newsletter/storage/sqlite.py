"""The SQLite backend: one file in the state folder (WAL), the schema kept by named migrations.

Migrations run once, in order, each in its own transaction, and are recorded in the
``migrations`` table; a shipped migration is never edited (append a new one, and its
PostgreSQL form to ``storage.postgres.MIGRATIONS`` under the same name).
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from newsletter.errors import StorageError
from newsletter.storage import Cursor, Database, utcnow_text

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
    (
        "0090-edition-totals",
        """
        -- what `newsletter prune` keeps of an old edition once its recipient rows are folded (retention.py)
        CREATE TABLE edition_totals (
            day TEXT NOT NULL,               -- the edition date
            kind TEXT NOT NULL CHECK (kind IN ('edition', 'digest', 'test')),  -- 'test': send --to copies
            status TEXT NOT NULL,            -- a deliveries status (or a test copy's)
            total INTEGER NOT NULL,          -- how many rows of that date, kind and status were folded
            PRIMARY KEY (day, kind, status)
        );
        """,
    ),
    (
        "0080-leases",
        """
        -- senders share an edition: each claims due rows with a lease (owner, until: Unix time) and renews
        -- it while it works, recording an outcome clears it, and a row whose lease ran out returns to the pool
        ALTER TABLE deliveries ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
        ALTER TABLE deliveries ADD COLUMN lease_until REAL NOT NULL DEFAULT 0;
        CREATE INDEX deliveries_leased ON deliveries (day, lease_owner, lease_until) WHERE lease_owner != '';
        """,
    ),
    (
        "0081-send-budget",
        """
        -- smtp.rate_limit and smtp.max_per_hour across every sender of one relay account (sending/throttle.py)
        CREATE TABLE send_budget (
            scope TEXT PRIMARY KEY,          -- the relay account: host:port/username
            next_slot REAL NOT NULL          -- the next free slot of the per-second budget (Unix time)
        );
        CREATE TABLE send_slots (
            scope TEXT NOT NULL,
            at REAL NOT NULL                 -- a reserved slot (Unix time): the last hour's make the hourly budget
        );
        CREATE INDEX send_slots_by_scope ON send_slots (scope, at);
        """,
    ),
    ("0082-deliveries-hot", ""),  # PostgreSQL only (its rows updated in place: storage/postgres.py); none here
]



WAL = "PRAGMA journal_mode=WAL"  # first, on its own (``_wal``)
PRAGMAS = ("PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON")


class SQLiteDatabase(Database):
    """The state file through the standard library's sqlite3 (autocommit; ``transaction`` is BEGIN IMMEDIATE)."""

    backend = "sqlite"
    rowid = "rowid"
    errors = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(str(path))
        self.conn = conn
        self.path = path

    def _execute(self, sql: str, params: Sequence[Any]) -> Cursor:
        return self.conn.execute(sql, params)

    def _executemany(self, sql: str, rows: list[Sequence[Any]]) -> int:
        return self.conn.executemany(sql, rows).rowcount

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def _close(self) -> None:
        self.conn.close()

    def error(self, exc: BaseException) -> StorageError:
        return storage_error(exc, self.path)

    def tables(self) -> list[str]:
        rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        return [row[0] for row in rows]


def db_path(state_dir: Path) -> Path:
    return state_dir / DB_NAME


def connect(state_dir: Path) -> SQLiteDatabase:
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
        _wal(conn)
        for pragma in PRAGMAS:
            conn.execute(pragma)
        db = SQLiteDatabase(conn, path)
        migrate(db)
    except (OSError, sqlite3.Error) as exc:
        if conn is not None:
            conn.close()
        raise storage_error(exc, path) from exc
    return db


def _wal(conn: sqlite3.Connection, patience: float = 10.0) -> None:
    """Put the file in WAL mode. Two processes opening a new file at once: SQLite refuses the second
    switch at once with "database is locked" (no busy wait for it), so try again for a while."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute(WAL)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


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


def migrate(db: SQLiteDatabase) -> None:
    """Apply the migrations this database has not seen yet, each in its own transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM migrations")}
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with db.transaction():
            if db.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone():
                continue  # another process applied it while we waited for the lock
            for statement in filter(str.strip, sql.split(";")):
                db.execute(statement)
            db.execute("INSERT INTO migrations VALUES (?, ?)", (name, utcnow_text()))


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


def connect_readonly(state_dir: Path) -> SQLiteDatabase | None:
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
    return SQLiteDatabase(conn, path)
