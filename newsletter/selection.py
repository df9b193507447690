"""Choose the day's event: a pure function of the date, the library and the editions so far."""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from newsletter.errors import EventDataError, NoEventError
from newsletter.events import Event


def today_in(zone: ZoneInfo, now: datetime) -> date:
    """Return the calendar date in a time zone at an aware instant (never the machine's zone)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(zone).date()


def candidates_for(day: date, events: Sequence[Event]) -> list[Event]:
    """Return the events for a calendar day, in a stable order.

    February 29 events stand in on February 28 of a common year when that day has none.
    """
    found = [e for e in events if (e.month, e.day) == (day.month, day.day)]
    if not found and (day.month, day.day) == (2, 28) and not calendar.isleap(day.year):
        found = [e for e in events if (e.month, e.day) == (2, 29)]
    return sorted(found, key=lambda e: e.id)


def is_round_anniversary(event: Event, year: int) -> bool:
    """Return True for a multiple of 25 years, or of 10 when the event is under a century old."""
    years = event.years_before(year)
    return years > 0 and (years % 25 == 0 or (years < 100 and years % 10 == 0))


def choose_event(
    day: date,
    events: Sequence[Event],
    history: Mapping[date, str] | None = None,
    folder: Path | None = None,
) -> Event:
    """Return the event of an edition date.

    An edition already recorded in ``history`` (date -> event id) keeps its event forever.
    Otherwise, among the day's events: a round anniversary is preferred, unless that event
    was the edition of this calendar day within the last cycle (the previous n-1 years for
    n candidates), so that a reader who stays n years meets n different stories; then the
    event used least recently on this calendar day in earlier years; ties rotate with the
    year, so the same date always gives the same answer.
    """
    history = history or {}
    by_id = {e.id: e for e in events}
    if day in history:
        if history[day] not in by_id:
            raise EventDataError(
                f"the edition of {day.isoformat()} was event '{history[day]}', "
                f"which is missing from {folder or 'the event library'}; restore that file"
            )
        return by_id[history[day]]
    pool = candidates_for(day, events)
    if not pool:
        raise NoEventError(
            f"no event for {calendar.month_name[day.month]} {day.day} ({day.isoformat()}) in "
            f"{folder or 'the event library'}: add a file data/events/{day.month:02d}/{day.month:02d}-{day.day:02d}-....md"
        )
    recent = _used_within(day, len(pool) - 1, history)
    round_ones = [e for e in pool if is_round_anniversary(e, day.year) and e.id not in recent]
    pool = round_ones or pool
    shift = day.year % len(pool)
    rotated = pool[shift:] + pool[:shift]
    return min(rotated, key=lambda e: _last_used(e.id, day, history))


def _used_within(day: date, years: int, history: Mapping[date, str]) -> set[str]:
    """Return the events that were the edition of this calendar day in the previous `years` years."""
    return {
        used
        for d, used in history.items()
        if (d.month, d.day) == (day.month, day.day) and 0 < day.year - d.year <= years
    }


def _last_used(event_id: str, day: date, history: Mapping[date, str]) -> int:
    """Return the latest earlier year this event was the edition of this calendar day, or -1."""
    years = [d.year for d, used in history.items() if used == event_id and d < day]
    return max(years, default=-1)


def others_on(day: date, chosen: Event, events: Sequence[Event]) -> tuple[Event, ...]:
    """Return the other articles of the same calendar day, for "Also on this day"."""
    same = (e for e in events if (e.month, e.day) == (day.month, day.day) and e.id != chosen.id)
    return tuple(sorted(same, key=lambda e: e.id))


@dataclass(frozen=True)
class Edition:
    """What is (or would be) sent for one date: the date, its event, and the day's other articles."""

    day: date
    event: Event
    others: tuple[Event, ...] = field(default=(), compare=False)

    @property
    def date_label(self) -> str:
        """The edition's calendar day, e.g. 'June 25'."""
        return f"{calendar.month_name[self.day.month]} {self.day.day}"


def select_edition(
    day: date, events: Sequence[Event], history: Mapping[date, str] | None = None, folder: Path | None = None
) -> Edition:
    """Return the edition of a date (see choose_event), with the day's other articles."""
    event = choose_event(day, events, history, folder)
    return Edition(day, event, others_on(day, event, events))
