"""Render an edition: subject, inlined-CSS HTML, plain text, and the MIME message per subscriber.

The expensive work (Jinja2, Markdown, premailer, MIME assembly) runs once per edition in
``render_edition``. The result holds the finished message as byte segments split at a few
placeholders; ``RenderedEdition.message_for`` only joins those segments with a subscriber's
values (address, greeting name, unsubscribe link, Message-ID), so personalizing costs a few
microseconds per subscriber.
"""

from __future__ import annotations

import hmac
import logging
import re
import textwrap
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import jinja2
from markdown_it import MarkdownIt

from newsletter import inlining, tokens
from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.events import Event
from newsletter.mail.address import header_address, wire_address
from newsletter.selection import Edition
from newsletter.subscribers import Subscriber

log = logging.getLogger(__name__)

HTML_LIMIT = 100 * 1024  # Gmail clips a message body above about 102 KB, hiding the footer
TEXT_WIDTH = 78
WIKIPEDIA = "https://en.wikipedia.org/wiki/"
RTL_LANGUAGES = ("ar", "fa", "he", "ur", "yi", "ps", "sd", "ug", "dv", "ckb")
SAMPLE = Subscriber("reader@example.com", "Sample Reader")

# Placeholders: ASCII words that survive every step (Jinja escaping, premailer, 8bit MIME).
_TO, _MSGID, _UNSUB, _NAME_HTML, _NAME_TEXT, _UNSUB_HTML, _PREFS, _PREFS_HTML = (
    f"XXNEWSLETTER{name}XX".encode()
    for name in ("TO", "MSGID", "UNSUB", "NAMEHTML", "NAMETEXT", "UNSUBHTML", "PREFS", "PREFSHTML")
)
_PLACEHOLDER = re.compile(rb"XXNEWSLETTER(TO|MSGID|UNSUB|NAMEHTML|NAMETEXT|UNSUBHTML|PREFSHTML|PREFS)XX")

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def markdown_html(text: str) -> str:
    """Render an event's Markdown to HTML; raw HTML in the source is escaped, never passed."""
    return _markdown.render(text)


def markdown_text(text: str, links: list[str]) -> str:
    """Render Markdown as plain paragraphs wrapped at 78 columns; links become [n] and join ``links``."""
    paragraphs: list[str] = []
    for token in _markdown.parse(text):
        if token.type != "inline":
            continue
        words: list[str] = []
        for child in token.children or []:
            if child.type in ("text", "code_inline"):
                words.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                words.append(" ")
            elif child.type == "link_close":
                words.append(f" [{len(links)}]")
            elif child.type == "link_open":
                links.append(str(child.attrs.get("href", "")))
        paragraphs.append(textwrap.fill(" ".join("".join(words).split()), TEXT_WIDTH))
    return "\n\n".join(paragraphs)


def article_html(event: Event) -> str:
    """Return the article as clean semantic HTML (sections, fun fact, reading), for feeds and the archive."""
    parts = [f"<h2>{escape(s.heading)}</h2>\n{markdown_html(s.text)}" for s in event.sections]
    parts.append(f"<h2>Fun fact</h2>\n<p>{escape(event.fun_fact)}</p>")
    books = "".join(f"<li><cite>{escape(b.title)}</cite> by {escape(b.author)}</li>" for b in event.reading)
    parts.append(f"<h2>Recommended reading</h2>\n<ul>{books}</ul>")
    return "\n".join(parts)


def subject_for(edition: Edition, settings: Settings) -> str:
    """Render the subject line from newsletter.subject; one line, no control characters."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        text = env.from_string(settings.newsletter.subject).render(
            event=edition.event, day=edition.day, date_label=edition.date_label, year=edition.event.year_label
        )
    except jinja2.TemplateError as exc:
        raise ConfigError(f"'newsletter.subject' cannot be rendered: {exc}") from None
    return clean_line(text)


def clean_line(text: str) -> str:
    """Collapse whitespace and drop control characters (CR, LF, NUL...): safe for one header line."""
    if not text.isprintable():  # printable means no category C character: the common case skips the scan
        text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(text.split())


def list_id(settings: Settings) -> str:
    """Return the List-Id identifier (RFC 2919), also bound into every link token."""
    return f"onthisday.{settings.sender_domain}"


def archive_url(settings: Settings, day: date) -> str:
    """Return the public URL of an edition's archive page."""
    return urljoin(settings.newsletter.base_url, f"{day:%Y/%m/%d}/")


