"""The web archive: a page for every calendar day, the calendar, monthly indexes, and the head of every page."""

import logging
import re
import struct
from datetime import UTC, date, datetime
from xml.etree import ElementTree

import pytest

from newsletter import state, storage
from newsletter.archive import CALENDAR_DAYS, neighbours
from newsletter.config import load_settings
from newsletter.feeds import page_horizon, publish, publish_edition_page
from newsletter.render import source_link
from tests.conftest import strict_html, write_library

NOW = datetime(2026, 6, 26, 12, 0, tzinfo=UTC)
BASE = "https://example.org/history/"


@pytest.fixture
def conn(settings):
    return storage.connect(settings)


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """The small test library published once, on June 26, for the tests that only read the pages."""
    root = tmp_path_factory.mktemp("archive")
    config = root / "newsletter.toml"
    folders = {"events": write_library(root / "events"), "state": root / "var", "public": root / "public"}
    config.write_text("[paths]\n" + "".join(f'{k} = "{v}"\n' for k, v in folders.items()), encoding="utf-8")
    settings = load_settings(config, env={"NEWSLETTER_SECRET": "test-secret"})
    conn = storage.connect(settings)
    try:
        publish(settings, date(2026, 6, 25), conn, now=NOW)
    finally:
        conn.close()
    return settings.paths.public


def read(public, path):
    return (public / path / "index.html").read_text(encoding="utf-8")


def hrefs(page):
    return re.findall(r'href="([^"]+)"', page)


def test_the_calendar_has_366_days_in_order_with_feb_29():
    assert len(CALENDAR_DAYS) == 366
    assert CALENDAR_DAYS[0] == (1, 1) and CALENDAR_DAYS[-1] == (12, 31)
    assert CALENDAR_DAYS[CALENDAR_DAYS.index((2, 28)) + 1] == (2, 29)


@pytest.mark.parametrize(
    ("day", "before", "after"),
    [((1, 1), (12, 31), (1, 2)), ((12, 31), (12, 30), (1, 1)), ((2, 29), (2, 28), (3, 1)), ((3, 1), (2, 29), (3, 2))],
)
def test_previous_and_next_day_wrap_and_pass_through_feb_29(day, before, after):
    assert neighbours(*day) == (before, after)


def test_publish_writes_a_page_for_every_calendar_day(public):
    pages = sorted(p.parent.name for p in (public / "days").glob("*/index.html"))
    assert len(pages) == 366 and pages[0] == "01-01" and "02-29" in pages and pages[-1] == "12-31"


def test_a_day_page_holds_every_article_this_years_choice_first(public):
    page = read(public, "days/06-25")
    korean, syrian = page.index("Korean War begins"), page.index("Syrian officers defect")
    assert korean < syrian  # 2026's edition of June 25 is the Korean War article
    assert '<span class="month">June</span> <span class="num">25</span>' in page
    for heading in ("What happened", "Why it mattered", "Fun fact", "Recommended reading", "Sources"):
        assert heading in page
    assert "1950: Korean War begins" in page and "2012: Syrian officers defect" in page
    assert '<a href="https://en.wikipedia.org/wiki/Test_event">Wikipedia: Test event</a>' in page
    assert 'id="06-25-korean-war-begins"' in page and 'id="06-25-syrian-defection"' in page


def test_next_years_choice_comes_first_next_year(settings, conn):
    publish(settings, date(2027, 6, 25), conn, now=datetime(2027, 6, 26, tzinfo=UTC))
    page = read(settings.paths.public, "days/06-25")
    assert page.index("Syrian officers defect") < page.index("Korean War begins")


def test_a_day_page_links_the_days_around_it_and_the_calendar(public):
    links = hrefs(read(public, "days/06-25"))
    assert f"{BASE}days/06-24/" in links and f"{BASE}days/06-26/" in links and f"{BASE}days/" in links
    assert f"{BASE}days/12-31/" in hrefs(read(public, "days/01-01"))
    assert f"{BASE}days/02-29/" in hrefs(read(public, "days/02-28"))
    assert f"{BASE}days/03-01/" in hrefs(read(public, "days/02-29"))


