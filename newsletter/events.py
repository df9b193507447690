"""Load and validate the event library: one Markdown file with YAML front matter per event."""

from __future__ import annotations

import calendar
import fnmatch
import glob
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from newsletter.errors import EventDataError

log = logging.getLogger(__name__)

REQUIRED = ("title", "date", "summary", "subject", "tags", "fun_fact", "reading", "sources")
OPTIONAL = ("region",)
REGIONS = (
    "africa", "asia", "europe", "middle-east", "north-america", "latin-america", "oceania", "global",
)  # fmt: skip
SUBJECTS = (
    "science", "technology", "exploration", "arts", "literature", "music", "sport",
    "politics", "war", "disaster", "society", "religion", "business",
)  # fmt: skip
MONTHS = tuple(calendar.month_name)[1:]
ERAS = (  # (name, last year of the era); years are astronomical, so BC years are negative
    ("ancient", 499), ("medieval", 1499), ("early modern", 1799),
    ("19th century", 1899), ("20th century", 1999), ("21st century", 10_000),
)  # fmt: skip
ARTICLES_PER_DAY = 2  # a reader who stays two years meets a different story every day
THIN_DAYS_SHOWN = 5
WORDS_MIN, WORDS_MAX = 200, 500
SECTIONS_MIN, SECTIONS_MAX = 3, 5
SUMMARY_MAX = 200


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe YAML loader that leaves dates as text, so that we check them ourselves."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class Book:
    title: str
    author: str


@dataclass(frozen=True)
class Section:
    heading: str
    text: str  # Markdown


@dataclass(frozen=True)
class Event:
    """One historical event, as an editor wrote it."""

    id: str  # the file stem, permanent: feeds and the ledger refer to it
    path: Path
    title: str
    year: int  # astronomical sign: negative for BC (44 BC is -44)
    month: int
    day: int
    summary: str
    subject: str
    tags: tuple[str, ...]
    fun_fact: str
    reading: tuple[Book, ...]
    sources: tuple[str, ...]
    sections: tuple[Section, ...]
    region: str = ""  # one of REGIONS; empty while an article has not been given one

    @property
    def date_label(self) -> str:
        """The calendar day, e.g. 'June 25'."""
        return f"{MONTHS[self.month - 1]} {self.day}"

    @property
    def year_label(self) -> str:
        """The year as a reader writes it: '2012', '44 BC'."""
        return f"{-self.year} BC" if self.year < 0 else str(self.year)

    def years_before(self, year: int) -> int:
        """Return how many years separate the event from the given year (no year zero)."""
        return year - self.year - (1 if self.year < 0 else 0)


@dataclass(frozen=True)
class Problem:
    """One finding of the library check, printed as 'file:line: severity: message'."""

    path: Path
    line: int
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)  # line 0: the library as a whole
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class Library:
    """The events that loaded cleanly, and every problem found on the way."""

    folder: Path
    events: list[Event] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def coverage(self) -> int:
        """Count the calendar days (of 366) that have at least one event."""
        return len({(e.month, e.day) for e in self.events})

    def by_day(self) -> dict[tuple[int, int], list[Event]]:
        """Return every calendar day of a leap year (month, day), with its events sorted by id."""
        days: dict[tuple[int, int], list[Event]] = {
            (month, day): [] for month in range(1, 13) for day in range(1, calendar.monthrange(2000, month)[1] + 1)
        }
        for event in sorted(self.events, key=lambda e: e.id):
            days[(event.month, event.day)].append(event)
        return days

    def thin_days(self) -> list[tuple[int, int]]:
        """Return the calendar days (of 366) with fewer than ARTICLES_PER_DAY events, in calendar order."""
        return [day for day, found in self.by_day().items() if len(found) < ARTICLES_PER_DAY]


def era_of(year: int) -> str:
    """Return the era of an (astronomical) year: 'ancient' before 500, ..., '21st century' from 2000."""
    return next(name for name, last in ERAS if year <= last)


def day_label(day: tuple[int, int]) -> str:
    """Return a calendar day (month, day) as 'January 4'."""
    return f"{MONTHS[day[0] - 1]} {day[1]}"


