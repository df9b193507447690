"""Rendering: the inlined HTML email, its plain-text twin, and a message mail servers trust."""

import email
import email.policy
import hashlib
import re
from datetime import UTC, date, datetime
from email.utils import getaddresses, parsedate_to_datetime

import html5lib
import pytest

from newsletter import tokens
from newsletter.events import load_events
from newsletter.render import HTML_LIMIT, list_id, message_id, render_digest, render_edition
from newsletter.selection import select_edition
from newsletter.subscribers import Subscriber
from tests.conftest import event_text, strict_html, write_event

NOW = datetime(2026, 6, 25, 5, 0, tzinfo=UTC)


@pytest.fixture
def rendered(settings):
    edition = select_edition(date(2026, 6, 24), load_events(settings.paths.events))
    return render_edition(edition, settings, now=NOW)


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def parts(message):
    text, html = message.get_payload()
    return text.get_content(), html.get_content()


def test_message_is_multipart_alternative_text_first_html_last(rendered):
    message = parse(rendered.message_for(Subscriber("ada@example.com", "Ada")))
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.get_payload()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in message.get_payload())
    assert message.defects == []


def test_every_header(rendered, settings):
    subscriber = Subscriber("ada@example.com", "Ada Lovelace", public_id="ab" * 16)
    message = parse(rendered.message_for(subscriber))
    assert message["From"] == "What happened today in history? <history@example.org>"
    assert getaddresses([message["To"]]) == [("Ada Lovelace", "ada@example.com")]
    assert message["Subject"] == "June 24: A June 24 event"
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert message["Message-ID"] == rendered.message_id_for(subscriber)
    assert message["Message-ID"].endswith("@example.org>")
    assert message["Message-ID"] == message_id(settings, rendered.edition.day, "ADA@example.com"), "stable, any case"
    assert message["List-Id"] == f"What happened today in history? <{list_id(settings)}>"
    https, mailto = [u.strip().strip("<>") for u in message["List-Unsubscribe"].split(",")]
    assert https.startswith("https://example.org/history/unsubscribe?token=")
    token = https.split("token=")[1]
    assert tokens.read_link_token("test-secret", list_id(settings), token, "unsubscribe") == "ab" * 16
    assert tokens.LINK_TOKEN.fullmatch(token)  # 64 hex digits: a random id and its HMAC, nothing that names the reader
    assert mailto == "mailto:history@example.org?subject=unsubscribe"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Reply-To"] is None


def test_reply_to_when_configured(make_settings, event_folder, tmp_path):
    settings = make_settings('[sender]\nreply_to = "editor@example.org"\n', events=event_folder)
    edition = select_edition(date(2026, 6, 24), load_events(event_folder))
    assert (
        parse(render_edition(edition, settings, now=NOW).message_for(Subscriber("a@example.com")))["Reply-To"]
        == "editor@example.org"
    )


def test_message_id_is_deterministic_per_edition_and_subscriber(rendered, settings):
    again = render_edition(rendered.edition, settings, now=datetime(2026, 6, 25, 9, 0, tzinfo=UTC))
    ada, bob = Subscriber("ada@example.com"), Subscriber("bob@example.com")
    assert (
        rendered.message_id_for(ada) == again.message_id_for(ada) == again.message_id_for(Subscriber("ADA@example.com"))
    )
    assert rendered.message_id_for(ada) != rendered.message_id_for(bob)


def test_personal_parts_differ_per_subscriber_and_nothing_leaks(rendered):
    ada = parse(rendered.message_for(Subscriber("ada@example.com", "Ada", public_id="a" * 32)))
    bob = parse(rendered.message_for(Subscriber("bob@example.com", "", public_id="b" * 32)))
    ada_text, ada_html = parts(ada)
    bob_text, bob_html = parts(bob)
    assert "Good morning, Ada," in ada_text and "Good morning, Ada," in ada_html
    assert "Good morning," in bob_text and "Ada" not in bob_text + bob_html
    assert ada["List-Unsubscribe"] != bob["List-Unsubscribe"]
    assert b"XXNEWSLETTER" not in rendered.message_for(Subscriber("x@example.com"))


def test_html_has_the_edition_shape(rendered):
    html = rendered.html
    assert "What happened today in history?" in html
    assert re.search(r'<td class="day"[^>]*>June 24</td>', html)
    assert "A June 24 event" in html and "June 24, 1995" in html
    for heading in ("What happened", "Why it mattered", "What followed", "Fun fact", "Recommended reading"):
        assert heading in html
    assert "<em>A Real Book</em> by A. Real Author" in html
    assert 'href="https://example.org/history/2026/06/24/"' in html  # view in browser
    assert "unsubscribe?token=" in html
    assert 'class="preheader"' in html and "Something true and interesting happened" in html


