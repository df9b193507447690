"""Choosing the day's event: matching day, rotation, round anniversaries, Feb 29, history, time zones."""

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from newsletter.errors import EventDataError, NoEventError
from newsletter.events import load_events
from newsletter.selection import candidates_for, choose_event, is_round_anniversary, select_edition, today_in
from tests.conftest import event_text, write_event


@pytest.fixture
def library(event_folder):
    return load_events(event_folder)


def test_the_event_of_the_matching_calendar_day_is_chosen(library):
    assert choose_event(date(2026, 6, 24), library).id == "06-24-first-thing"
    assert choose_event(date(2026, 12, 31), library).id == "12-31-year-end"


def test_same_date_always_gives_the_same_answer(library):
    picks = {choose_event(date(2027, 6, 25), list(reversed(library))).id for _ in range(5)}
    picks.add(choose_event(date(2027, 6, 25), library).id)
    assert len(picks) == 1


def test_several_events_rotate_across_years(library):
    def plain(year):  # neither June 25 event has a round anniversary that year
        return not any(is_round_anniversary(e, year) for e in candidates_for(date(year, 6, 25), library))

    pairs = [(y, y + 1) for y in range(2026, 2045) if plain(y) and plain(y + 1)]
    assert len(pairs) >= 5
    for first, second in pairs:
        assert choose_event(date(first, 6, 25), library).id != choose_event(date(second, 6, 25), library).id


def test_rotation_avoids_the_event_used_last_time(library):
    history = {date(2031, 6, 25): choose_event(date(2031, 6, 25), library).id}
    assert choose_event(date(2033, 6, 25), library, history).id != history[date(2031, 6, 25)]


def test_round_anniversary_is_preferred(library):
    # 2025: the Korean War began 75 years before; 2032: the defection was 20 years before.
    assert choose_event(date(2025, 6, 25), library).id == "06-25-korean-war-begins"
    assert choose_event(date(2032, 6, 25), library).id == "06-25-syrian-defection"
    assert choose_event(date(2050, 6, 25), library).id == "06-25-korean-war-begins"  # 100 years


def test_a_round_anniversary_never_repeats_last_years_story(library):
    # 2031: no round anniversary, rotation picks the defection; 2032 is its 20th anniversary,
    # but a reader met it the year before, so the other event is sent.
    first = choose_event(date(2031, 6, 25), library)
    assert first.id == "06-25-syrian-defection"
    history = {date(2031, 6, 25): first.id}
    assert choose_event(date(2032, 6, 25), library, history).id == "06-25-korean-war-begins"
    # Two years back is outside a two-event cycle: the anniversary wins again.
    assert choose_event(date(2032, 6, 25), library, {date(2030, 6, 25): first.id}).id == first.id


def test_round_anniversary_rule():
    class E:
        def __init__(self, year):
            self.year = year

        def years_before(self, y):
            return y - self.year - (1 if self.year < 0 else 0)

    assert is_round_anniversary(E(1950), 2025)  # 75
    assert is_round_anniversary(E(2012), 2022)  # 10, under a century
    assert not is_round_anniversary(E(1900), 2010)  # 110: only multiples of 25 past a century
    assert is_round_anniversary(E(1900), 2025)  # 125
    assert not is_round_anniversary(E(2026), 2026)  # 0 is no anniversary
    assert is_round_anniversary(E(-44), 1957)  # 2000 years, no year 0


def test_an_edition_on_record_keeps_its_event(library, event_folder):
    day = date(2025, 6, 25)
    history = {day: "06-25-syrian-defection"}
    assert choose_event(day, library, history).id == "06-25-syrian-defection"
    write_event(event_folder, "06-25-new-one.md", event_text("A newer event", "1975-06-25"))
    assert choose_event(day, load_events(event_folder), history).id == "06-25-syrian-defection"


def test_a_recorded_event_missing_from_the_library_is_a_clear_error(library):
    with pytest.raises(EventDataError, match="was event 'gone', which is missing"):
        choose_event(date(2025, 6, 25), library, {date(2025, 6, 25): "gone"})


def test_feb_29_is_used_on_feb_28_of_common_years_unless_that_day_has_its_own(library, event_folder):
    assert choose_event(date(2028, 2, 29), library).id == "02-29-leap-day-event"
    assert choose_event(date(2027, 2, 28), library).id == "02-29-leap-day-event"
    with pytest.raises(NoEventError):
        choose_event(date(2028, 2, 28), library)  # a leap year: Feb 29 comes the next day
    write_event(event_folder, "02-28-own.md", event_text("Own Feb 28 event", "1993-02-28"))
    assert choose_event(date(2027, 2, 28), load_events(event_folder)).id == "02-28-own"


def test_no_event_is_an_error_naming_the_date_and_folder(library, event_folder):
    with pytest.raises(NoEventError) as error:
        choose_event(date(2026, 3, 3), library, folder=event_folder)
    assert "no event for March 3 (2026-03-03)" in str(error.value)
    assert str(event_folder) in str(error.value)


def test_edition_carries_the_edition_day_label(library):
    edition = select_edition(date(2027, 2, 28), library)
    assert edition.date_label == "February 28"
    assert edition.event.date_label == "February 29"


@pytest.mark.parametrize(
    ("instant", "zone", "expected"),
    [
        (datetime(2026, 6, 24, 12, 30, tzinfo=UTC), "Pacific/Auckland", date(2026, 6, 25)),  # 00:30 NZST
        (datetime(2026, 6, 24, 11, 59, tzinfo=UTC), "Pacific/Auckland", date(2026, 6, 24)),  # 23:59 NZST
        (datetime(2026, 6, 25, 6, 59, tzinfo=UTC), "America/Los_Angeles", date(2026, 6, 24)),  # 23:59 PDT
        (datetime(2026, 6, 25, 7, 0, tzinfo=UTC), "America/Los_Angeles", date(2026, 6, 25)),  # 00:00 PDT
        (datetime(2026, 1, 1, 7, 59, tzinfo=UTC), "America/Los_Angeles", date(2025, 12, 31)),  # PST, winter
    ],
)
def test_today_is_the_date_in_the_configured_zone(instant, zone, expected):
    assert today_in(ZoneInfo(zone), instant) == expected


def test_today_rejects_naive_datetimes():
    with pytest.raises(ValueError, match="aware"):
        today_in(ZoneInfo("UTC"), datetime(2026, 6, 25, 12, 0))
