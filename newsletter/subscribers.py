"""Subscribers: the list of record in the state database, the CSV file beside it, suppressions.

The list (table ``subscribers``, SQL in ``state``) holds everyone, wherever they came from:
the web, ``subscribers add``, ``subscribers import`` and the CSV file at
``paths.subscribers``. The CSV is synced into the list at every send (its rows have
source 'csv'): a new address is added, a row of the file follows the file until the reader
(or the operator) changes its preferences, and a row removed from the file leaves the list.
A suppression (unsubscribed, bounced, complained) always wins. ``iter_recipients`` computes
the same merge without writing, for dry runs and checks.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from newsletter import state
from newsletter.errors import SubscriberError
from newsletter.storage import Database, Row

try:
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, EMAIL_MAX_LENGTH
except ImportError:  # a release without these names: every address goes to the library whole
    CASE_INSENSITIVE_MAILBOX_NAMES, EMAIL_MAX_LENGTH = [], 0

log = logging.getLogger(__name__)

COLUMNS = ("email", "name", "timezone", "frequency", "weekday")  # the last two optional


@dataclass(frozen=True)
class Subscriber:
    email: str  # as validated (normalized by email-validator); dedup key is email.lower()
    name: str = ""
    timezone: str = ""  # IANA zone or "" for the newsletter's zone
    frequency: str = "daily"  # "daily" | "weekly"
    weekday: str = "monday"  # a weekly reader's day, "monday" ... "sunday"
    public_id: str = field(default="", compare=False)  # the list's random id for links; "" before the first sync

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
    notes: list[RowProblem] = field(default_factory=list)  # kept rows worth a warning (addresses that need SMTPUTF8)
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
        return validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


@lru_cache(maxsize=1024)
def valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@lru_cache(maxsize=1)
def zone_choices() -> tuple[str, ...]:
    """The IANA zones a reader chooses from: those of zone1970.tab (tzdata's own list of current zones) and UTC."""
    from importlib import resources  # here: only the web forms list zones (the import costs ~5 ms)

    try:
        table = resources.files("tzdata").joinpath("zoneinfo", "zone1970.tab").read_text(encoding="utf-8")
        names = {line.split("\t")[2] for line in table.splitlines() if line and not line.startswith("#")}
    except (OSError, IndexError, ModuleNotFoundError):  # no tzdata table: every zone the system knows
        names = set(available_timezones())
    return tuple(sorted(name for name in names | {"UTC"} if valid_zone(name)))


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
    if not email.rpartition("@")[0].isascii():
        tally.notes.append(RowProblem(path, line, f"warning: {email} has a non-ASCII local part: it can be sent only "
                                      "if the SMTP server offers SMTPUTF8, else it is recorded as not sendable"))  # fmt: skip
    zone = cells.get("timezone", "")
    if zone and not valid_zone(zone):
        problem(f"unknown time zone {zone!r} for {email}")
        return None
    frequency = cells.get("frequency", "").lower() or "daily"
    weekday = cells.get("weekday", "").lower() or "monday"
    if frequency not in state.FREQUENCIES:
        problem(f"frequency {cells['frequency']!r} for {email} is not daily or weekly")
        return None
    if weekday not in state.WEEKDAYS:
        problem(f"weekday {cells['weekday']!r} for {email} is not monday ... sunday")
        return None
    return Subscriber(email, " ".join(cells.get("name", "").split()), zone, frequency, weekday)


class DiskSet:
    """A set of strings that stays in memory up to ``in_memory`` keys, then moves to a private temporary SQLite file.

    So memory stays flat for any list size (about 20 MB at most), and a list of up to
    200,000 addresses costs no SQLite statement per key.
    """

    def __init__(self, in_memory: int = 200_000) -> None:
        self.limit = in_memory
        self._keys: set[str] | None = set()
        self._db: sqlite3.Connection | None = None

    def add(self, key: str) -> bool:
        """Add a key; return False if it was already there."""
        if self._keys is not None:
            if key in self._keys:
                return False
            if len(self._keys) < self.limit:
                self._keys.add(key)
                return True
            self._spill()
        assert self._db is not None
        return self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (key,)).rowcount == 1

    def _spill(self) -> None:
        self._db = sqlite3.connect("")  # "" = a temporary on-disk database, deleted on close
        self._db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.executemany("INSERT INTO seen VALUES (?)", ((key,) for key in self._keys or ()))
        self._keys = None

    def close(self) -> None:
        self._keys = set()
        if self._db is not None:
            self._db.close()
            self._db = None


