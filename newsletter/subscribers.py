"""Subscribers: the CSV list (read streaming, validated row by row), web sign-ups, suppressions."""

from __future__ import annotations

import csv
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from newsletter.errors import SubscriberError

try:
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, EMAIL_MAX_LENGTH
except ImportError:  # a release without these names: every address goes to the library whole
    CASE_INSENSITIVE_MAILBOX_NAMES, EMAIL_MAX_LENGTH = [], 0

log = logging.getLogger(__name__)

COLUMNS = ("email", "name", "timezone")


@dataclass(frozen=True)
class Subscriber:
    email: str  # as validated (normalized by email-validator); dedup key is email.lower()
    name: str = ""
    timezone: str = ""  # IANA zone or "" for the newsletter's zone

    @property
    def key(self) -> str:
        return self.email.lower()


@dataclass(frozen=True)
class RowProblem:
    """A CSV row that was skipped, and why."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Tally:
    """What reading the list found: problems (skipped rows), duplicates and suppressed addresses."""

    problems: list[RowProblem] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    suppressed: int = 0

    @property
    def invalid(self) -> int:
        return len(self.problems)

    def skipped_summary(self) -> str:
        return f"skipped {self.invalid + self.duplicates + self.suppressed}: {self.invalid} invalid, {self.duplicates} duplicate, {self.suppressed} suppressed"


def check_address(address: str) -> str:
    """Return the normalized address, or raise ValueError with the reason (syntax only, no DNS).

    email-validator decides. Its domain checks (IDNA, special-use names) cost most of its time
    and a list has few distinct domains, so a plain dot-atom local part is checked here and the
    domain's verdict is memoized; anything else goes to the library whole. A test holds the two
    paths to the same answers.
    """
    local, _, domain = address.rpartition("@")
    if len(local) <= 64 and _DOT_ATOM.match(local) and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES:
        checked = _checked_domain(domain)
        if checked is not None:
            normalized = f"{local}@{checked[0]}"
            longest = max(len(address.encode()), len(normalized.encode()), len(local) + 1 + len(checked[1]))
            if longest <= EMAIL_MAX_LENGTH:
                return normalized
    return _validate(address).normalized


# RFC 5322 dot-atom with ASCII atext only: what email-validator accepts as is and never rewrites
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


@lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> tuple[str, str] | None:
    """(normalized, ASCII) forms of a valid domain, or None to let the library report the problem."""
    try:
        result = _validate(f"a@{domain}")
    except ValueError:
        return None
    return result.domain, result.ascii_domain


def _validate(address: str) -> ValidatedEmail:
    try:
        return validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


@lru_cache(maxsize=1024)
def valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _decoded_lines(path: Path, tally: Tally) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a file read line by line; undecodable lines are reported and skipped."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SubscriberError(
            f"{path}: cannot read the subscriber list: {exc.strerror} (check paths.subscribers)"
        ) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                tally.problems.append(RowProblem(path, number, f"not UTF-8 text (byte {exc.start}); row skipped"))
                continue
            yield number, text


def read_csv(path: Path, tally: Tally) -> Iterator[Subscriber]:
    """Stream the valid rows of a subscriber CSV (columns email,name,timezone); bad rows go to ``tally``."""
    lines = _decoded_lines(path, tally)
    numbers: list[int] = [0]

    def texts() -> Iterator[str]:
        for number, text in lines:
            numbers[0] = number
            yield text

    reader = csv.reader(texts())
    header = next(reader, None)
    if header is None:
        return
    columns = [c.strip().lower() for c in header]
    if "email" not in columns:
        raise SubscriberError(f"{path}:{numbers[0]}: no 'email' column in the header (expected: {','.join(COLUMNS)})")
    index = {name: columns.index(name) for name in COLUMNS if name in columns}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        tally.rows += 1
        subscriber = _row(row, index, len(columns), path, numbers[0], tally)
        if subscriber is not None:
            yield subscriber


def _row(row: list[str], index: dict[str, int], width: int, path: Path, line: int, tally: Tally) -> Subscriber | None:
    def problem(message: str) -> None:
        tally.problems.append(RowProblem(path, line, message + "; row skipped"))

    if len(row) > width:
        problem(f"{len(row)} fields, the header has {width}")
        return None
    cells = {name: (row[i].strip() if i < len(row) else "") for name, i in index.items()}
    if not cells.get("email"):
        problem("missing email")
        return None
    try:
        email = check_address(cells["email"])
    except ValueError as exc:
        problem(f"invalid email {cells['email']!r}: {exc}")
        return None
    zone = cells.get("timezone", "")
    if zone and not valid_zone(zone):
        problem(f"unknown time zone {zone!r} for {email}")
        return None
    return Subscriber(email, " ".join(cells.get("name", "").split()), zone)


def web_subscribers(conn: sqlite3.Connection | None) -> Iterator[Subscriber]:
    """Stream the subscribers confirmed on the web."""
    if conn is None:
        return
    for row in conn.execute("SELECT email, name, timezone FROM web_subscribers ORDER BY confirmed_at, email"):
        yield Subscriber(row[0], row[1], row[2])


class DiskSet:
    """A set of strings kept in a private temporary SQLite file: memory stays flat for any list size."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "" = a temporary on-disk database, deleted on close
        self._db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, key: str) -> bool:
        """Add a key; return False if it was already there."""
        return self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (key,)).rowcount == 1

    def close(self) -> None:
        self._db.close()


def iter_recipients(csv_path: Path, conn: sqlite3.Connection | None, tally: Tally) -> Iterator[Subscriber]:
    """Stream everyone to mail: the CSV, then web sign-ups; duplicates once, suppressed never."""
    suppressed = _suppressed(conn)
    seen = DiskSet()
    try:
        yield from _unique(chain(read_csv(csv_path, tally), web_subscribers(conn)), seen, suppressed, tally)
    finally:
        seen.close()


def _unique(
    subscribers: Iterable[Subscriber], seen: DiskSet, suppressed: frozenset[str], tally: Tally
) -> Iterator[Subscriber]:
    for subscriber in subscribers:
        key = subscriber.key
        if not seen.add(key):
            tally.duplicates += 1
            continue
        if key in suppressed:
            tally.suppressed += 1
            continue
        yield subscriber


def _suppressed(conn: sqlite3.Connection | None) -> frozenset[str]:
    if conn is None:
        return frozenset()
    return frozenset(row[0] for row in conn.execute("SELECT email FROM suppressions"))
