"""The one way to the state database: ``connect(settings)`` picks the backend from ``database.url``.

``""`` (the default) is the SQLite file ``<paths.state>/newsletter.sqlite3`` (``storage.sqlite``);
``postgresql://...`` is a PostgreSQL database through psycopg 3 (``storage.postgres``). Both
backends hold the same tables under the same named migrations, and every module writes its
SQL once for both (docs/architecture.md, "Storage: SQL that runs on both backends"):

- ``?`` placeholders (the PostgreSQL backend turns them into psycopg's ``%s``);
- ``INSERT ... ON CONFLICT DO NOTHING`` / ``ON CONFLICT (key) DO UPDATE SET c = excluded.c``;
- times as ISO text computed in Python (``utcnow_text()``), never the database's own clock;
- ``db.rowid``, not ``rowid``, for the deliveries row id (an explicit ``id`` column on PostgreSQL);
- ``with db.transaction():`` for anything that writes more than one statement.

A backend error (``db.errors``) inside ``db.guarded()`` or a command becomes one
``StorageError`` line naming the file or the URL (password masked): ``db.error(exc)``.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from newsletter.errors import StorageError

if TYPE_CHECKING:
    from newsletter.config import Settings

__all__ = [
    "Cursor",
    "Database",
    "Row",
    "StorageError",
    "backend_errors",
    "connect",
    "connect_readonly",
    "error_for",
    "label",
    "utc_text",
    "utcnow_text",
]


class Row(Protocol):
    """A result row: by position (``row[0]``) and by column name (``row["email"]``)."""

    def __getitem__(self, key: int | str) -> Any: ...
    def keys(self) -> list[str]: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class Cursor(Protocol):
    """What ``Database.execute`` returns: rows to fetch or iterate, and how many rows a write changed."""

    @property
    def rowcount(self) -> int: ...  # read-only: sqlite3's and psycopg's cursors set it themselves

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


def utc_text(moment: datetime) -> str:
    """An aware moment in UTC as ISO text to the second: how every backend stores a moment."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def utcnow_text() -> str:
    """Now, as ``utc_text`` stores it."""
    return utc_text(datetime.now(UTC))


class Database:
    """An open state database; safe to share between threads (one statement or transaction at a time).

    Subclasses (``SQLiteDatabase``, ``PostgresDatabase``) set the class attributes below and
    implement ``_execute``, ``_executemany``, ``_begin``, ``_commit``, ``_rollback``,
    ``_close`` and ``error``.
    """

    backend: ClassVar[str]  # "sqlite" | "postgresql"
    rowid: ClassVar[str]  # the deliveries row id column: "rowid" (SQLite) | "id" (PostgreSQL)
    errors: ClassVar[tuple[type[BaseException], ...]]  # the driver's exceptions, for ``except db.errors``

    def __init__(self, label: str) -> None:
        self.label = label  # the file, or the URL with its password masked: for messages
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting: only the outermost one begins and commits

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement (``?`` placeholders); outside a transaction it commits at once."""
        with self._lock:
            return self._execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement for each row of parameters; return how many rows it changed in all."""
        rows = list(rows)
        if not rows:
            return 0
        with self._lock:
            return self._executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Run a block in one write transaction (nested blocks join the outer one); other threads wait."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._begin()
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                self._rollback()
                raise
            self._depth = 0
            self._commit()

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """Turn a backend error inside the block into one StorageError line naming this database."""
        try:
            yield
        except self.errors as exc:
            raise self.error(exc) from exc

    def tables(self) -> list[str]:
        """The names of the tables in this database, sorted (``migrations`` included)."""
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def error(self, exc: BaseException) -> StorageError:
        """One line for a backend error: which database, what is wrong, what to do."""
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[Any]) -> Cursor:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[Sequence[Any]]) -> int:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


def _is_postgres(settings: Settings) -> bool:
    return bool(settings.database.url)


def connect(settings: Settings) -> Database:
    """Open the state database (creating and migrating it if needed) that ``database.url`` names."""
    if _is_postgres(settings):
        from newsletter.storage import postgres

        return postgres.connect(settings.database.url)
    from newsletter.storage import sqlite

    return sqlite.connect(settings.paths.state)


def connect_readonly(settings: Settings) -> Database | None:
    """Open the state database without changing anything; None if there is none yet."""
    if _is_postgres(settings):
        from newsletter.storage import postgres

        return postgres.connect_readonly(settings.database.url)
    from newsletter.storage import sqlite

    return sqlite.connect_readonly(settings.paths.state)


def label(settings: Settings) -> str:
    """The state database as messages name it: the SQLite file, or the URL with its password masked."""
    if _is_postgres(settings):
        from newsletter.config import masked_url

        return masked_url(settings.database.url)
    from newsletter.storage import sqlite

    return str(sqlite.db_path(settings.paths.state))


def backend_errors() -> tuple[type[BaseException], ...]:
    """The exception types of every driver loaded so far (psycopg is imported only for PostgreSQL)."""
    found: list[type[BaseException]] = [sqlite3.Error]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        found.append(psycopg.Error)
    return tuple(found)


def error_for(exc: BaseException, settings: Settings | None) -> StorageError:
    """One line for a backend error raised outside a ``Database`` method (the CLI's last resort)."""
    if isinstance(exc, StorageError):
        return exc
    if settings is not None and _is_postgres(settings):
        from newsletter.storage import postgres

        return postgres.storage_error(exc, label(settings))
    from newsletter.storage import sqlite

    path = sqlite.db_path(settings.paths.state) if settings is not None else sqlite.Path(sqlite.DB_NAME)
    return sqlite.storage_error(exc, path)