def day_url(settings: Settings, month: int, day: int) -> str:
    """Return the public URL of a calendar day's page (every article of that date)."""
    return urljoin(settings.newsletter.base_url, f"days/{month:02d}-{day:02d}/")


@dataclass(frozen=True)
class SourceLink:
    """An event's source as a reader sees it: its text, and where to read it when we know."""

    label: str
    url: str = ""


def source_link(source: str) -> SourceLink:
    """Turn a source line into a link: "Wikipedia: X" links to that article, a URL to itself."""
    if source.startswith(("https://", "http://")):
        return SourceLink(source, source)
    site, _, title = source.partition(":")
    if site.strip().lower() == "wikipedia" and title.strip():
        return SourceLink(source, WIKIPEDIA + quote(title.strip().replace(" ", "_"), safe="()_,'-.:"))
    return SourceLink(source)


def source_links(event: Event) -> list[SourceLink]:
    return [source_link(s) for s in event.sources]


def text_direction(language: str) -> str:
    """Return "rtl" for the languages written right to left, else "ltr"."""
    return "rtl" if language.split("-")[0].lower() in RTL_LANGUAGES else "ltr"


def unsubscribe_base(settings: Settings) -> str:
    """Return the unsubscribe URL up to its token."""
    return urljoin(settings.newsletter.base_url, "unsubscribe?token=")


def preferences_base(settings: Settings) -> str:
    """Return the preferences URL up to its token (the same token as the unsubscribe link's)."""
    return urljoin(settings.newsletter.base_url, "preferences?token=")


def unsubscribe_url(settings: Settings, public_id: str, secret: str) -> str:
    """Return the one-click unsubscribe URL of a subscriber's public id: nothing in it names the reader."""
    return unsubscribe_base(settings) + tokens.make_link_token(secret, list_id(settings), public_id, "unsubscribe")


def message_id(settings: Settings, day: date, email: str, kind: str = "edition", secret: str | None = None) -> str:
    """Return the Message-ID of an edition (or a weekly digest) for one address: the same on every (re)send.

    Its middle is an HMAC of the list and the address with NEWSLETTER_SECRET (``secret``, else
    the settings'), so that nobody who sees a message's ID can test guesses of its reader's
    address, as they could with a plain hash.
    """
    key = (secret if secret is not None else settings.signing_secret()).encode("utf-8")
    digest = hmac.digest(key, f"message-id\0{list_id(settings)}\0{email.lower()}".encode(), "sha256").hex()[:24]
    tag = "" if kind == "edition" else f"{kind}."
    return f"<{day:%Y%m%d}.{tag}{digest}@{settings.sender_domain}>"


def greeting_for(settings: Settings) -> str:
    """The email's greeting: by the hour of send_time for "auto", none for "", else the configured text."""
    greeting = settings.newsletter.greeting.strip()
    if greeting != "auto":
        return greeting
    hour = int(settings.newsletter.send_time.split(":")[0])
    if 4 <= hour < 12:
        return "Good morning"
    return "Good afternoon" if 12 <= hour < 18 else "Good evening"


def years_ago(event: Event, day: date) -> str:
    years = event.years_before(day.year)
    return "this very year" if years == 0 else f"{years} year{'s' if years != 1 else ''} ago"