def test_a_day_without_an_article_still_has_a_page(public):
    assert "There is no story for March 3 in the library yet." in read(public, "days/03-03")


def test_the_calendar_links_every_day(public):
    links = hrefs(read(public, "days"))
    assert all(f"{BASE}days/{m:02d}-{d:02d}/" in links for m, d in CALENDAR_DAYS)
    assert 'title="Korean War begins; Syrian officers defect"' in read(public, "days")


def test_an_edition_page_links_its_day_and_names_the_other_article(public):
    page = read(public, "2026/06/25")
    assert "Korean War begins" in page
    assert "Also on this day" in page
    assert f'<a href="{BASE}days/06-25/#06-25-syrian-defection">Syrian officers defect</a>' in page
    assert f"{BASE}days/06-25/" in hrefs(page) and f"{BASE}2026/06/" in hrefs(page)
    assert "Also on this day" not in read(public, "2026/06/24")  # June 24 has one article


def test_every_edition_ever_sent_is_linked_from_its_month(settings, conn):
    for day in (date(2026, 2, 28), date(2026, 5, 24)):
        state.record_edition(conn, day, "02-29-leap-day-event" if day.month == 2 else "06-24-first-thing")
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    public = settings.paths.public
    home = read(public, "")
    months = [h for h in hrefs(home) if re.fullmatch(re.escape(BASE) + r"\d{4}/\d\d/", h)]
    assert months == [f"{BASE}{m}/" for m in ("2026/06", "2026/05", "2026/02")]
    assert f"{BASE}2026/02/28/" in hrefs(read(public, "2026/02"))
    assert (public / "2026" / "02" / "28" / "index.html").is_file()  # its page exists, outside the feed window
    june = read(public, "2026/06")
    assert f"{BASE}2026/06/25/" in hrefs(june) and f"{BASE}2026/06/24/" in hrefs(june)


def test_sitemap_lists_every_page_and_robots_points_to_it(public):
    root = ElementTree.fromstring((public / "sitemap.xml").read_bytes())
    namespace = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
    urls = [loc.text for loc in root.iter(f"{namespace}loc")]
    assert urls[:2] == [BASE, BASE + "days/"]
    assert f"{BASE}days/02-29/" in urls and f"{BASE}2026/06/25/" in urls and f"{BASE}2026/06/" in urls
    assert len(urls) == len(set(urls)) == 2 + 366 + 1 + 2
    robots = (public / "robots.txt").read_text()
    assert "User-agent: *" in robots and f"Sitemap: {BASE}sitemap.xml" in robots
    assert "Disallow: /history/unsubscribe" in robots and "Disallow: /history/preferences" in robots
    assert "subscribe\n" not in robots.replace("unsubscribe", "")  # the sign-up form may be found
    assert (public / "favicon.svg").read_bytes().startswith(b"<svg")


@pytest.mark.parametrize("path", ["", "days", "days/06-25", "days/02-29", "2026/06/25", "2026/06"])
def test_every_page_has_description_canonical_open_graph_and_twitter_card(public, path):
    page = read(public, path)
    canonical = re.search(r'<link rel="canonical" href="([^"]+)">', page).group(1)
    assert canonical == BASE + (path + "/" if path else "")
    assert re.search(r'<meta name="description" content="[^"]{20,}">', page)
    for tag in ("og:title", "og:description", "og:type", "og:url", "og:site_name"):
        assert f'<meta property="{tag}" content="' in page
    assert f'<meta property="og:url" content="{canonical}">' in page
    assert '<meta name="twitter:card" content="summary">' in page
    assert f'<link rel="icon" href="{BASE}favicon.svg" type="image/svg+xml">' in page
    assert f'<link rel="icon" href="{BASE}favicon.ico" sizes="32x32">' in page  # for browsers without SVG icons


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("path", ["days/06-25", "days/02-29", "days/12-31"])
def test_day_pages_have_an_open_graph_image_that_is_published(public, path):
    page = read(public, path)
    image = re.search(r'<meta property="og:image" content="([^"]+)">', page).group(1)
    assert image == BASE + "og-image.png"
    data = (public / image.removeprefix(BASE)).read_bytes()
    width, height = png_size(data)
    assert f'<meta property="og:image:width" content="{width}">' in page
    assert f'<meta property="og:image:height" content="{height}">' in page
    assert (width, height) == (1200, 630) and len(data) < 50_000  # the size the big link previews use; small
    assert re.search(r'<meta property="og:image:alt" content="[^"]{10,}">', page)