def iter_recipients(
    csv_path: Path, conn: Database | None, tally: Tally, frequency: str | None = "daily"
) -> Iterator[Subscriber]:
    """Stream everyone to mail (of one frequency, or all): the list as the next CSV sync makes it, suppressed never.

    Reads and never writes, so a dry run or a check sees what a send will do: the CSV's rows
    first (with the list's values where the list rules the row), then the rest of the list.
    """
    suppressed = _suppressed(conn)
    seen = DiskSet()
    try:
        merged = chain(_csv_merged(read_csv(csv_path, tally), conn), _rest_of_list(conn))
        for subscriber, duplicate_counts in merged:
            if not seen.add(subscriber.key):
                tally.duplicates += duplicate_counts
                continue
            if _wanted(subscriber, suppressed, frequency, tally):
                yield subscriber
    finally:
        seen.close()


def synced_recipients(
    csv_path: Path, conn: Database, tally: Tally, frequency: str | None = "daily"
) -> Iterator[Subscriber]:
    """Sync the CSV into the list and stream everyone to mail, reading the file once: ``sync_csv``, then ``iter_recipients``.

    Each chunk of the file is written to the list, then its readers are streamed (with the
    list's values where the list rules the row); once the file is read the sync is finished
    (rows no longer in the file leave) and the rest of the list follows. A file unchanged since
    the last sync is only read. The list is synced once the stream is consumed.
    """
    changed = _changed_csv(csv_path, conn)
    if changed is None:
        yield from iter_recipients(csv_path, conn, tally, frequency)
        return
    suppressed = _suppressed(conn)
    seen = DiskSet()
    try:
        for fresh in _synced_chunks(csv_path, conn, tally, seen, changed):
            for subscriber, _ in _csv_merged(fresh, conn):
                if _wanted(subscriber, suppressed, frequency, tally):
                    yield subscriber
        for subscriber, _ in _rest_of_list(conn):
            if seen.add(subscriber.key) and _wanted(subscriber, suppressed, frequency, tally):
                yield subscriber
    finally:
        seen.close()


def _wanted(subscriber: Subscriber, suppressed: frozenset[str], frequency: str | None, tally: Tally) -> bool:
    """Whether to mail a reader of the list: never when suppressed (counted), and only of the frequency asked for."""
    if subscriber.key in suppressed:
        tally.suppressed += 1
        return False
    return frequency is None or subscriber.frequency == frequency


def _csv_merged(rows: Iterable[Subscriber], conn: Database | None) -> Iterator[tuple[Subscriber, int]]:
    """The CSV's rows, each replaced by the list's row where the list rules it (web, CLI, import, or edited)."""
    for chunk in _chunks(rows, 500):
        ruled = state.rows_ruled_by_list(conn, sorted({s.key for s in chunk})) if conn else []
        found = state.subscriber_rows_for(conn, ruled) if conn and ruled else {}
        for subscriber in chunk:
            row = found.get(subscriber.key)
            yield (subscriber if row is None else subscriber_of(row)), 1


def with_public_ids(subscribers: Iterable[Subscriber], conn: Database | None) -> Iterator[Subscriber]:
    """The subscribers with the list's public id filled in (for links), looked up 500 at a time."""
    for chunk in _chunks(subscribers, 500):
        found = state.subscriber_rows_for(conn, sorted({s.key for s in chunk})) if conn else {}
        for subscriber in chunk:
            row = found.get(subscriber.key)
            yield dataclasses.replace(subscriber, public_id=row["public_id"]) if row is not None else subscriber


def _rest_of_list(conn: Database | None) -> Iterator[tuple[Subscriber, int]]:
    """The list's rows that did not come from the CSV (those did, or they leave at the next sync)."""
    if conn is None:
        return
    for row in state.subscriber_rows_not_from_csv(conn):
        yield subscriber_of(row), 0  # also in the CSV: the same person, not a duplicate row


def _chunks(items: Iterable[Subscriber], size: int) -> Iterator[list[Subscriber]]:
    chunk: list[Subscriber] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def subscriber_of(row: Row) -> Subscriber:
    """The Subscriber of a list row."""
    return Subscriber(row["address"], row["name"], row["timezone"], row["frequency"], row["weekday"], row["public_id"])