@dataclass(frozen=True)
class RenderedEdition:
    """An edition rendered once, ready to be personalized for each subscriber."""

    edition: Edition
    subject: str
    html: str  # inlined HTML with the sample subscriber's values
    text: str  # plain text with the sample subscriber's values
    settings: Settings
    secret: str
    segments: tuple[bytes, ...]  # the message, split at placeholders
    slots: tuple[bytes, ...]  # the placeholder name between segments[i] and segments[i+1]
    sign: Callable[..., bytes] | None = None  # DKIM, when [dkim] is configured: sign(message[, body_hash])
    body_hash: Callable[[dict[bytes, bytes]], bytes | None] | None = None  # the body's DKIM hash from its values
    signed_headers: Callable[[dict[bytes, bytes]], bytes | None] | None = None  # the signed fields, canonical
    list_id: str = ""
    unsubscribe_base: str = ""  # unsubscribe_url() up to the token, computed once
    preferences_base: str = ""  # the preferences page up to the token
    kind: str = "edition"  # or "digest": a weekly reader's message, whose edition is the latest of its week

    def message_id_for(self, subscriber: Subscriber) -> str:
        return message_id(self.settings, self.edition.day, subscriber.email, self.kind, self.secret)

    def message_for(self, subscriber: Subscriber, message_id: str = "") -> bytes:
        """Return the complete message (CRLF line endings) for one subscriber."""
        values = self.values_for(subscriber, message_id)
        message = join_segments(self.segments, self.slots, values)
        return self.signature_for(values, message) + message

    def signature_for(self, values: dict[bytes, bytes], message: bytes | None = None) -> bytes:
        """The DKIM-Signature header field(s) of the message with these values; empty when unsigned."""
        if self.sign is None:
            return b""
        if message is None:
            message = join_segments(self.segments, self.slots, values)
        body_hash = self.body_hash(values) if self.body_hash else None
        headers = self.signed_headers(values) if self.signed_headers else None
        if headers is not None:
            signed = self.sign(message, body_hash, headers)
        else:
            signed = self.sign(message) if body_hash is None else self.sign(message, body_hash)
        return signed[: len(signed) - len(message)]

    def values_for(self, subscriber: Subscriber, message_id: str = "") -> dict[bytes, bytes]:
        """The bytes that replace each placeholder for one subscriber: one line each, never CR or LF."""
        name = clean_line(subscriber.name) if subscriber.name else ""
        link_id = subscriber.public_id or tokens.NO_ID  # no id (a sample): links that open nothing
        token = tokens.make_link_token(self.secret, self.list_id, link_id, "unsubscribe")
        url = self.unsubscribe_base + token
        preferences = self.preferences_base + token
        return {
            b"PREFS": preferences.encode("ascii"),
            b"PREFSHTML": escape(preferences).encode("ascii"),
            b"TO": header_address(name, wire_address(subscriber.email)),
            b"MSGID": (message_id or self.message_id_for(subscriber)).encode("ascii"),
            b"UNSUB": url.encode("ascii"),
            b"UNSUBHTML": escape(url).encode("ascii"),
            b"NAMEHTML": (", " + escape(name)).encode("utf-8") if name else b"",
            b"NAMETEXT": (", " + name).encode("utf-8") if name else b"",
        }

    @property
    def html_size(self) -> int:
        return len(self.html.encode("utf-8"))

    def describe_size(self) -> str:
        """One line for operators: the sizes that matter for clipping and throughput."""
        message = len(self.message_for(SAMPLE))
        verdict = "ok" if self.html_size <= HTML_LIMIT else "TOO BIG: Gmail will clip it"
        return f"size: HTML {self.html_size / 1024:.1f} KB, message {message / 1024:.1f} KB ({verdict}, limit {HTML_LIMIT // 1024} KB)"


def join_segments(segments: tuple[bytes, ...], slots: tuple[bytes, ...], values: dict[bytes, bytes]) -> bytes:
    """Join a message's segments with the values of its placeholders."""
    parts = [segments[0]]
    for slot, segment in zip(slots, segments[1:], strict=True):
        parts.append(values[slot])
        parts.append(segment)
    return b"".join(parts)


def render_edition(
    edition: Edition, settings: Settings, *, allow_insecure_secret: bool = False, now: datetime | None = None
) -> RenderedEdition:
    """Render an edition once: Jinja2 templates, premailer inlining, the MIME message with placeholders."""
    subject = subject_for(edition, settings)
    env = _environment(settings.paths.templates, settings.paths.state)
    context = _context(edition, settings, subject)
    html = env.get_template("email/email.html").render(context)
    text = env.get_template("email/email.txt").render(_text_context(edition, context))
    return _rendered(edition, settings, subject, html, text, "edition", allow_insecure_secret, now)


