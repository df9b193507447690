"""The web archive as static HTML: edition pages, a page for every calendar day, the calendar, monthly indexes.

Every page carries the same head (description, canonical link, Open Graph and Twitter card
tags, favicon) and links only to pages that exist: day pages for all 366 days, and the
editions that have been published.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from xml.etree import ElementTree

import jinja2
from markupsafe import Markup

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.events import Event
from newsletter.render import archive_url, day_url, markdown_html, source_links, text_direction, years_ago
from newsletter.selection import Edition

LEAP_YEAR = 2024  # any leap year: its calendar has all 366 days in order
CALENDAR_DAYS: tuple[tuple[int, int], ...] = tuple(
    (d.month, d.day) for d in (date.fromordinal(date(LEAP_YEAR, 1, 1).toordinal() + n) for n in range(366))
)
FAVICON = "favicon.svg"
FAVICON_ICO = "favicon.ico"  # for browsers and tools that ask for /favicon.ico (tools/make_images.py draws it)
OG_IMAGE = "og-image.png"  # the Open Graph image of the day pages, 1200x630 (tools/make_images.py)


@dataclass(frozen=True)
class Month:
    """One month of the archive: its label and where its page is."""

    year: int
    month: int

    @property
    def label(self) -> str:
        return f"{calendar.month_name[self.month]} {self.year}"

    @property
    def href(self) -> str:
        return f"{self.year:04d}/{self.month:02d}/"


def environment(templates: Path) -> jinja2.Environment:
    """Jinja2 for the web pages: autoescape on, undefined variables are errors."""
    if not (templates / "web" / "edition.html").is_file():
        raise ConfigError(f"{templates}: no web/edition.html template here (check paths.templates)")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def neighbours(month: int, day: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return the calendar days before and after one, wrapping at the year's end (Feb 29 included)."""
    index = CALENDAR_DAYS.index((month, day))
    return CALENDAR_DAYS[index - 1], CALENDAR_DAYS[(index + 1) % len(CALENDAR_DAYS)]


def day_label(month: int, day: int) -> str:
    return f"{calendar.month_name[month]} {day}"


def article(event: Event) -> dict[str, object]:
    """What a page needs to show one article: sections as HTML, sources as links."""
    return {
        "event": event,
        "anchor": event.id,
        "sections": [{"heading": s.heading, "html": Markup(markdown_html(s.text))} for s in event.sections],
        "sources": source_links(event),
    }


def edition_page(env: jinja2.Environment, settings: Settings, edition: Edition, subject: str) -> str:
    """Render the archive page of one edition: the same article as the email, and the day's other articles."""
    event, day = edition.event, edition.day
    url = archive_url(settings, day)
    return env.get_template("web/edition.html").render(
        site=_site(settings),
        page=_page(subject, event.summary, url, "article"),
        edition=edition,
        article=article(event),
        years_ago=years_ago(event, day),
        day_href=day_url(settings, day.month, day.day),
        others=[{"event": e, "href": day_url(settings, day.month, day.day) + f"#{e.id}"} for e in edition.others],
        month=Month(day.year, day.month),
    )


def day_page(env: jinja2.Environment, settings: Settings, month: int, day: int, events: Sequence[Event]) -> str:
    """Render the page of one calendar day: every article of that date, and links to the days around it."""
    before, after = neighbours(month, day)
    label = day_label(month, day)
    titles = "; ".join(f"{e.year_label}: {e.title}" for e in events)
    description = f"What happened on {label} in history. {titles}" if events else f"What happened on {label}."
    return env.get_template("web/day.html").render(
        site=_site(settings),
        page=_page(
            f"{label} in history",
            description[:300],
            day_url(settings, month, day),
            "website",
            image=settings.newsletter.base_url + OG_IMAGE,
        ),
        label=label,
        month_name=calendar.month_name[month],
        day=day,
        articles=[article(e) for e in events],
        previous={"label": day_label(*before), "href": day_url(settings, *before)},
        next={"label": day_label(*after), "href": day_url(settings, *after)},
    )