def _suppressed(conn: Database | None) -> frozenset[str]:
    if conn is None:
        return frozenset()
    return frozenset(row[0] for row in conn.execute("SELECT email FROM suppressions"))


# The list of record: what the CLI and the web do to it -----------------------------------


@dataclass(frozen=True)
class Entry:
    """One row of the list of record, with its status."""

    email: str
    name: str
    timezone: str
    frequency: str
    weekday: str
    status: str  # "active" | "unsubscribed" | "bounced" | "complained"
    source: str  # "csv" | "web" | "cli" | "import"
    created_at: str
    public_id: str

    @property
    def subscriber(self) -> Subscriber:
        return Subscriber(self.email, self.name, self.timezone, self.frequency, self.weekday)


def entry_of(row: Row) -> Entry:
    """The Entry of a list row."""
    return Entry(
        row["address"], row["name"], row["timezone"], row["frequency"], row["weekday"],
        row["status"], row["source"], row["created_at"], row["public_id"],
    )  # fmt: skip


def entries(conn: Database, status: str | None = None) -> Iterator[Entry]:
    """Stream the list, oldest first, optionally of one status."""
    return (entry_of(row) for row in state.subscriber_rows(conn, status))


def find(conn: Database, address: str) -> Entry | None:
    """The entry of an address, or None if it is not on the list."""
    row = state.find_subscriber(conn, address)
    return entry_of(row) if row else None


def preference_problem(name: str, timezone: str, frequency: str = "daily", weekday: str = "monday") -> str:
    """What is wrong with a set of preferences, in words for the reader; '' when they are fine."""
    if len(name) > 100 or any(ord(ch) < 32 for ch in name):
        return "Please give a name of at most 100 characters, or none."
    if timezone and not valid_zone(timezone):
        return "Please choose a time zone from the list, such as Europe/Paris."
    if frequency not in state.FREQUENCIES:
        return "Please choose daily or weekly."
    if weekday not in state.WEEKDAYS:
        return "Please choose a day of the week for the weekly digest."
    return ""


def _address(address: str) -> str:
    try:
        return check_address(address.strip())
    except ValueError as exc:
        raise SubscriberError(f"{address!r} is not a valid email address: {exc}") from None


def add(
    conn: Database,
    address: str,
    *,
    name: str = "",
    timezone: str = "",
    frequency: str = "daily",
    weekday: str = "monday",
    source: str = "cli",
) -> Entry:
    """Add an address to the list; an address already there is an error (a suppression stays in force)."""
    email = _address(address)
    name = " ".join(name.split())
    problem = preference_problem(name, timezone, frequency, weekday)
    if problem:
        raise SubscriberError(f"{email}: {problem}")
    with conn.transaction():
        added = state.add_subscriber(
            conn, email, name=name, timezone=timezone, frequency=frequency, weekday=weekday, source=source
        )
        entry = find(conn, email)
    assert entry is not None
    if not added:
        raise SubscriberError(f"{email} is already on the list ({entry.status}, from {entry.source})")
    return entry


def change(conn: Database, address: str, **choices: str) -> Entry:
    """Change some of a subscriber's preferences (name, timezone, frequency, weekday), as the reader can on the web."""
    email = _address(address)
    with conn.transaction():
        entry = find(conn, email)
        if entry is None:
            raise SubscriberError(f"{email} is not on the list (add it with 'newsletter subscribers add')")
        values = {key: getattr(entry, key) for key in ("name", "timezone", "frequency", "weekday")}
        values.update(choices)
        values["name"] = " ".join(values["name"].split())
        problem = preference_problem(**values)
        if problem:
            raise SubscriberError(f"{email}: {problem}")
        state.update_preferences(conn, email, **values)
        changed = find(conn, email)
    assert changed is not None
    return changed


def remove(conn: Database, address: str, how: str = "operator") -> bool:
    """Unsubscribe an address (kept on record, suppressed); False if it was suppressed already."""
    email = _address(address)
    with conn.transaction():
        if state.suppression_of(conn, email) is not None:
            return False
        state.suppress(conn, email, "unsubscribed", how)
    return True