@dataclass(frozen=True)
class Balance:
    """How the library spreads over subjects, eras and regions (counts of events)."""

    total: int
    subjects: dict[str, int]  # every subject of SUBJECTS, in that order
    eras: dict[str, int]  # every era of ERAS, in order
    regions: dict[str, int]  # every region of REGIONS, then 'unset'

    @property
    def war_share(self) -> float:
        """Return the share of wars and battles (0 to 1)."""
        return self.subjects["war"] / self.total if self.total else 0.0


def balance(library: Library) -> Balance:
    """Count the library's events by subject, era and region."""
    subjects = Counter(e.subject for e in library.events)
    eras = Counter(era_of(e.year) for e in library.events)
    regions = Counter(e.region or "unset" for e in library.events)
    return Balance(
        total=len(library.events),
        subjects={name: subjects[name] for name in SUBJECTS},
        eras={name: eras[name] for name, _ in ERAS},
        regions={name: regions[name] for name in (*REGIONS, "unset")},
    )


def check_library(library: Library) -> list[Problem]:
    """Return the findings about the library as a whole: thin days, and days whose articles are too alike."""
    problems = []
    thin = library.thin_days()
    if thin:
        shown = ", ".join(day_label(day) for day in thin[:THIN_DAYS_SHOWN])
        more = f" and {len(thin) - THIN_DAYS_SHOWN} more" if len(thin) > THIN_DAYS_SHOWN else ""
        problems.append(
            Problem(
                library.folder,
                0,
                "warning",
                f"{len(thin)} days have fewer than two articles: {shown}{more}",
            )
        )
    for found in library.by_day().values():
        problems.extend(_alike(found))
    return problems


def _alike(found: list[Event]) -> Iterator[Problem]:
    """Yield a warning for each event of a day that shares both era and subject with an earlier one."""
    for index, event in enumerate(found):
        for other in found[:index]:
            if (era_of(event.year), event.subject) == (era_of(other.year), other.subject):
                yield Problem(
                    event.path,
                    1,
                    "warning",
                    f"same era ({era_of(event.year)}) and subject ({event.subject}) as {other.path.name}: "
                    "a day's articles should differ in era or subject",
                )
                break