def test_css_is_inlined_and_media_rules_are_kept_with_important(rendered):
    html = rendered.html
    assert 'style="' in html and "font-family" in html
    assert "@media (prefers-color-scheme: dark)" in html
    assert "@media only screen and (max-width: 620px)" in html
    assert "!important" in html  # premailer's strip_important would have removed it
    assert 'width="600"' in html and "max-width: 600px" in html.replace("max-width:600px", "max-width: 600px")


def test_plain_text_has_every_section_and_the_links(settings, event_folder):
    write_event(
        event_folder,
        "06-26-linked.md",
        event_text("Linked event", "1990-06-26").replace(
            "## Why it mattered\n\n", "## Why it mattered\n\nSee [the record](https://en.wikipedia.org/wiki/Record). "
        ),
    )
    edition = select_edition(date(2026, 6, 26), load_events(event_folder))
    text = render_edition(edition, settings, now=NOW).text
    for heading in ("WHAT HAPPENED", "WHY IT MATTERED", "WHAT FOLLOWED", "FUN FACT", "RECOMMENDED READING"):
        assert heading in text
    assert "See the record [1]." in text
    assert "[1] https://en.wikipedia.org/wiki/Record" in text
    assert "Unsubscribe: https://example.org/history/unsubscribe?token=" in text
    assert "<" not in text.replace("<https", "")
    assert (
        max(len(line) for line in text.splitlines() if not line.startswith(("[", "Unsubscribe", "Read it", "  http")))
        <= 78
    )


def test_hostile_names_cannot_break_headers(rendered):
    hostile = Subscriber("eve@example.com", 'Eve "the" <b>Hacker</b>\r\nBcc: victim@example.org\nX: é')
    data = rendered.message_for(hostile)
    message = parse(data)
    assert message["Bcc"] is None and message["X"] is None
    assert getaddresses([message["To"]]) == [
        ('Eve "the" <b>Hacker</b> Bcc: victim@example.org X: é', "eve@example.com")
    ]
    assert message.defects == [] and all(not p.defects for p in message.get_payload())
    text, html = parts(message)
    assert "&lt;b&gt;Hacker&lt;/b&gt;" in html and "<b>Hacker" not in html
    assert data.count(b"\r\n\r\n") >= 3  # header/body separations only where MIME puts them
    for line in data.split(b"\r\n"):
        assert b"\n" not in line and b"\r" not in line


def test_hostile_event_text_is_escaped(settings, event_folder):
    write_event(
        event_folder,
        "06-27-hostile.md",
        event_text("Ben & Jerry's <script>alert(1)</script>", "1978-06-27").replace(
            "## Why it mattered\n\n", "## Why it mattered\n\n<script>alert('x')</script> & <img src=x onerror=y> "
        ),
    )
    edition = select_edition(date(2026, 6, 27), load_events(event_folder))
    rendered = render_edition(edition, settings, now=NOW)
    message = parse(rendered.message_for(Subscriber("a@example.com")))
    assert message["Subject"] == "June 27: Ben & Jerry's <script>alert(1)</script>"
    _, html = parts(message)
    assert "<script" not in html and "<img" not in html
    assert "Ben &amp; Jerry" in html and "&lt;script&gt;" in html


def test_non_ascii_subject_and_sender_are_encoded(make_settings, event_folder):
    write_event(event_folder, "06-28-cafe.md", event_text("Café Zürich opens — 東京", "1911-06-28"))
    settings = make_settings('[sender]\nname = "Frédérique Ørsted"\n', events=event_folder)
    edition = select_edition(date(2026, 6, 28), load_events(event_folder))
    data = render_edition(edition, settings, now=NOW).message_for(Subscriber("a@example.com", "Zoë"))
    header_block = data.split(b"\r\n\r\n")[0]
    header_block.decode("ascii")  # headers are 7-bit
    message = parse(data)
    assert message["Subject"] == "June 28: Café Zürich opens — 東京"
    assert message["From"].addresses[0].display_name == "Frédérique Ørsted"
    assert message["To"].addresses[0].display_name == "Zoë"


