"""Publish the public folder: RSS 2.0 and Atom 1.0 feeds (feedgen) and the web archive.

Every file is written atomically and only when its bytes change, and every timestamp is
derived from the editions, never from the clock, so a rebuild with nothing new is a no-op.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import jinja2
from feedgen.feed import FeedGenerator

from newsletter import __version__, archive, state
from newsletter.config import Settings
from newsletter.editions import edition_for
from newsletter.errors import NewsletterError, NoEventError
from newsletter.events import Event, load_events
from newsletter.render import archive_url, article_html, day_url, subject_for
from newsletter.selection import Edition, choose_event, others_on
from newsletter.storage import Database

log = logging.getLogger(__name__)
EARLIEST_ZONE = ZoneInfo("Etc/GMT-14")  # UTC+14 (Kiritimati): the first place on Earth where a date begins
DIGEST_FILE = "site.sha256"  # in paths.state: what the day pages were last built from


@dataclass
class PublishResult:
    """What a publish run did."""

    editions: list[Edition] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    missing: list[date] = field(default_factory=list)  # days in the window without an event

    def summary(self) -> str:
        return f"published {len(self.editions)} editions: {len(self.written)} files written, {len(self.unchanged)} unchanged"


def published_at(settings: Settings, day: date) -> datetime:
    """The moment an edition counts as published: its send_time on its date, in newsletter.timezone."""
    hour, minute = map(int, settings.newsletter.send_time.split(":"))
    local = datetime.combine(day, time(hour, minute), tzinfo=settings.zone)
    return local.astimezone(settings.zone)  # normalizes a time inside a DST gap


def entry_id(settings: Settings, day: date) -> str:
    """A permanent id for an edition (RFC 4151 tag URI): the same on every rebuild and machine."""
    host = urlsplit(settings.newsletter.base_url).hostname or "localhost"
    return f"tag:{host},{day.isoformat()}:edition"


def window(
    settings: Settings, conn: Database, day: date, now: datetime | None, events: list[Event] | None = None
) -> tuple[list[Edition], list[date]]:
    """The editions of the last feed_days days up to ``day``, recorded so they never change; none from the future."""
    editions, missing = [], []
    for offset in range(settings.newsletter.feed_days):
        current = day - timedelta(days=offset)
        if now is not None and published_at(settings, current) > now:
            continue
        try:
            edition = edition_for(current, settings, conn, events=events)
        except NoEventError as exc:
            log.warning("no edition for %s: %s", current, exc)
            missing.append(current)
            continue
        editions.append(edition)
    return editions, missing


def build_feed(settings: Settings, editions: list[Edition]) -> FeedGenerator:
    """Build both feeds from editions (newest first)."""
    base = settings.newsletter.base_url
    feed = FeedGenerator()
    feed.id(base)
    feed.title(settings.newsletter.title)
    feed.subtitle("One story from history for every day of the year.")
    _links(feed, base, "atom.xml")
    feed.language(settings.newsletter.language)
    feed.author({"name": settings.sender.name, "email": settings.sender.address})
    feed.generator("onthisday-newsletter", __version__)
    newest = published_at(settings, editions[0].day) if editions else datetime(2000, 1, 1, tzinfo=settings.zone)
    feed.updated(newest)
    feed.lastBuildDate(newest)
    for edition in reversed(editions):  # feedgen prepends: add the oldest first
        entry = feed.add_entry()
        when = published_at(settings, edition.day)
        entry.id(entry_id(settings, edition.day))
        entry.guid(entry_id(settings, edition.day), permalink=False)
        entry.title(subject_for(edition, settings))
        entry.link(href=archive_url(settings, edition.day), rel="alternate")
        entry.published(when)
        entry.updated(when)
        entry.author({"name": settings.sender.name, "email": settings.sender.address})
        entry.description(edition.event.summary)
        entry.summary(edition.event.summary)
        entry.content(article_html(edition.event), type="html")  # after description(): feedgen quirk
        for tag in edition.event.tags:
            entry.category(term=tag)
    return feed


def _links(feed: FeedGenerator, base: str, name: str) -> None:
    """Point the feed's self link at one of the two feed files (feedgen: self before alternate)."""
    feed.link(href=base + name, rel="self", replace=True)
    feed.link(href=base, rel="alternate")