def render_digest(
    editions: list[Edition], settings: Settings, *, allow_insecure_secret: bool = False, now: datetime | None = None
) -> RenderedEdition:
    """Render a weekly digest once: each edition's title, summary and link, the latest (the last) in full."""
    latest = editions[-1]
    first = editions[0]
    week = first.date_label if len(editions) == 1 else f"{first.date_label} to {latest.date_label}"
    subject = clean_line(f"{settings.newsletter.title}: your week, {week}")
    env = _environment(settings.paths.templates, settings.paths.state)
    items: list[dict[str, Any]] = [
        {"date_label": e.date_label, "event": e.event, "url": archive_url(settings, e.day)} for e in editions[:-1]
    ]
    context = {**_context(latest, settings, subject), "week_label": week, "items": items}
    html = env.get_template("email/digest.html").render(context)
    text_context = _text_context(latest, context)
    text_context["items"] = [{**item, "summary": textwrap.fill(item["event"].summary, TEXT_WIDTH)} for item in items]
    text = env.get_template("email/digest.txt").render(text_context)
    return _rendered(latest, settings, subject, html, text, "digest", allow_insecure_secret, now)


def _rendered(
    edition: Edition, settings: Settings, subject: str, html: str, text: str, kind: str,
    allow_insecure_secret: bool, now: datetime | None,
) -> RenderedEdition:  # fmt: skip
    """Inline the HTML, build the MIME message once and split it at the placeholders."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    secret = settings.signing_secret(allow_insecure=allow_insecure_secret)
    html = _short_lines(inlining.inline(html, settings.paths.templates, settings.paths.state))
    template = _message_template(settings, subject, html, text, now)
    pieces = _PLACEHOLDER.split(template)
    segments, slots = tuple(pieces[0::2]), tuple(pieces[1::2])
    sign, body_hash, signed_headers = _dkim(settings, segments, slots)
    rendered = RenderedEdition(
        edition=edition, subject=subject, html="", text="", settings=settings, secret=secret,
        segments=segments, slots=slots, sign=sign, body_hash=body_hash, signed_headers=signed_headers,
        list_id=list_id(settings), unsubscribe_base=unsubscribe_base(settings),
        preferences_base=preferences_base(settings), kind=kind,
    )  # fmt: skip
    sample = rendered.values_for(SAMPLE)
    html_out = _fill(html.encode(), sample).decode()
    text_out = _fill(text.encode(), sample).decode()
    if len(html_out.encode()) > HTML_LIMIT:
        log.warning("the HTML of %s is %d bytes: Gmail clips above %d", edition.day, len(html_out.encode()), HTML_LIMIT)
    return RenderedEdition(**{**rendered.__dict__, "html": html_out, "text": text_out})


def _dkim(
    settings: Settings, segments: tuple[bytes, ...], slots: tuple[bytes, ...]
) -> tuple[
    Callable[..., bytes] | None,
    Callable[[dict[bytes, bytes]], bytes | None] | None,
    Callable[[dict[bytes, bytes]], bytes | None] | None,
]:
    """The DKIM signer, body hasher and header canonicalizer when [dkim] is set; cryptography is imported only then (~20 ms)."""
    if not settings.dkim_enabled:
        return None, None, None
    from newsletter import signing

    sign = signing.signer(settings)
    if not sign:
        return None, None, None
    return sign, signing.body_hasher(segments, slots), signing.header_canonicalizer(segments, slots)


def _fill(data: bytes, values: dict[bytes, bytes]) -> bytes:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], data)


def _environment(templates: Path, state_dir: Path | None = None) -> jinja2.Environment:
    """The email templates' environment; their compiled code is cached beside the inlined HTML (see ``inlining``)."""
    if not (templates / "email" / "email.html").is_file():
        raise ConfigError(f"{templates}: no email/email.html template here (check paths.templates)")
    from newsletter.config import bundled

    return jinja2.Environment(  # a templates folder of an older version has no digest: the bundled one stands in
        loader=jinja2.ChoiceLoader(
            [jinja2.FileSystemLoader(str(templates)), jinja2.FileSystemLoader(str(bundled("templates")))]
        ),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        bytecode_cache=inlining.template_cache(state_dir),
    )


