"""edition_for: the one place that selects a day's edition and records it, reading only that day's files."""

from datetime import date

from newsletter import editions, events, state, storage
from newsletter.editions import edition_for
from tests.conftest import event_text, write_event

DAY = date(2026, 6, 25)


def test_the_edition_is_recorded_and_never_changes_afterwards(settings, event_folder):
    conn = storage.connect(settings)
    first = edition_for(DAY, settings, conn)
    assert state.recorded_editions(conn) == {DAY: first.event.id}
    write_event(event_folder, "06-25-aaa-round-anniversary.md", event_text("A round one", "1976-06-25"))
    assert edition_for(DAY, settings, conn).event.id == first.event.id


def test_without_record_nothing_is_written(settings):
    assert edition_for(DAY, settings, None, record=False).day == DAY
    assert not settings.paths.state.exists()


def test_a_dry_run_reads_only_the_event_files_of_its_own_day(settings, monkeypatch):
    read = []
    original = events.parse_event_file

    def spy(path):
        read.append(path.name)
        return original(path)

    monkeypatch.setattr(events, "parse_event_file", spy)
    editions.dry_run(settings, DAY)
    assert sorted(read) == ["06-25-korean-war-begins.md", "06-25-syrian-defection.md"]


def test_february_28_of_a_common_year_also_reads_february_29(settings):
    files = events.day_files(settings.paths.events, date(2027, 2, 28))
    assert [p.name for p in files] == ["02-29-leap-day-event.md"]
    assert edition_for(date(2027, 2, 28), settings, None).event.id == "02-29-leap-day-event"


def test_the_files_of_a_day_include_the_event_on_record_and_never_hidden_ones(settings):
    folder = settings.paths.events
    (folder / "06" / "_06-24-draft.md").write_text("not an event")
    (folder / "06" / ".06-24-swap.md").write_text("not an event")
    files = events.day_files(folder, date(2026, 6, 24), ["12-31-year-end"])
    assert [p.name for p in files] == ["06-24-first-thing.md", "12-31-year-end.md"]
    assert files == [p for p in events.event_files(folder) if p in files]  # the library's order