def test_html_stays_under_the_gmail_clipping_limit(rendered):
    assert rendered.html_size < HTML_LIMIT
    assert len(rendered.message_for(Subscriber("a@example.com"))) < HTML_LIMIT + 20_000


def test_no_line_is_longer_than_smtp_allows(rendered):
    assert max(len(line) for line in rendered.message_for(Subscriber("a@example.com", "A")).split(b"\r\n")) <= 998


def test_real_send_requires_the_secret(make_settings, event_folder):
    settings = make_settings(events=event_folder, env={"NEWSLETTER_SMTP_HOST": "x"})
    edition = select_edition(date(2026, 6, 24), load_events(event_folder))
    with pytest.raises(Exception, match="NEWSLETTER_SECRET is not set"):
        render_edition(edition, settings)
    assert render_edition(edition, settings, allow_insecure_secret=True).html


def test_naive_now_is_rejected(rendered, settings):
    with pytest.raises(ValueError, match="aware"):
        render_edition(rendered.edition, settings, now=datetime(2026, 6, 25, 5, 0))


# What every client needs (Outlook's Word engine, iOS Mail, dark mode, webmail).


@pytest.fixture
def june25(settings):
    """The June 25 edition of the test library: the day has a second article."""
    edition = select_edition(date(2026, 6, 25), load_events(settings.paths.events))
    return render_edition(edition, settings, now=NOW)


@pytest.fixture(params=["edition", "weekly digest"])
def any_email(request, settings):
    """Each kind of email we send: the daily edition (June 25) and a weekly digest ending on it."""
    events = load_events(settings.paths.events)
    if request.param == "edition":
        return render_edition(select_edition(date(2026, 6, 25), events), settings, now=NOW)
    days = [select_edition(date(2026, 6, 24), events), select_edition(date(2026, 6, 25), events)]
    return render_digest(days, settings, now=NOW)


def tree(html):
    return html5lib.parse(html, namespaceHTMLElements=False)


def test_the_email_parses_without_errors_under_a_strict_html5_parser(any_email):
    strict_html(any_email.html)


def test_outlook_gets_its_office_settings_in_a_conditional_comment(any_email):
    html = any_email.html
    mso = re.search(r"<!--\[if mso\]>(.*?)<!\[endif\]-->", html, re.S).group(1)
    assert "<o:OfficeDocumentSettings>" in mso and "<o:PixelsPerInch>96</o:PixelsPerInch>" in mso
    assert "mso-line-height-rule: exactly" in mso
    assert 'xmlns:o="urn:schemas-microsoft-com:office:office"' in html
    assert 'xmlns:v="urn:schemas-microsoft-com:vml"' in html


def test_boxes_are_table_cells_never_padded_divs_or_spans(any_email):
    for element in (e for e in tree(any_email.html).iter() if e.tag in ("div", "span")):
        style = element.get("style", "")
        assert not re.search(r"padding|background|border", style), (element.get("class"), style)
    badges = [td for td in tree(any_email.html).iter("td") if td.get("class") == "day"]
    assert badges and all("padding:6px 14px" in b.get("style") and "border:2px solid" in b.get("style") for b in badges)
    assert re.search(r'<table role="presentation" class="funfact"[^>]*bgcolor="#fff6dc"', any_email.html)
    assert not re.search(r"<(ul|ol)\b", any_email.html)  # lists are table rows: Outlook ignores list padding


def test_ios_mail_neither_reformats_nor_links_the_dates(any_email):
    html = any_email.html
    assert '<meta name="x-apple-disable-message-reformatting">' in html
    assert '<meta name="format-detection" content="telephone=no, date=no, address=no, email=no, url=no">' in html
    assert "a[x-apple-data-detectors] { color: inherit !important;" in html


def test_an_article_wrapper_keeps_lang_and_dir_where_webmail_drops_html_and_body(any_email):
    wrapper = tree(any_email.html).find(".//body/div")
    assert (wrapper.get("role"), wrapper.get("lang"), wrapper.get("dir")) == ("article", "en", "ltr")
    assert wrapper.get("aria-label") == any_email.subject


def _dark_selectors(html, prefix):
    block = html.split('<style type="text/css">', 1)[1].split("</style>", 1)[0]
    if prefix == "@media":
        block = block.split("@media (prefers-color-scheme: dark) {", 1)[1].split("\n}\n", 1)[0]
        rules = re.findall(r"([^{}]+)\{", block)
    else:
        rules = [r for r in re.findall(r"([^{}]+)\{", block) if prefix in r]
    return {part.strip().split()[-1].lstrip(".") for rule in rules for part in rule.split(",")}


