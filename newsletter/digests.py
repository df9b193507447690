"""The weekly digest: one message a week, on the reader's weekday, with the past seven editions.

A digest of date D holds the editions of D-6 .. D (title, summary and a link to each
edition's page; the latest, D's own, in full). It goes at ``send_time`` in the reader's zone
on their weekday, together with that date's daily edition, and the ledger treats it like an
edition: one row per (date, reader), marked delivered only after the server accepted it.

Switching frequency neither mails a reader twice nor skips a story:

- one message per reader per local date: a date with a row for the reader (edition or
  digest) gets no second message, whatever they switched to in between;
- a digest starts after the last message the reader got (so a reader who switches to weekly
  mid-week finds in their first digest exactly the editions they did not get as dailies),
  and never before D-6;
- a reader who switches back to daily gets, on their first daily date, a digest of the
  editions since their last digest (the latest in full) instead of the bare daily edition,
  when there are any; then dailies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

from newsletter import state
from newsletter.config import Settings
from newsletter.errors import NoEventError
from newsletter.ledger import DigestLedger
from newsletter.mail.outbox import write_outbox
from newsletter.render import RenderedEdition, message_id, render_digest
from newsletter.selection import Edition
from newsletter.sending.engine import SendResult, send_edition
from newsletter.storage import Database
from newsletter.subscribers import Subscriber, Tally, iter_recipients

log = logging.getLogger(__name__)

WINDOW = 7  # editions in a digest at most: the past seven days, the digest's own date included


def is_digest_day(subscriber: Subscriber, day: date) -> bool:
    """True when a weekly reader's digest falls on this local date."""
    return subscriber.frequency == "weekly" and subscriber.weekday == state.WEEKDAYS[day.weekday()]


def first_day(day: date, last: tuple[date, str] | None) -> date:
    """The first edition a digest of ``day`` holds: the day after the reader's last message, at most WINDOW back."""
    earliest = day - timedelta(days=WINDOW - 1)
    return earliest if last is None else max(earliest, last[0] + timedelta(days=1))


def digest_readers(
    day: date, recipients: Iterable[Subscriber], ledger: DigestLedger
) -> Iterator[tuple[Subscriber, date]]:
    """Who gets a digest on ``day``, with its first edition date: weekly readers on their weekday, and
    readers back to daily whose last digest left editions out (their catch-up)."""
    recent = ledger.recent_digests(day, WINDOW)
    for subscriber in recipients:
        if is_digest_day(subscriber, day):
            yield subscriber, first_day(day, ledger.last_mailed(subscriber.key, day))
        elif subscriber.frequency == "daily" and subscriber.key in recent:
            last = ledger.last_mailed(subscriber.key, day)
            if last is not None and last[1] == "digest" and last[0] < day - timedelta(days=1):
                yield subscriber, last[0] + timedelta(days=1)


def digest_editions(day: date, since: date, edition_for: Callable[[date], Edition]) -> list[Edition]:
    """The editions of since .. day, oldest first; a past day without an event is left out (the day's own must exist)."""
    editions: list[Edition] = []
    for offset in range((day - since).days + 1):
        when = since + timedelta(days=offset)
        try:
            editions.append(edition_for(when))
        except NoEventError:
            if when == day:
                raise
            log.warning("no event for %s: the digest of %s leaves that day out", when, day)
    return editions


def digests_possible(conn: Database, day: date) -> bool:
    """Whether anyone could get a digest of ``day``: a weekly reader on the list, or a digest in the past WINDOW days."""
    return state.has_weekly_readers(conn) or bool(DigestLedger(conn).recent_digests(day, WINDOW))


def plan_digests(
    settings: Settings,
    day: date,
    conn: Database,
    tally: Tally,
    select: Callable[[Subscriber], bool] | None = None,
) -> int:
    """Add the date's digest rows to the ledger (before the daily edition's, which then skips those readers).

    Reads the list as synced (``sync_csv`` runs first), so that a list without weekly readers is not read twice.
    """
    ledger = DigestLedger(conn)
    if not digests_possible(conn, day):
        return 0  # a list of daily readers only pays nothing more for digests
    recipients: Iterable[Subscriber] = iter_recipients(settings.paths.subscribers, conn, tally, None)
    if select:
        recipients = filter(select, recipients)
    readers = (
        (s, since, message_id(settings, day, s.email, "digest")) for s, since in digest_readers(day, recipients, ledger)
    )
    return ledger.plan_digests(day, readers)


def send_digests(
    settings: Settings,
    day: date,
    conn: Database,
    render: Callable[[date], RenderedEdition],
    *,
    only_failed: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> SendResult:
    """Send every digest row of a date still due, one rendering per first-edition date."""
    result = SendResult(day)
    for since in DigestLedger(conn).variants(day, only_failed=only_failed):
        if stop is not None and stop.is_set():
            result.interrupted = True
            break
        send_edition(
            settings, render(since), DigestLedger(conn, since),
            only_failed=only_failed, stop=stop, progress=progress, result=result,
        )  # fmt: skip
    return result


def dry_run_digests(
    settings: Settings,
    day: date,
    conn: Database | None,
    render: Callable[[date], RenderedEdition],
    *,
    outbox: Path | None = None,
) -> tuple[int, frozenset[str]]:
    """Count (or write to an outbox) the digests a send of ``day`` would make, changing nothing.

    Also return their readers' addresses (lower case): a reader back to daily who gets a
    catch-up digest gets no daily edition that date.
    """
    if conn is None:
        readers = [
            (s, first_day(day, None))
            for s in iter_recipients(settings.paths.subscribers, None, Tally(), "weekly")
            if is_digest_day(s, day)
        ]
    else:
        done = DigestLedger(conn).finished(day)
        found = digest_readers(
            day, iter_recipients(settings.paths.subscribers, conn, Tally(), None), DigestLedger(conn)
        )
        readers = [(s, since) for s, since in found if s.key not in done]
    keys = frozenset(s.key for s, _ in readers)
    if outbox is None:
        return len(readers), keys
    by_variant: dict[date, list[Subscriber]] = {}
    for subscriber, since in readers:
        by_variant.setdefault(since, []).append(subscriber)
    written = sum(write_outbox(render(since), group, outbox) for since, group in sorted(by_variant.items()))
    return written, keys


def renderer(
    settings: Settings, day: date, edition_for: Callable[[date], Edition], *, now: datetime | None = None,
    allow_insecure_secret: bool = False,
) -> Callable[[date], RenderedEdition]:  # fmt: skip
    """A function from a digest's first edition date to the rendered digest of ``day``."""

    def render(since: date) -> RenderedEdition:
        editions = digest_editions(day, since, edition_for)
        return render_digest(editions, settings, now=now, allow_insecure_secret=allow_insecure_secret)

    return render
