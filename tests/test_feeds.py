"""Feeds and the web archive, parsed with feedparser and checked field by field."""

from datetime import UTC, date, datetime

import feedparser
import pytest

from newsletter import state, storage
from newsletter.errors import NewsletterError
from newsletter.feeds import entry_id, publish
from tests.conftest import event_text, write_event

NOW = datetime(2026, 6, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def conn(settings):
    return storage.connect(settings)


def parsed(settings, name):
    feed = feedparser.parse((settings.paths.public / name).read_bytes())
    assert not feed.bozo, feed.get("bozo_exception")
    return feed


def test_both_feeds_parse_cleanly_with_every_field(settings, conn):
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    for name, version in (("rss.xml", "rss20"), ("atom.xml", "atom10")):
        feed = parsed(settings, name)
        assert feed.version == version
        assert feed.feed.title == "What happened today in history?"
        assert feed.feed.subtitle == "One story from history for every day of the year."
        assert feed.feed.language == "en"
        assert feed.feed.link == "https://example.org/history/"
        assert any(
            link.rel == "self" and link.href == f"https://example.org/history/{name}" for link in feed.feed.links
        )
        assert "onthisday-newsletter" in feed.feed.generator
        assert feed.feed.updated_parsed[:5] == (2026, 6, 25, 7, 0)
        entry = feed.entries[0]
        assert entry.title.startswith("June 25: ")
        assert entry.link == "https://example.org/history/2026/06/25/"
        assert entry.id == "tag:example.org,2026-06-25:edition"
        assert entry.published_parsed[:5] == (2026, 6, 25, 7, 0)
        assert entry.summary == "Something true and interesting happened on this day."
        assert "<h2>What happened</h2>" in entry.content[0].value and "<table" not in entry.content[0].value
        assert entry.author_detail.email == "history@example.org"
        assert [t.term for t in entry.tags] == ["history", "test"]


def test_editions_are_newest_first_and_days_without_events_are_left_out(settings, conn):
    result = publish(settings, date(2026, 6, 25), conn, now=NOW)
    assert [e.day for e in result.editions] == [date(2026, 6, 25), date(2026, 6, 24)]
    assert date(2026, 6, 23) in result.missing
    assert [e.link[-11:] for e in parsed(settings, "atom.xml").entries] == ["2026/06/25/", "2026/06/24/"]


def test_the_window_is_feed_days_long(make_settings, event_folder, tmp_path):
    settings = make_settings(
        "[newsletter]\nfeed_days = 1\n", events=event_folder, state=tmp_path / "v", public=tmp_path / "p"
    )
    result = publish(settings, date(2026, 6, 25), storage.connect(settings), now=NOW)
    assert [e.day for e in result.editions] == [date(2026, 6, 25)]


def test_ids_are_stable_across_rebuilds_and_machines(settings, conn, make_settings, event_folder, tmp_path):
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    first = [e.id for e in parsed(settings, "atom.xml").entries]
    other = make_settings(events=event_folder, state=tmp_path / "other-var", public=tmp_path / "other-public")
    publish(other, date(2026, 6, 25), storage.connect(other), now=NOW)
    assert [e.id for e in parsed(other, "atom.xml").entries] == first
    assert first[0] == entry_id(settings, date(2026, 6, 25))


def test_a_second_publish_with_nothing_new_changes_nothing(settings, conn):
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    before = {p: p.read_bytes() for p in settings.paths.public.rglob("*") if p.is_file()}
    result = publish(settings, date(2026, 6, 25), conn, now=NOW)
    assert result.written == []
    assert {p: p.read_bytes() for p in settings.paths.public.rglob("*") if p.is_file()} == before


def test_no_entry_from_the_future(settings, conn):
    with pytest.raises(NewsletterError, match="is in the future"):
        publish(settings, date(2026, 6, 28), conn, now=NOW)
    early = datetime(2026, 6, 25, 6, 59, tzinfo=UTC)  # before today's send time
    result = publish(settings, date(2026, 6, 25), conn, now=early)
    assert [e.day for e in result.editions] == [date(2026, 6, 24)]


def test_time_zone_edge_tomorrow_in_auckland(make_settings, event_folder, tmp_path):
    """At 20:00 UTC on June 24 it is already 08:00 on June 25 in Auckland: the June 25 edition is out."""
    settings = make_settings(
        '[newsletter]\ntimezone = "Pacific/Auckland"\n',
        events=event_folder,
        state=tmp_path / "v",
        public=tmp_path / "p",
    )
    now = datetime(2026, 6, 24, 20, 0, tzinfo=UTC)
    result = publish(settings, date(2026, 6, 25), storage.connect(settings), now=now)
    assert result.editions[0].day == date(2026, 6, 25)
    entry = parsed(settings, "atom.xml").entries[0]
    assert entry.published == "2026-06-25T07:00:00+12:00"
    with pytest.raises(NewsletterError):
        publish(
            settings,
            date(2026, 6, 25),
            storage.connect(settings),
            now=datetime(2026, 6, 24, 11, 0, tzinfo=UTC),
        )


def test_a_later_library_change_does_not_rewrite_a_published_edition(settings, conn, event_folder):
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    before = parsed(settings, "atom.xml").entries[0].title
    write_event(
        event_folder, "06-25-moon-landing-rehearsal.md", event_text("A round-anniversary event", "1976-06-25")
    )  # 50 years in 2026
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    assert parsed(settings, "atom.xml").entries[0].title == before
    assert state.recorded_editions(conn)[date(2026, 6, 25)] != "06-25-moon-landing-rehearsal"


def test_archive_pages(settings, conn):
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    index = (settings.paths.public / "index.html").read_text()
    assert '<link rel="alternate" type="application/rss+xml"' in index and 'type="application/atom+xml"' in index
    assert 'href="https://example.org/history/2026/06/25/"' in index
    assert 'href="https://example.org/history/2026/06/24/"' in index
    page = (settings.paths.public / "2026" / "06" / "25" / "index.html").read_text()
    assert '<span class="badge">June 25</span>' in page and "[" not in page and "Back to all editions" in page
    for heading in ("What happened", "Why it mattered", "What followed", "Fun fact", "Recommended reading"):
        assert heading in page
    assert "<cite>A Real Book</cite> by A. Real Author" in page


def test_files_are_written_atomically_without_leftovers(settings, conn):
    publish(settings, date(2026, 6, 25), conn, now=NOW)
    assert not [p for p in settings.paths.public.rglob("*") if p.name.endswith(".tmp")]