def _context(edition: Edition, settings: Settings, subject: str) -> dict[str, object]:
    event = edition.event
    sections = [
        {"heading": s.heading, "html": jinja2.utils.markupsafe.Markup(markdown_html(s.text))} for s in event.sections
    ]
    return {
        "language": settings.newsletter.language,
        "direction": text_direction(settings.newsletter.language),
        "greeting": greeting_for(settings),
        "subject": subject,
        "title": settings.newsletter.title,
        "date_label": edition.date_label,
        "event": event,
        "years_ago": years_ago(event, edition.day),
        "sections": sections,
        "archive_url": archive_url(settings, edition.day),
        "archive_index": settings.newsletter.base_url,
        "sources": source_links(event),
        "others": [
            {"event": e, "href": day_url(settings, edition.day.month, edition.day.day) + f"#{e.id}"}
            for e in edition.others
        ],
        "unsubscribe_url": jinja2.utils.markupsafe.Markup(_UNSUB_HTML.decode()),
        "preferences_url": jinja2.utils.markupsafe.Markup(_PREFS_HTML.decode()),
        "greeting_name": jinja2.utils.markupsafe.Markup(_NAME_HTML.decode()),
        "postal_address": settings.newsletter.postal_address,
        "sender_name": settings.sender.name,
        # Fills the preview line after the summary, so clients do not show body text there.
        "preheader_padding": jinja2.utils.markupsafe.Markup("&#847;&zwnj;&nbsp;" * 40),
    }


def _text_context(edition: Edition, context: dict[str, object]) -> dict[str, object]:
    links: list[str] = []
    sections = [{"heading": s.heading, "text": markdown_text(s.text, links)} for s in edition.event.sections]
    return {
        **context,
        "sections": sections,
        "links": links,
        "fun_fact": textwrap.fill(edition.event.fun_fact, TEXT_WIDTH),
        "books": [
            textwrap.fill(f"- {b.title}, by {b.author}", TEXT_WIDTH, subsequent_indent="  ")
            for b in edition.event.reading
        ],
        "unsubscribe_url": _UNSUB.decode(),
        "preferences_url": _PREFS.decode(),
        "greeting_name": _NAME_TEXT.decode(),
    }


def _short_lines(html: str, limit: int = 900) -> str:
    """Break lines longer than SMTP allows (998) at a space, which HTML treats like a line break."""
    out: list[str] = []
    for line in html.splitlines():
        while len(line) > limit:
            cut = line.rfind(" ", 0, limit)
            cut = cut if cut > 0 else line.find(" ", limit)
            if cut < 0:
                break
            out.append(line[:cut])
            line = line[cut + 1 :]
        out.append(line)
    return "\n".join(out) + "\n"


def _message_template(settings: Settings, subject: str, html: str, text: str, now: datetime) -> bytes:
    """Build the MIME message once, with placeholders where each subscriber's values go."""
    message = EmailMessage(policy=SMTP)
    message["From"] = formataddr((clean_line(settings.sender.name), settings.sender.address), charset="utf-8")
    message["Subject"] = subject
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["List-Id"] = f"{clean_line(settings.newsletter.title)} <{list_id(settings)}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if settings.sender.reply_to:
        message["Reply-To"] = settings.sender.reply_to
    message.set_content(text, subtype="plain", charset="utf-8", cte="8bit")
    message.add_alternative(html, subtype="html", charset="utf-8", cte="8bit")
    mailto = f"mailto:{settings.unsubscribe_address}?subject={quote('unsubscribe')}"
    personal = (
        b"To: " + _TO + b"\r\n"
        b"Message-ID: " + _MSGID + b"\r\n"
        b"List-Unsubscribe: <" + _UNSUB + b">,\r\n <" + mailto.encode("ascii") + b">\r\n"
    )
    return personal + message.as_bytes()
