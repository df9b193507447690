"""``newsletter migrate --to postgresql://...``: copy the SQLite state into an empty PostgreSQL database.

The SQLite file is never written: it is read through the backup API into a temporary copy
(which is brought up to the current migrations if an older version wrote it), and that copy
is read. The target must hold no table at all; its schema (the PostgreSQL migrations) and
every row are written in one transaction, so a failure leaves it empty. Rows go through
PostgreSQL's COPY; the deliveries keep their ids (SQLite's rowid), so the order of the
ledger is the same.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from newsletter.config import masked_url
from newsletter.errors import StorageError
from newsletter.storage import postgres, sqlite

IDENTITY_TABLES = ("deliveries", "test_sends")  # tables whose id column PostgreSQL generates: their ids are kept


@dataclass
class Copied:
    """What ``copy_to_postgres`` copied: rows per table, in table order."""

    source: Path
    target: str  # the URL, password masked
    rows: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        width = max((len(table) for table in self.rows), default=0)
        return [f"{table:<{width}}  {count}" for table, count in self.rows.items()]

    def summary(self) -> str:
        return (
            f"copied {sum(self.rows.values())} rows in {len(self.rows)} tables from {self.source} to {self.target}; "
            f"{self.source} is unchanged. Set database.url (or NEWSLETTER_DATABASE_URL) to use it"
        )


def target_url(given: str, env_url: str) -> str:
    """The URL to connect to: ``--to`` as given, or the environment's URL (with its password) when it names the same database.

    A password on the command line is refused: it would show in the process list and the shell history.
    """
    parts = urlsplit(given)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise StorageError(f"--to must be a postgresql://... URL, not {masked_url(given)!r}")
    if parts.password:
        raise StorageError(
            f"--to {masked_url(given)}: no password on the command line: set NEWSLETTER_DATABASE_URL "
            "(the same URL with the password), PGPASSWORD or ~/.pgpass"
        )
    env = urlsplit(env_url) if env_url else None
    if env and env.password and env._replace(netloc=env.netloc.replace(f":{env.password}@", "@", 1)) == parts:
        return env_url
    return given


def copy_to_postgres(state_dir: Path, url: str) -> Copied:
    """Copy every table of the SQLite state in ``state_dir`` into the empty PostgreSQL database at ``url``."""
    path = sqlite.db_path(state_dir)
    if not path.is_file():
        raise StorageError(f"{path}: no SQLite state to copy (paths.state is {state_dir})")
    with tempfile.TemporaryDirectory(prefix="newsletter-migrate-") as folder:
        source = _snapshot(path, Path(folder))
        try:
            return _copy(source, path, url)
        finally:
            source.close()


def _snapshot(path: Path, folder: Path) -> sqlite.SQLiteDatabase:
    """A migrated copy of the state file in ``folder``, made without writing to the original."""
    try:
        original = sqlite._open_readonly(path)
        try:
            sqlite._refuse_foreign(original, path)
            with sqlite3.connect(folder / sqlite.DB_NAME) as copy:
                original.backup(copy)
            copy.close()
        finally:
            original.close()
    except sqlite3.Error as exc:
        raise sqlite.storage_error(exc, path) from exc
    return sqlite.connect(folder)


def _copy(source: sqlite.SQLiteDatabase, path: Path, url: str) -> Copied:
    target = postgres.open_empty(url)
    copied = Copied(path, target.label)
    try:
        with target.guarded(), target.transaction():
            postgres.migrate(target)  # joins this transaction: all or nothing
            missing = sorted(set(source.tables()) - set(target.tables()))
            if missing:
                raise StorageError(
                    f"{target.label}: the PostgreSQL schema has no table {', '.join(missing)} of {path}: "
                    "this version cannot copy it"
                )
            for table in source.tables():
                if table != "migrations":
                    copied.rows[table] = _copy_table(source, target, table)
    finally:
        target.close()
    return copied


def _copy_table(source: sqlite.SQLiteDatabase, target: postgres.PostgresDatabase, table: str) -> int:
    """Replace the rows of one table (a migration may have seeded it) by the SQLite rows, through COPY."""
    columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
    select = ", ".join(columns)
    if table == "deliveries":
        columns, select = ["id", *columns], "rowid, " + select
    target.execute(f"DELETE FROM {table}")
    count = 0
    with target.conn.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in source.execute(f"SELECT {select} FROM {table} ORDER BY rowid"):
                copy.write_row(tuple(row))
                count += 1
        if table in IDENTITY_TABLES:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}"
            )
    return count
