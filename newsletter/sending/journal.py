"""Acceptances on their way into a SQLite ledger: an append-only file per sender, moved in batches, replayed after a crash.

SQLite has one writer at a time: a transaction for every accepted message costs about 40 µs
of CPU and makes sender processes queue for the write lock. So on SQLite a sender appends
each acceptance to its own journal, ``<paths.state>/journal/<owner>.<n>.log`` (one ``write``
of a line: it survives the sender's crash, as a commit with ``synchronous=NORMAL`` does),
before the next message's content goes out on that connection. Every ``FLUSH_ROWS``
acceptances or ``FLUSH_SECONDS`` the journal moves into the ledger in one transaction and a
new one starts. A sender holds a lock (``flock``) on its journal while it lives; a sender
that finds a journal nobody holds (its sender was killed, or could not move it) applies it
before it claims any row, so nothing recorded there is sent again: a crash still sends
twice at most the message each connection had in flight.

PostgreSQL ledgers take each acceptance directly (several machines: a journal on a lost
machine would be lost with it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Generator
from datetime import date
from pathlib import Path

from newsletter.ledger import Ledger
from newsletter.storage import Database

FLUSH_ROWS = 512  # acceptances per move into the ledger ...
FLUSH_SECONDS = 0.5  # ... or at least this often while messages are accepted
HEADER = "# newsletter journal of "


def folder_of(db: Database) -> Path | None:
    """Where a database's senders keep their journals: beside a SQLite file; None for PostgreSQL."""
    path = getattr(db, "path", None)
    return Path(path).parent / "journal" if db.backend == "sqlite" and path else None


class Journal:
    """One sender's journal: ``append`` costs one write; ``flush`` moves everything into the ledger."""

    def __init__(self, folder: Path, owner: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder, self.owner, self.clock = folder, owner, clock
        self.stem = re.sub(r"[^A-Za-z0-9._-]", "_", owner)
        self.segment = 0
        self.fd: int | None = None
        self.rows: list[tuple[date, str, str]] = []  # written to the current segment, not yet in the ledger
        self.since = 0.0

    @property
    def path(self) -> Path:
        return self.folder / f"{self.stem}.{self.segment}.log"

    def append(self, day: date, accepted: list[tuple[str, str]]) -> None:
        """Record acceptances (address, reply) durably for this process: one write; raise OSError if it fails."""
        if self.fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)  # held while this sender lives: nobody replays a live journal
            self.fd = fd
            os.write(fd, f"{HEADER}{self.owner}\n".encode())
        lines = "".join(f"{day.isoformat()}\t{email}\t{_one_line(reply)}\n" for email, reply in accepted)
        os.write(self.fd, lines.encode("utf-8", "surrogateescape"))
        if not self.rows:
            self.since = self.clock()
        self.rows.extend((day, email, reply) for email, reply in accepted)

    def due(self) -> bool:
        return len(self.rows) >= FLUSH_ROWS or (bool(self.rows) and self.clock() - self.since >= FLUSH_SECONDS)

    def flush(self, ledger: Ledger) -> None:
        """Move the journal into the ledger in one transaction, then start a new segment; raise the ledger's error if it fails.

        The segment is removed only once the ledger holds its rows: a failure keeps it for the
        next flush, or for whoever replays it after this process is gone.
        """
        if not self.rows:
            return
        _apply(ledger, self.rows)
        self.path.unlink(missing_ok=True)
        self.close()
        self.segment += 1
        self.rows = []

    def close(self) -> None:
        """Close the file and give up its lock (after a final ``flush``, or leaving it for a replay)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def replay(folder: Path, ledger: Ledger) -> int:
    """Apply and remove the journals no sender holds (theirs are gone); return how many acceptances they held.

    Safe to run by several senders at once: an acceptance applied twice changes nothing the
    second time (only rows still pending or failed are marked delivered).
    """
    applied = 0
    with contextlib.closing(_unheld(folder, fcntl.LOCK_EX)) as journals:
        for path, rows in journals:
            if rows:
                _apply(ledger, rows)
            path.unlink(missing_ok=True)
            applied += len(rows)
    return applied


def waiting(folder: Path) -> dict[date, int]:
    """Acceptances by date in the journals no sender holds: delivered, but not yet in the ledger (``replay`` moves them)."""
    with contextlib.closing(_unheld(folder, fcntl.LOCK_SH)) as journals:
        return dict(Counter(day for _, rows in journals for day, _, _ in rows))


def _unheld(folder: Path, lock: int) -> Generator[tuple[Path, list[tuple[date, str, str]]], None, None]:
    """The journals of a folder that no live sender holds, with their rows; each stays locked (``lock``) while the caller handles it."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".log"))
    except FileNotFoundError:
        return
    for name in names:
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, lock | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its sender is alive and moves it itself
            owner, rows = read(path)
            if owner is not None:
                yield path, rows
        finally:
            os.close(fd)


def read(path: Path) -> tuple[str | None, list[tuple[date, str, str]]]:
    """A journal's owner and its complete lines (a line cut short by a crash was never acknowledged as recorded)."""
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None, []
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
    if not lines or not lines[0].startswith(HEADER):
        return None, []
    rows = []
    for line in lines[1:]:
        day, _, rest = line.partition("\t")
        email, _, reply = rest.partition("\t")
        try:
            rows.append((date.fromisoformat(day), email, reply))
        except ValueError:
            continue
    return lines[0].removeprefix(HEADER), rows


def _apply(ledger: Ledger, rows: list[tuple[date, str, str]]) -> None:
    """Mark the rows delivered: one transaction per date (a journal holds one date, unless it was replayed)."""
    by_day: dict[date, list[tuple[str, str]]] = defaultdict(list)
    for day, email, reply in rows:
        by_day[day].append((email, reply))
    for day, accepted in by_day.items():
        ledger.mark_delivered_many(day, accepted)


def _one_line(reply: str) -> str:
    return reply.replace("\t", " ").replace("\r", " ").replace("\n", " ")