class _Report:
    """Collects the problems of one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, "error", message))

    def warning(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, "warning", message))

    @property
    def failed(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


def event_files(folder: Path) -> list[Path]:
    """List the event files under a folder, in a stable order."""
    if not folder.is_dir():
        raise EventDataError(f"{folder}: event folder not found (check paths.events)")
    return sorted(p for p in folder.rglob("*.md") if p.is_file() and not p.name.startswith((".", "_")))


def day_files(folder: Path, day: date, ids: Iterable[str] = ()) -> list[Path]:
    """The files that can hold the edition of a date: its calendar day's (and February 29's on
    February 28), and those named by ``ids`` (an edition on record); no file is read."""
    if not folder.is_dir():
        raise EventDataError(f"{folder}: event folder not found (check paths.events)")
    patterns = {f"{day.month:02d}-{day.day:02d}-*.md"} | ({"02-29-*.md"} if (day.month, day.day) == (2, 28) else set())
    patterns |= {glob.escape(i) + ".md" for i in ids if not any(fnmatch.fnmatchcase(i + ".md", p) for p in patterns)}
    found = {p for pattern in patterns for p in folder.rglob(pattern)}  # a walk that stats only these (~2 ms, not 14)
    return sorted(p for p in found if p.is_file() and not p.name.startswith((".", "_")))


def load_day_events(folder: Path, day: date, ids: Iterable[str] = ()) -> list[Event]:
    """Return the usable events that can be the edition of a date, parsing only their files (see day_files)."""
    return _usable(load_library(folder, day_files(folder, day, ids)))


def load_library(folder: Path, files: Iterable[Path] | None = None) -> Library:
    """Parse every event file (or only ``files``); a broken file is reported and skipped, never fatal."""
    library = Library(folder)
    seen: dict[tuple[Any, ...], Path] = {}
    for path in event_files(folder) if files is None else files:
        event, problems = parse_event_file(path)
        library.problems.extend(problems)
        if event is None:
            continue
        duplicate = _duplicate_of(event, seen)
        if duplicate is not None:
            library.problems.append(Problem(path, 1, "error", f"duplicate event: same as {duplicate}"))
            continue
        library.events.append(event)
    return library


def load_events(folder: Path) -> list[Event]:
    """Return the usable events of a folder, logging (not raising) what is broken."""
    return _usable(load_library(folder))


def _usable(library: Library) -> list[Event]:
    for problem in library.errors:
        log.warning("skipping %s", problem)
    return library.events


def _duplicate_of(event: Event, seen: dict[tuple[Any, ...], Path]) -> Path | None:
    keys = [("id", event.id), ("event", event.year, event.month, event.day, _normalise(event.title))]
    for key in keys:
        if key in seen:
            return seen[key]
    for key in keys:
        seen[key] = event.path
    return None


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).casefold()
    return re.sub(r"[^a-z0-9]+", " ", text).strip()


def parse_event_file(path: Path) -> tuple[Event | None, list[Problem]]:
    """Parse and check one file; return the event (None if it has errors) and its problems."""
    report = _Report(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        report.error(1, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None, report.problems
    except OSError as exc:
        report.error(1, f"cannot read: {exc.strerror}")
        return None, report.problems
    event = _parse_text(path, text, report)
    return (None if report.failed else event), report.problems


def _split_front_matter(text: str, report: _Report) -> tuple[list[str], int, list[str]] | None:
    """Return (front matter lines, line number of the body's first line, body lines)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        report.error(1, "missing front matter: the file must start with a line '---'")
        return None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return lines[1:index], index + 2, lines[index + 1 :]
    report.error(1, "front matter is not closed by a line '---'")
    return None


def _parse_text(path: Path, text: str, report: _Report) -> Event | None:
    split = _split_front_matter(text, report)
    if split is None:
        return None
    front_lines, body_start, body_lines = split
    try:
        meta = yaml.load("\n".join(front_lines), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 2
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        report.error(line, f"front matter is not valid YAML: {reason}")
        return None
    if not isinstance(meta, dict):
        report.error(2, "front matter must be a set of 'key: value' lines")
        return None
    lines = _KeyLines(front_lines)
    fields = _check_fields(meta, lines, report)
    when = _check_date(meta.get("date"), path, lines.of("date"), report)
    sections = _parse_sections(body_lines, body_start, report)
    if fields is None or when is None or sections is None:
        return None
    event = Event(id=path.stem, path=path, year=when[0], month=when[1], day=when[2], sections=sections, **fields)
    _check_body(event, body_lines, body_start, report)
    _check_dates_in_text(event, lines, body_lines, body_start, report)
    return event


class _KeyLines:
    """Find the line of a front-matter key, for messages."""

    def __init__(self, front_lines: list[str]) -> None:
        self._lines: dict[str, int] = {}
        for number, line in enumerate(front_lines, start=2):
            match = re.match(r"([A-Za-z_][\w-]*)\s*:", line)
            if match:
                self._lines.setdefault(match.group(1), number)

    def of(self, key: str) -> int:
        return self._lines.get(key, 1)


def _check_fields(meta: dict[str, Any], lines: _KeyLines, report: _Report) -> dict[str, Any] | None:
    """Validate the front-matter fields other than the date; return Event keyword arguments."""
    for key in meta:
        if key not in REQUIRED and key not in OPTIONAL:
            report.warning(lines.of(str(key)), f"unknown field '{key}' (known: {', '.join(REQUIRED + OPTIONAL)})")
    missing = [key for key in REQUIRED if _is_empty(meta.get(key))]
    for key in missing:
        report.error(lines.of(key) if key in meta else 1, f"field '{key}' is {'empty' if key in meta else 'missing'}")
    if missing:
        return None
    fields: dict[str, Any] = {}
    for key in ("title", "summary", "fun_fact"):
        fields[key] = _text(meta[key], key, lines, report)
    subject = str(meta["subject"]).strip().lower()
    if subject not in SUBJECTS:
        report.error(lines.of("subject"), f"unknown subject '{subject}' (one of: {', '.join(SUBJECTS)})")
    fields["subject"] = subject
    if "region" in meta:
        region = str(meta["region"]).strip().lower()
        if region not in REGIONS:
            report.error(lines.of("region"), f"unknown region '{region}' (one of: {', '.join(REGIONS)})")
        fields["region"] = region
    fields["tags"] = _string_list(meta["tags"], "tags", lines, report)
    fields["sources"] = _string_list(meta["sources"], "sources", lines, report)
    fields["reading"] = _books(meta["reading"], lines, report)
    for source in fields["sources"]:
        if _looks_like_url(source) and not _valid_url(source):
            report.error(lines.of("sources"), f"malformed source URL: {source}")
    if len(fields["summary"]) > SUMMARY_MAX:
        report.warning(
            lines.of("summary"), f"summary has {len(fields['summary'])} characters; keep it under {SUMMARY_MAX}"
        )
    return fields


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _text(value: Any, key: str, lines: _KeyLines, report: _Report) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        report.error(lines.of(key), f"field '{key}' must be text")
        return ""
    text = " ".join(str(value).split())
    if not text:
        report.error(lines.of(key), f"field '{key}' is empty")
    return text


def _string_list(value: Any, key: str, lines: _KeyLines, report: _Report) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    result = tuple(" ".join(str(item).split()) for item in items if isinstance(item, str | int | float))
    if len(result) != len(items) or not all(result):
        report.error(lines.of(key), f"field '{key}' must be a list of non-empty texts")
    return result


def _books(value: Any, lines: _KeyLines, report: _Report) -> tuple[Book, ...]:
    items = value if isinstance(value, list) else [value]
    books = []
    for item in items:
        if not isinstance(item, dict) or _is_empty(item.get("title")) or _is_empty(item.get("author")):
            report.error(lines.of("reading"), "each 'reading' entry needs a 'title' and an 'author'")
            continue
        books.append(Book(" ".join(str(item["title"]).split()), " ".join(str(item["author"]).split())))
    if len(books) > 3:
        report.warning(lines.of("reading"), f"{len(books)} books; recommend one to three")
    return tuple(books)


_DATE = re.compile(r"(\d{1,4})-(\d{1,2})-(\d{1,2})(\s*BC)?")


def _check_date(value: Any, path: Path, line: int, report: _Report) -> tuple[int, int, int] | None:
    """Parse the 'date' field into (year, month, day); check it against the file name."""
    if value is None:
        return None  # already reported as missing
    text = value.isoformat() if isinstance(value, date) else str(value).strip()
    match = _DATE.fullmatch(text)
    if not match:
        report.error(line, f"bad date '{text}': write YYYY-MM-DD, or YYYY-MM-DD BC")
        return None
    year, month, day = (int(match.group(i)) for i in (1, 2, 3))
    if year == 0:
        report.error(line, f"bad date '{text}': there is no year 0 (1 BC is followed by AD 1)")
        return None
    if not _real_day(year, month, day):
        report.error(line, f"bad date '{text}': no such day")
        return None
    if match.group(4):
        year = -year
    named = re.match(r"(\d{2})-(\d{2})-", path.name)
    if named and (int(named.group(1)), int(named.group(2))) != (month, day):
        report.error(line, f"date {text} does not match the file name {path.name} (expected {month:02d}-{day:02d}-...)")
    return year, month, day


def _real_day(year: int, month: int, day: int) -> bool:
    if not 1 <= month <= 12 or day < 1:
        return False
    if (month, day) == (2, 29):
        return year % 4 == 0 and (year < 1582 or year % 100 != 0 or year % 400 == 0)
    return day <= calendar.monthrange(2001, month)[1]


def _parse_sections(body: list[str], start: int, report: _Report) -> tuple[Section, ...] | None:
    """Split the body at '## ' headings."""
    sections: list[tuple[str, int, list[str]]] = []
    for number, line in enumerate(body, start=start):
        found = re.match(r"##\s+(.*?)\s*#*\s*$", line)
        if found and not line.startswith("###"):
            sections.append((found.group(1), number, []))
        elif sections:
            sections[-1][2].append(line)
        elif line.strip():
            report.error(number, "text before the first '## ' section heading")
            return None
    if not sections:
        report.error(start if body else 1, "the body has no sections (start each with a '## Heading' line)")
        return None
    result = []
    for heading, number, lines in sections:
        text = "\n".join(lines).strip()
        if not heading or not text:
            report.error(number, f"section '{heading}' is empty" if heading else "section heading is empty")
        result.append(Section(heading, text))
    return None if report.failed else tuple(result)


_LINK = re.compile(r"\[([^\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)|<((?:https?|ftp|mailto):[^>]*)>")


def _check_body(event: Event, body: list[str], start: int, report: _Report) -> None:
    for number, line in enumerate(body, start=start):
        for match in _LINK.finditer(line):
            url = match.group(2) if match.group(2) is not None else match.group(3)
            if not _valid_url(url):
                report.error(number, f"malformed link '{url}': use an absolute https:// URL")
        if re.search(r"<[a-zA-Z/!][^>]*>", _LINK.sub("", line)):
            report.warning(number, "raw HTML in the body is shown as text; use Markdown")
    words = sum(len(section.text.split()) for section in event.sections)
    if not WORDS_MIN <= words <= WORDS_MAX:
        report.warning(start, f"body has {words} words; write {WORDS_MIN} to {WORDS_MAX}")
    if not SECTIONS_MIN <= len(event.sections) <= SECTIONS_MAX:
        report.warning(start, f"body has {len(event.sections)} sections; write {SECTIONS_MIN} to {SECTIONS_MAX}")


def _looks_like_url(text: str) -> bool:
    return bool(re.match(r"[a-z][a-z0-9+.-]*:(?!\s)|www\.|\S*//|\S+\.[a-z]{2,}/", text, re.IGNORECASE))


def _valid_url(url: str) -> bool:
    parts = urlsplit(url)
    return (
        parts.scheme in {"http", "https"}
        and "." in parts.netloc
        and not parts.netloc.startswith(".")
        and not re.search(r"\s", url)
    )


_MONTH_RE = "|".join(MONTHS)
_MENTION = re.compile(
    rf"\b(?:(?P<m1>{_MONTH_RE})\s+(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?(?!\d)"
    rf"(?:,?\s+(?P<y1>\d{{3,4}}(?!\d)|\d{{1,4}}\s*(?=B\.?C))(?P<bc1>\s*B\.?C\.?(?:E\.?)?)?)?"
    rf"|(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<m2>{_MONTH_RE})"
    rf"(?:,?\s+(?P<y2>\d{{3,4}}(?!\d)|\d{{1,4}}\s*(?=B\.?C))(?P<bc2>\s*B\.?C\.?(?:E\.?)?)?)?)"
)


@dataclass(frozen=True)
class Mention:
    """A calendar date written in an article's text."""

    month: int
    day: int
    year: int | None  # astronomical sign, None when the text gives no year
    text: str


def find_dates(text: str) -> Iterator[Mention]:
    """Yield every 'June 25', 'June 25, 2012', '25 June 2012' or '15 March 44 BC' in a text."""
    for match in _MENTION.finditer(text):
        month_name = match.group("m1") or match.group("m2")
        day = int(match.group("d1") or match.group("d2"))
        raw_year = match.group("y1") or match.group("y2")
        bc = match.group("bc1") or match.group("bc2")
        year = None if raw_year is None else int(raw_year.strip()) * (-1 if bc else 1)
        if 1 <= day <= 31:
            yield Mention(MONTHS.index(month_name) + 1, day, year, match.group(0).strip())


def _first_contradiction(event: Event, text: str) -> Mention | None:
    """Return the first date in the event's year (or yearless) if it is not the event's date."""
    for mention in find_dates(text):
        if mention.year is None or mention.year == event.year:
            return None if (mention.month, mention.day) == (event.month, event.day) else mention
    return None


def _line_of(needle: str, body: list[str], start: int, default: int) -> int:
    words = needle.split()
    for number, line in enumerate(body, start=start):
        if words and words[0] in line and " ".join(line.split()).find(" ".join(words)) >= 0:
            return number
    return default


def _check_dates_in_text(event: Event, lines: _KeyLines, body: list[str], start: int, report: _Report) -> None:
    """Flag text that dates the event differently from its 'date' field."""
    own = f"{event.year_label}-{event.month:02d}-{event.day:02d}"
    first_heading = next(n for n, line in enumerate(body, start=start) if line.startswith("## "))
    first_section = event.sections[0]
    for where, line, text in (
        ("title", lines.of("title"), event.title),
        ("summary", lines.of("summary"), event.summary),
        ("first section", first_heading, first_section.heading + "\n" + first_section.text),
    ):
        wrong = _first_contradiction(event, text)
        if wrong is not None:
            line = _line_of(wrong.text, body, start, default=line) if where == "first section" else line
            report.error(line, f"the {where} dates the event '{wrong.text}' but its date is {own}")
    everything = "\n".join([event.summary, event.fun_fact, *(s.heading + "\n" + s.text for s in event.sections)])
    if not any((m.month, m.day) == (event.month, event.day) for m in find_dates(everything)):
        report.warning(
            first_heading, f"the text never states the event's day ({event.date_label}); say it in the first section"
        )