def resubscribe(conn: Database, address: str, *, force: bool = False) -> str:
    """Lift an unsubscribe (a bounce or complaint only with force); return the reason lifted, '' if none held."""
    email = _address(address)
    with conn.transaction():
        held = state.suppression_of(conn, email)
        if held is None:
            if find(conn, email) is None:
                raise SubscriberError(f"{email} is not on the list (add it with 'newsletter subscribers add')")
            return ""
        if held["reason"] != "unsubscribed" and not force:
            raise SubscriberError(
                f"{email} is suppressed as {held['reason']} ({held['detail'] or 'no detail'}); "
                "resubscribe it with --force only if you know the address works again"
            )
        state.lift_suppression(conn, email)
    return str(held["reason"])


def lift(conn: Database, address: str) -> str:
    """Remove an address from the suppression list, whatever the reason; return that reason."""
    email = address.strip().lower()
    with conn.transaction():
        held = state.suppression_of(conn, email)
        if held is None:
            raise SubscriberError(f"{email} is not on the suppression list")
        state.lift_suppression(conn, email)
    return str(held["reason"])


@dataclass
class ImportResult:
    """What an import did: addresses added and addresses already on the list (left as they are)."""

    added: int = 0
    unchanged: int = 0


def import_csv(path: Path, conn: Database, tally: Tally, *, source: str = "import") -> ImportResult:
    """Add every valid row of a CSV file that is not on the list yet; bad rows go to ``tally``. Idempotent."""
    result = ImportResult()
    seen = DiskSet()
    try:
        for chunk in _chunks(read_csv(path, tally), 1000):
            with conn.transaction():
                for s in chunk:
                    if not seen.add(s.key):
                        tally.duplicates += 1
                    elif state.add_subscriber(
                        conn, s.email, name=s.name, timezone=s.timezone, frequency=s.frequency,
                        weekday=s.weekday, source=source,
                    ):  # fmt: skip
                        result.added += 1
                    else:
                        result.unchanged += 1
    finally:
        seen.close()
    return result


def file_signature(path: Path) -> str:
    """Size and modification time of a file: a change of either means it must be read again."""
    try:
        info = path.stat()
    except OSError as exc:
        raise SubscriberError(
            f"{path}: cannot read the subscriber list: {exc.strerror} (check paths.subscribers)"
        ) from None
    return f"{info.st_size}:{info.st_mtime_ns}"


def sync_stamp() -> str:
    """A sync's mark on the rows it finds: later syncs sort higher (above the random stamps of old versions)."""
    return f"t{time.time_ns():020d}{secrets.token_hex(4)}"


def sync_csv(csv_path: Path, conn: Database, tally: Tally) -> bool:
    """Sync the CSV file into the list (rows with source 'csv'); False if the file is unchanged since the last sync.

    New addresses are added; a row of the file follows the file until someone edits it; a
    row no longer in the file (or no longer valid) leaves the list. Suppressions are kept.
    """
    changed = _changed_csv(csv_path, conn)
    if changed is None:
        return False
    seen = DiskSet()
    try:
        for _ in _synced_chunks(csv_path, conn, tally, seen, changed):
            pass
    finally:
        seen.close()
    return True


def _changed_csv(csv_path: Path, conn: Database) -> tuple[str, str] | None:
    """The file's key and signature for a sync, or None if it is unchanged since the last one."""
    key, signature = str(csv_path.resolve()), file_signature(csv_path)
    return None if state.csv_signature(conn, key) == signature else (key, signature)


def _synced_chunks(
    csv_path: Path, conn: Database, tally: Tally, seen: DiskSet, changed: tuple[str, str]
) -> Iterator[list[Subscriber]]:
    """Write the file into the list 2,000 rows at a time, yielding each chunk's new rows once written; then finish the sync."""
    stamp = sync_stamp()
    for chunk in _chunks(read_csv(csv_path, tally), 2000):
        fresh = [s for s in chunk if seen.add(s.key)]
        tally.duplicates += len(chunk) - len(fresh)
        with conn.transaction():
            state.upsert_csv_rows(conn, [(s.email, s.name, s.timezone, s.frequency, s.weekday) for s in fresh], stamp)
        yield fresh
    with conn.transaction():
        dropped = state.finish_csv_sync(conn, *changed, stamp)
    if dropped:
        log.info("%s: %d rows no longer in the file left the list", csv_path, dropped)