def calendar_page(env: jinja2.Environment, settings: Settings, titles: Mapping[tuple[int, int], str]) -> str:
    """Render the calendar of the year: every day, linked to its page, month by month."""
    months = [
        {
            "name": calendar.month_name[m],
            "days": [
                {"day": d, "href": day_url(settings, m, d), "title": titles.get((m, d), "")}
                for mm, d in CALENDAR_DAYS
                if mm == m
            ],
        }
        for m in range(1, 13)
    ]
    url = settings.newsletter.base_url + "days/"
    description = "Every day of the year, each with the stories from history that happened on it."
    return env.get_template("web/calendar.html").render(
        site=_site(settings), page=_page("The calendar of history", description, url, "website"), months=months
    )


def index_page(
    env: jinja2.Environment, settings: Settings, editions: Sequence[Edition], months: Sequence[Month]
) -> str:
    """Render the home page: the latest month's editions, newest first, and every month of the archive."""
    description = "One story from history for every day of the year, by email or feed."
    return env.get_template("web/index.html").render(
        site=_site(settings),
        page=_page(settings.newsletter.title, description, settings.newsletter.base_url, "website"),
        heading="Recent editions",
        items=_items(settings, editions),
        months=months,
        current=None,
    )


def month_page(
    env: jinja2.Environment, settings: Settings, month: Month, editions: Sequence[Edition], months: Sequence[Month]
) -> str:
    """Render one month of the archive: every edition of that month, newest first."""
    url = settings.newsletter.base_url + month.href
    return env.get_template("web/index.html").render(
        site=_site(settings),
        page=_page(f"Editions of {month.label}", f"Every edition sent in {month.label}.", url, "website"),
        heading=f"Editions of {month.label}",
        items=_items(settings, editions),
        months=months,
        current=month,
    )


def _items(settings: Settings, editions: Sequence[Edition]) -> list[dict[str, object]]:
    return [{"edition": e, "url": archive_url(settings, e.day)} for e in editions]


def sitemap(urls: Sequence[str]) -> bytes:
    """Return a sitemaps.org XML file listing the given absolute URLs."""
    namespace = "http://www.sitemaps.org/schemas/sitemap/0.9"
    root = ElementTree.Element("urlset", xmlns=namespace)
    for url in urls:
        ElementTree.SubElement(ElementTree.SubElement(root, "url"), "loc").text = url
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def robots(settings: Settings) -> str:
    """Return robots.txt: everything public may be crawled (the sign-up form too), the pages behind personal links may not."""
    path = _path_of(settings.newsletter.base_url)
    lines = ["User-agent: *", "Allow: " + path]
    lines += [f"Disallow: {path}{name}" for name in ("unsubscribe", "confirm", "preferences")]
    lines.append(f"Sitemap: {settings.newsletter.base_url}sitemap.xml")
    return "\n".join(lines) + "\n"


def favicon(templates: Path) -> bytes:
    """Return the site icon (an SVG date badge) shipped with the templates."""
    return (templates / "web" / FAVICON).read_bytes()


def web_image(templates: Path, name: str) -> bytes:
    """Return a raster image of the site (FAVICON_ICO, OG_IMAGE): the templates' own, else the bundled one."""
    path = templates / "web" / name
    if not path.is_file():  # a templates folder of an older version: the bundled image stands in
        from newsletter.config import bundled

        path = bundled("templates") / "web" / name
    return path.read_bytes()


def _path_of(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path or "/"


def _page(title: str, description: str, url: str, kind: str, image: str = "") -> dict[str, str]:
    """The head of one page: title, description and canonical URL, also used for Open Graph and Twitter cards."""
    return {"title": title, "description": " ".join(description.split()), "url": url, "type": kind, "image": image}


def _site(settings: Settings) -> dict[str, str]:
    base = settings.newsletter.base_url
    language = settings.newsletter.language
    return {
        "title": settings.newsletter.title,
        "base_url": base,
        "language": language,
        "dir": text_direction(language),
        "rss": base + "rss.xml",
        "atom": base + "atom.xml",
        "favicon": base + FAVICON,
        "favicon_ico": base + FAVICON_ICO,
        "calendar": base + "days/",
    }
