"""Publish the public folder: RSS 2.0 and Atom 1.0 feeds (feedgen) and the web archive.

Every file is written atomically and only when its bytes change, and every timestamp is
derived from the editions, never from the clock, so a rebuild with nothing new is a no-op.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from feedgen.feed import FeedGenerator

from newsletter import __version__, archive
from newsletter.config import Settings
from newsletter.editions import edition_for
from newsletter.errors import NewsletterError, NoEventError
from newsletter.render import archive_url, article_html, subject_for
from newsletter.selection import Edition

log = logging.getLogger(__name__)


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
    settings: Settings, conn: sqlite3.Connection, day: date, now: datetime | None
) -> tuple[list[Edition], list[date]]:
    """The editions of the last feed_days days up to ``day``, recorded so they never change; none from the future."""
    editions, missing = [], []
    for offset in range(settings.newsletter.feed_days):
        current = day - timedelta(days=offset)
        if now is not None and published_at(settings, current) > now:
            continue
        try:
            edition = edition_for(current, settings, conn)
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
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def publish(settings: Settings, day: date, conn: sqlite3.Connection, *, now: datetime | None = None) -> PublishResult:
    """Write rss.xml, atom.xml, index.html and one page per edition of the window into paths.public."""
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if now is not None and day > now.astimezone(settings.zone).date():
        raise NewsletterError(
            f"{day.isoformat()} is in the future in {settings.newsletter.timezone}; feeds never hold future editions"
        )
    editions, missing = window(settings, conn, day, now)
    result = PublishResult(editions=editions, missing=missing)
    env = archive.environment(settings.paths.templates)
    public = settings.paths.public
    files: dict[Path, bytes] = {public / name: data for name, data in feed_files(settings, editions).items()}
    files[public / "index.html"] = archive.index_page(env, settings, editions).encode("utf-8")
    for edition in editions:
        page = archive.edition_page(env, settings, edition, subject_for(edition, settings))
        files[public / f"{edition.day:%Y/%m/%d}" / "index.html"] = page.encode("utf-8")
    for path, data in files.items():
        (result.written if write_if_changed(path, data) else result.unchanged).append(path)
    return result
