"""Render an edition: the subject line (more to come: HTML, text and the MIME message)."""

from __future__ import annotations

from html import escape

import jinja2
from markdown_it import MarkdownIt

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.events import Event
from newsletter.selection import Edition


def subject_for(edition: Edition, settings: Settings) -> str:
    """Render the subject line from newsletter.subject; one line, no control characters."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        text = env.from_string(settings.newsletter.subject).render(
            event=edition.event, day=edition.day, date_label=edition.date_label, year=edition.event.year_label
        )
    except jinja2.TemplateError as exc:
        raise ConfigError(f"'newsletter.subject' cannot be rendered: {exc}") from None
    return " ".join(text.split())


_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def markdown_html(text: str) -> str:
    """Render an event's Markdown to HTML; raw HTML in the source is escaped, never passed."""
    return _markdown.render(text)


def article_html(event: Event) -> str:
    """Return the article as clean semantic HTML (sections, fun fact, reading), for feeds and the archive."""
    parts = [f"<h2>{escape(s.heading)}</h2>\n{markdown_html(s.text)}" for s in event.sections]
    parts.append(f"<h2>Fun fact</h2>\n<p>{escape(event.fun_fact)}</p>")
    books = "".join(f"<li><cite>{escape(b.title)}</cite> by {escape(b.author)}</li>" for b in event.reading)
    parts.append(f"<h2>Recommended reading</h2>\n<ul>{books}</ul>")
    return "\n".join(parts)