def test_the_favicon_is_published_as_an_ico_of_png_images(public):
    data = (public / "favicon.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    assert (reserved, kind) == (0, 1) and count >= 2
    sizes = []
    for n in range(count):
        width, _, _, _, _, _, length, offset = struct.unpack("<BBBBHHII", data[6 + 16 * n : 22 + 16 * n])
        assert png_size(data[offset : offset + length]) == (width, width)
        sizes.append(width)
    assert {16, 32} <= set(sizes)


def test_every_page_parses_without_errors_under_a_strict_html5_parser(public):
    pages = sorted(public.rglob("*.html"))
    assert len(pages) > 370
    for path in pages:
        strict_html(path.read_text(encoding="utf-8"))


def test_day_pages_are_not_rewritten_when_the_library_is_unchanged(settings, conn):
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    day_page = settings.paths.public / "days" / "06-25" / "index.html"
    before = day_page.stat().st_mtime_ns
    result = publish(settings, date(2026, 6, 26), conn, now=datetime(2026, 6, 26, 12, tzinfo=UTC))
    assert day_page.stat().st_mtime_ns == before
    assert not [p for p in result.written if "days" in p.parts]


def test_an_edition_page_is_out_when_the_first_zone_on_earth_reaches_send_time(settings, conn):
    """At 17:00 UTC on June 24 it is 07:00 on June 25 in UTC+14: that edition's page exists, its feed entry not."""
    assert page_horizon(settings, datetime(2026, 6, 24, 16, 59, tzinfo=UTC)) == date(2026, 6, 24)
    assert page_horizon(settings, datetime(2026, 6, 24, 17, 0, tzinfo=UTC)) == date(2026, 6, 25)
    result = publish(settings, date(2026, 6, 24), conn, now=datetime(2026, 6, 24, 17, 0, tzinfo=UTC))
    assert (settings.paths.public / "2026" / "06" / "25" / "index.html").is_file()
    assert [e.day for e in result.editions] == [date(2026, 6, 24)]
    assert "2026-06-25" not in (settings.paths.public / "atom.xml").read_text()
    assert f"{BASE}2026/06/25/" not in hrefs(read(settings.paths.public, ""))


def test_publish_edition_page_records_and_writes_one_page(settings, conn):
    path = publish_edition_page(settings, date(2026, 12, 31), conn)
    assert path == settings.paths.public / "2026" / "12" / "31" / "index.html"
    assert "A year-end event" in path.read_text()
    assert state.recorded_editions(conn)[date(2026, 12, 31)] == "12-31-year-end"


def test_publishing_an_edition_page_reads_only_that_days_files(settings, conn, event_folder, caplog):
    """Every send publishes its page first: it must not wait for the whole library (or complain about other days)."""
    (event_folder / "07-01-broken.md").write_text("---\ntitle: [unclosed\n---\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        path = publish_edition_page(settings, date(2026, 12, 31), conn)
    assert "A year-end event" in path.read_text()
    assert "07-01-broken" not in caplog.text


@pytest.mark.parametrize(
    ("source", "url"),
    [
        ("Wikipedia: Korean War", "https://en.wikipedia.org/wiki/Korean_War"),
        ("Wikipedia: Timeline (May–August 2012)", "https://en.wikipedia.org/wiki/Timeline_(May%E2%80%93August_2012)"),
        ("https://www.loc.gov/item/x/", "https://www.loc.gov/item/x/"),
        ("The Times, 26 June 1950", ""),
    ],
)
def test_sources_become_links_where_we_know_where_to_read_them(source, url):
    assert source_link(source).url == url and source_link(source).label == source