def feed_files(settings: Settings, editions: list[Edition]) -> dict[str, bytes]:
    """Return the bytes of atom.xml and rss.xml, each with its own rel=self link."""
    feed = build_feed(settings, editions)
    atom = feed.atom_str(pretty=True)
    _links(feed, settings.newsletter.base_url, "rss.xml")
    return {"atom.xml": atom, "rss.xml": feed.rss_str(pretty=True)}


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write a file atomically (temporary file, fsync, rename) unless it already holds these bytes."""
    return bool(write_files({path: data}))


def write_files(files: dict[Path, bytes]) -> list[Path]:
    """Write each file whose bytes change, atomically; return those written.

    Every new version goes to a temporary file beside its target first; one sync makes them
    all durable (one journal commit instead of one fsync per page: a rebuild writes ~400),
    and only then is each renamed over its target. A crash leaves old or new pages, never half of one.
    """
    changed = {p: d for p, d in files.items() if not (p.is_file() and p.read_bytes() == d)}
    temporaries: dict[Path, str] = {}
    try:
        for path, data in changed.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporaries[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.chmod(temporaries[path], 0o644)
        if len(changed) == 1:
            _fsync(temporaries[next(iter(changed))])
        elif changed:
            os.sync()
        for path in changed:
            os.replace(temporaries.pop(path), path)
    finally:
        for temporary in temporaries.values():
            Path(temporary).unlink(missing_ok=True)
    return list(changed)


def _fsync(name: str) -> None:
    with open(name, "rb") as handle:
        os.fsync(handle.fileno())


def publish(settings: Settings, day: date, conn: Database, *, now: datetime | None = None) -> PublishResult:
    """Write the feeds, the home page, the monthly indexes, the edition pages, the day pages and the calendar.

    The feeds and indexes hold an edition from its send_time in newsletter.timezone on; its
    own page is written as soon as send_time has come anywhere on Earth (see page_horizon),
    so the "View in your browser" link works for the first reader of the edition. Day pages
    and the calendar are rebuilt only when the library, the templates or the settings change.
    """
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if now is not None and day > now.astimezone(settings.zone).date():
        raise NewsletterError(
            f"{day.isoformat()} is in the future in {settings.newsletter.timezone}; feeds never hold future editions"
        )
    events = load_events(settings.paths.events)
    editions, missing = window(settings, conn, day, now, events)
    result = PublishResult(editions=editions, missing=missing)
    early = early_editions(settings, conn, day, now, events)
    env = archive.environment(settings.paths.templates)
    files = site_files(settings, env, conn, day, now, editions, events)
    for edition in [*editions, *early]:
        files[_edition_path(settings, edition.day)] = _edition_bytes(env, settings, edition)
    digest = site_digest(settings, events, day.year)
    if _stored_digest(settings) != digest or not (settings.paths.public / "days" / "index.html").is_file():
        files.update(library_files(settings, env, conn, day, now, events))
    result.written = write_files(files)
    written = set(result.written)
    result.unchanged = [p for p in files if p not in written]
    write_if_changed(settings.paths.state / DIGEST_FILE, digest.encode("ascii"))
    return result


def publish_edition_page(settings: Settings, day: date, conn: Database) -> Path:
    """Record and write the page of one edition (before it is sent), whatever its date; return its path.

    Only the day's event files are read (as ``edition_for`` reads them), not the library: every
    ``send`` does this before its first message.
    """
    edition = edition_for(day, settings, conn)
    path = _edition_path(settings, day)
    write_if_changed(path, _edition_bytes(archive.environment(settings.paths.templates), settings, edition))
    return path


def page_horizon(settings: Settings, now: datetime) -> date:
    """The latest date whose send_time has come somewhere on Earth (the first zone to reach it is UTC+14)."""
    local = now.astimezone(EARLIEST_ZONE)
    hour, minute = map(int, settings.newsletter.send_time.split(":"))
    return local.date() if (local.hour, local.minute) >= (hour, minute) else local.date() - timedelta(days=1)


def early_editions(
    settings: Settings, conn: Database, day: date, now: datetime | None, events: list[Event]
) -> list[Edition]:
    """The editions after ``day`` that some reader's morning has already reached: their pages go out now."""
    if now is None:
        return []
    found = []
    current = day + timedelta(days=1)
    while current <= page_horizon(settings, now):
        try:
            found.append(edition_for(current, settings, conn, events=events))
        except NoEventError as exc:
            log.warning("no edition for %s: %s", current, exc)
        current += timedelta(days=1)
    return found


