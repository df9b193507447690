"""The web archive: an index of recent editions and one page per edition, as static HTML."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jinja2

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.render import archive_url, markdown_html, years_ago
from newsletter.selection import Edition


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


def edition_page(env: jinja2.Environment, settings: Settings, edition: Edition, subject: str) -> str:
    """Render the archive page of one edition: the same article as the email."""
    event = edition.event
    sections = [
        {"heading": s.heading, "html": jinja2.utils.markupsafe.Markup(markdown_html(s.text))} for s in event.sections
    ]
    return env.get_template("web/edition.html").render(
        site=_site(settings),
        edition=edition,
        event=event,
        subject=subject,
        short_date=edition.day.strftime("%b ") + str(edition.day.day),
        years_ago=years_ago(event, edition.day),
        sections=sections,
        url=archive_url(settings, edition.day),
    )


def index_page(env: jinja2.Environment, settings: Settings, editions: Sequence[Edition]) -> str:
    """Render the index: the recent editions, newest first, with links to both feeds."""
    items = [{"edition": e, "url": archive_url(settings, e.day), "href": f"{e.day:%Y/%m/%d}/"} for e in editions]
    return env.get_template("web/index.html").render(site=_site(settings), items=items)


def _site(settings: Settings) -> dict[str, str]:
    base = settings.newsletter.base_url
    return {
        "title": settings.newsletter.title,
        "base_url": base,
        "language": settings.newsletter.language,
        "rss": base + "rss.xml",
        "atom": base + "atom.xml",
    }