@pytest.mark.parametrize("scheme", ["@media", "[data-ogsc]"])
def test_every_coloured_element_has_a_dark_mode_rule(any_email, scheme):
    """prefers-color-scheme for Apple Mail and most apps; [data-ogsc]/[data-ogsb] for Outlook.com's dark mode."""
    selectors = _dark_selectors(any_email.html, scheme) | (
        _dark_selectors(any_email.html, "[data-ogsb]") if scheme != "@media" else set()
    )
    body = tree(any_email.html).find(".//body")
    for element in body.iter():
        style = element.get("style", "")
        if not re.search(r"(^|;\s*)(color|background-color|border[a-z-]*):[^;]*#", style):
            continue
        names = {element.tag, *element.get("class", "").split()}
        assert names & selectors, f"no dark rule ({scheme}) for <{element.tag} class={element.get('class')!r}>"
    assert "footer" in selectors  # the divider: #e2dccd would glare on #1e2127


def test_footer_links_are_tap_targets_of_at_least_24_px(rendered):
    links = [a for a in tree(rendered.html).iter("a") if "footer-link" in a.get("class", "")]
    assert [a.text for a in links] == ["View in your browser", "All editions", "Preferences", "Unsubscribe"]
    for link in links:
        style = link.get("style")
        assert "display:inline-block" in style and "padding:6px 4px" in style and "line-height:20px" in style


def test_sources_are_links_under_read_more_and_the_other_article_is_named(june25):
    html, text = june25.html, june25.text
    assert re.search(r"<h2[^>]*>Read more</h2>", html)
    assert re.search(
        r'<a class="more" href="https://en.wikipedia.org/wiki/Test_event"[^>]*>Wikipedia: Test event</a>', html
    )
    assert re.search(r"<h2[^>]*>Also on this day</h2>", html)
    assert re.search(
        r'href="https://example.org/history/days/06-25/#06-25-syrian-defection"[^>]*>Syrian officers defect</a>', html
    )
    assert "READ MORE" in text and "https://en.wikipedia.org/wiki/Test_event" in text
    assert "ALSO ON THIS DAY" in text and "https://example.org/history/days/06-25/#06-25-syrian-defection" in text
    assert "All editions: https://example.org/history/" in text


@pytest.mark.parametrize(
    ("toml", "html_line", "text_line"),
    [
        ("", "Good morning, Ada,", "Good morning, Ada,"),
        ('send_time = "13:00"', "Good afternoon, Ada,", "Good afternoon, Ada,"),
        ('send_time = "19:30"', "Good evening, Ada,", "Good evening, Ada,"),
        ('greeting = "Hello"', "Hello, Ada,", "Hello, Ada,"),
    ],
)
def test_the_greeting_fits_the_send_time_or_is_what_the_config_says(
    make_settings, event_folder, toml, html_line, text_line
):
    settings = make_settings(f"[newsletter]\n{toml}\n", events=event_folder)
    edition = select_edition(date(2026, 6, 24), load_events(event_folder))
    text, html = parts(
        parse(render_edition(edition, settings, now=NOW).message_for(Subscriber("a@example.com", "Ada")))
    )
    assert html_line in html and text.splitlines()[3] == text_line


def test_no_greeting_at_all_when_it_is_empty(make_settings, event_folder):
    settings = make_settings('[newsletter]\ngreeting = ""\n', events=event_folder)
    edition = select_edition(date(2026, 6, 24), load_events(event_folder))
    text, html = parts(
        parse(render_edition(edition, settings, now=NOW).message_for(Subscriber("a@example.com", "Ada")))
    )
    assert "Ada" not in text + html and 'class="greeting"' not in html and "Good" not in text


def test_a_message_id_tells_nobody_which_address_it_was_sent_to(settings, make_settings):
    """Keyed with NEWSLETTER_SECRET: without it, an ID cannot be matched against guessed addresses."""
    day, ada = date(2026, 6, 24), "ada@example.com"
    ours = message_id(settings, day, ada)
    other = message_id(make_settings(env={"NEWSLETTER_SECRET": "another secret"}), day, ada)
    assert ours != other and ours.split(".")[0] == other.split(".")[0] == "<20260624"
    middle = ours.split(".")[1].split("@")[0]
    plain = hashlib.sha256(f"{list_id(settings)}\0{ada}".encode()).hexdigest()
    assert middle not in plain and message_id(settings, day, "bob@example.com") != ours