def sent_editions(
    settings: Settings, conn: Database, day: date, now: datetime | None, events: list[Event]
) -> list[Edition]:
    """Every edition on record up to ``day`` and past its time, newest first (one whose event left the library is left out)."""
    by_id = {e.id: e for e in events}
    history = state.recorded_editions(conn)
    found = [
        Edition(d, by_id[i], others_on(d, by_id[i], events))
        for d, i in history.items()
        if d <= day and i in by_id and (now is None or published_at(settings, d) <= now)
    ]
    return sorted(found, key=lambda e: e.day, reverse=True)


def site_files(
    settings: Settings,
    env: jinja2.Environment,
    conn: Database,
    day: date,
    now: datetime | None,
    editions: list[Edition],
    events: list[Event],
) -> dict[Path, bytes]:
    """The files that change with each new edition: feeds, home page, monthly indexes, sitemap, robots, favicon."""
    public = settings.paths.public
    files: dict[Path, bytes] = {public / name: data for name, data in feed_files(settings, editions).items()}
    every = sent_editions(settings, conn, day, now, events)
    months = sorted(
        {archive.Month(e.day.year, e.day.month) for e in every}, key=lambda m: (m.year, m.month), reverse=True
    )
    files[public / "index.html"] = archive.index_page(env, settings, editions, months).encode("utf-8")
    for month in months:
        chosen = [e for e in every if (e.day.year, e.day.month) == (month.year, month.month)]
        files[public / month.href / "index.html"] = archive.month_page(env, settings, month, chosen, months).encode()
    base = settings.newsletter.base_url
    urls = [base, base + "days/"] + [day_url(settings, m, d) for m, d in archive.CALENDAR_DAYS]
    urls += [base + m.href for m in months] + [archive_url(settings, e.day) for e in every]
    files[public / "sitemap.xml"] = archive.sitemap(urls)
    files[public / "robots.txt"] = archive.robots(settings).encode("utf-8")
    files[public / archive.FAVICON] = archive.favicon(settings.paths.templates)
    for name in (archive.FAVICON_ICO, archive.OG_IMAGE):
        files[public / name] = archive.web_image(settings.paths.templates, name)
    return files


def library_files(
    settings: Settings,
    env: jinja2.Environment,
    conn: Database,
    day: date,
    now: datetime | None,
    events: list[Event],
) -> dict[Path, bytes]:
    """The files that change only with the library: 366 day pages, the calendar, and every edition page."""
    public = settings.paths.public
    history = state.recorded_editions(conn)
    files: dict[Path, bytes] = {}
    titles: dict[tuple[int, int], str] = {}
    for month, number in archive.CALENDAR_DAYS:
        ordered = day_articles(month, number, day.year, events, history)
        titles[(month, number)] = "; ".join(e.title for e in ordered)
        files[public / "days" / f"{month:02d}-{number:02d}" / "index.html"] = archive.day_page(
            env, settings, month, number, ordered
        ).encode("utf-8")
    files[public / "days" / "index.html"] = archive.calendar_page(env, settings, titles).encode("utf-8")
    for edition in sent_editions(settings, conn, day, now, events):
        files[_edition_path(settings, edition.day)] = _edition_bytes(env, settings, edition)
    return files


def day_articles(month: int, number: int, year: int, events: list[Event], history: dict[date, str]) -> list[Event]:
    """Every article of a calendar day, the one chosen for that day this year first (Feb 29: the next leap year)."""
    own = sorted((e for e in events if (e.month, e.day) == (month, number)), key=lambda e: e.id)
    if len(own) < 2:
        return own
    while (month, number) == (2, 29) and not calendar.isleap(year):
        year += 1
    first = choose_event(date(year, month, number), own, history)
    return [first, *(e for e in own if e is not first)]


def site_digest(settings: Settings, events: list[Event], year: int) -> str:
    """A fingerprint of everything the day pages depend on: the library, the templates, the settings, the year."""
    digest = hashlib.sha256(f"{__version__}\0{year}\0{settings.newsletter!r}\0{settings.sender!r}".encode())
    for event in sorted(events, key=lambda e: e.id):
        digest.update(repr(event).encode())
    for path in sorted(settings.paths.templates.joinpath("web").glob("*")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _stored_digest(settings: Settings) -> str:
    path = settings.paths.state / DIGEST_FILE
    return path.read_text(encoding="ascii") if path.is_file() else ""


def _edition_path(settings: Settings, day: date) -> Path:
    return settings.paths.public / f"{day:%Y/%m/%d}" / "index.html"


def _edition_bytes(env: jinja2.Environment, settings: Settings, edition: Edition) -> bytes:
    return archive.edition_page(env, settings, edition, subject_for(edition, settings)).encode("utf-8")
