"""The daily job: what is due when, decided from the clock and the ledger, and the daemon around it.

The ``schedule`` library is only the heartbeat. It keeps no state across restarts, does not
catch up missed runs and does not catch job exceptions, so the decision of what to send is
ours: on every beat, each reader's zone is checked against ``send_time`` and the catch-up
window, and the ledger (one row per local date and subscriber) makes sending idempotent.
A restart can therefore neither skip nor repeat a delivery. Weekly readers' zones count
too: on their weekday the same send of their local date mails them the weekly digest
(``digests``) instead of the edition.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import cast
from zoneinfo import ZoneInfo

import schedule

from newsletter import retention, state, storage
from newsletter.config import Settings
from newsletter.editions import SendResult, send_day
from newsletter.errors import NewsletterError, RelayDown
from newsletter.storage import Database
from newsletter.subscribers import Subscriber, Tally, iter_recipients

log = logging.getLogger(__name__)


def send_moment(day: date, send_time: str, zone: ZoneInfo) -> datetime:
    """The instant of send_time on a local date.

    A time that does not exist that day (skipped by a spring-forward change) moves forward
    by the gap; a time that happens twice (fall-back) means its first occurrence. Either way
    there is exactly one moment per local date.
    """
    hour, minute = map(int, send_time.split(":"))
    naive = datetime.combine(day, time(hour, minute))
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC).astimezone(zone)


@dataclass(frozen=True)
class ZoneState:
    """Where a zone stands at an instant: its local date and whether that date's edition is due."""

    zone: str
    day: date
    status: str  # "early" (before send_time), "due" (inside the window), "stale" (past the window)


def zone_state(now: datetime, zone: str, send_time: str, window: timedelta) -> ZoneState:
    """Decide, for one zone at an aware instant, whether its local edition is early, due or stale."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    info = ZoneInfo(zone)
    day = now.astimezone(info).date()
    moment = send_moment(day, send_time, info)
    if now < moment:
        return ZoneState(zone, day, "early")
    return ZoneState(zone, day, "due" if now <= moment + window else "stale")


@dataclass
class Plan:
    """What one beat found: the zones due per local date, and the dates left out as stale."""

    due: dict[date, set[str]] = field(default_factory=dict)
    stale: dict[date, set[str]] = field(default_factory=dict)
    readers: dict[str, int] = field(default_factory=dict)  # readers mailed on the zone's local date, per zone


def plan(now: datetime, subscribers: Iterable[Subscriber], settings: Settings) -> Plan:
    """Group the readers' zones by local date into due and stale, for one instant."""
    window = timedelta(hours=settings.newsletter.catchup_hours)
    states: dict[str, ZoneState] = {}
    result = Plan()
    for subscriber in subscribers:
        zone = subscriber.timezone or settings.newsletter.timezone
        if zone not in states:
            states[zone] = zone_state(now, zone, settings.newsletter.send_time, window)
        if mailed_on(subscriber, states[zone].day):
            result.readers[zone] = result.readers.get(zone, 0) + 1
    for zs in states.values():
        if zs.status != "early":
            (result.due if zs.status == "due" else result.stale).setdefault(zs.day, set()).add(zs.zone)
    return result


def mailed_on(subscriber: Subscriber, day: date) -> bool:
    """Whether a reader gets a message on a local date: every day, or a weekly reader on their weekday."""
    return subscriber.frequency != "weekly" or subscriber.weekday == state.WEEKDAYS[day.weekday()]


@dataclass
class Beat:
    """The outcome of one heartbeat."""

    sends: list[SendResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    published: bool = False
    relay_down: bool = False  # a send found the SMTP server unusable now: its rows stay pending

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def exit_code(self) -> int:
        """0 when all is done; 3 when only a later retry is needed (relay down, temporary failures); else 1."""
        if self.errors:
            return 1
        if self.relay_down or not all(r.complete for r in self.sends):
            return 3
        return 0


@dataclass
class Daily:
    """The daily job: publish and send what is due at each beat, never twice, never stale."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    _noticed: set[tuple[date, str]] = field(default_factory=set)  # stale zones this process already looked at
    _pruned_on: date | None = None  # the local date this process last applied database.keep_days

    def beat(self, now: datetime) -> Beat:
        """Do whatever is due at ``now``: publish the feeds, then send each due local edition."""
        result = Beat()
        self._publish(now, result)
        try:
            found = self._plan(now)
        except NewsletterError as exc:
            log.error("cannot read the subscribers: %s", exc)
            result.errors.append(str(exc))
            return result
        self._warn_stale(found)
        for day, zones in sorted(found.due.items()):
            if self.stop.is_set():
                break
            self._send(day, zones, now, result)
        self._prune(now, result)
        return result

    def _prune(self, now: datetime, result: Beat) -> None:
        """Apply database.keep_days once a day, after the sends (a failure is retried at the next beat)."""
        keep = self.settings.database.keep_days
        today = now.astimezone(self.settings.zone).date()
        if keep == 0 or self._pruned_on == today or self.stop.is_set():
            return
        try:
            conn = storage.connect(self.settings)
        except NewsletterError as exc:
            log.error("pruning failed, will retry at the next beat: %s", exc)
            result.errors.append(str(exc))
            return
        try:
            with conn.guarded():
                done = retention.daily_prune(conn, today, keep)
            self._pruned_on = today
            if done is not None and done.folded:
                log.info("%s", done.summary())
        except NewsletterError as exc:
            log.error("pruning failed, will retry at the next beat: %s", exc)
            result.errors.append(str(exc))
        finally:
            conn.close()

    def _plan(self, now: datetime) -> Plan:
        conn = storage.connect_readonly(self.settings)
        try:
            return plan(now, iter_recipients(self.settings.paths.subscribers, conn, Tally(), None), self.settings)
        finally:
            if conn:
                conn.close()

    def _publish(self, now: datetime, result: Beat) -> None:
        from newsletter.feeds import publish

        settings = self.settings
        today = now.astimezone(settings.zone).date()
        if now < send_moment(today, settings.newsletter.send_time, settings.zone):
            today -= timedelta(days=1)
        try:
            conn = storage.connect(settings)
        except NewsletterError as exc:
            log.error("publishing failed, will retry at the next beat: %s", exc)
            result.errors.append(str(exc))
            return
        try:
            with conn.guarded():
                published = publish(settings, today, conn, now=now)
            result.published = bool(published.written)
            if published.written:
                log.info("%s", published.summary())
        except NewsletterError as exc:
            log.error("publishing failed, will retry at the next beat: %s", exc)
            result.errors.append(str(exc))
        finally:
            conn.close()

    def _warn_stale(self, found: Plan) -> None:
        """Warn once per edition and zone (across restarts and cron runs) about readers left unmailed.

        A zone whose readers were all mailed is not stale for anyone: it gets no warning.
        """
        fresh = [(day, zone) for day, zones in sorted(found.stale.items()) for zone in sorted(zones)]
        fresh = [pair for pair in fresh if pair not in self._noticed]
        if not fresh:
            return  # a daemon looks each zone up once; the database keeps it once across processes
        conn = storage.connect(self.settings)
        try:
            for day, zone in fresh:
                self._warn_zone(conn, day, zone, found.readers.get(zone, 0))
                self._noticed.add((day, zone))
        finally:
            conn.close()

    def _warn_zone(self, conn: Database, day: date, zone: str, readers: int) -> None:
        with conn.transaction():
            if not state.first_notice(conn, "stale", day, zone):
                return
            mailed = state.mailed_in_zone(conn, day, zone, self.settings.newsletter.timezone)
        missed = readers - mailed
        if missed > 0:
            log.warning(
                "%d reader%s in %s did not get the %s edition within %g hours of send_time; "
                "it is skipped for them rather than mailed as stale news",
                missed, "" if missed == 1 else "s", zone, day, self.settings.newsletter.catchup_hours,
            )  # fmt: skip

    def _send(self, day: date, zones: set[str], now: datetime, result: Beat) -> None:
        default = self.settings.newsletter.timezone

        def chosen(subscriber: Subscriber) -> bool:
            return (subscriber.timezone or default) in zones

        try:
            sent = send_day(self.settings, day, select=chosen, stop=self.stop, now=now)
        except RelayDown as exc:
            log.error("the SMTP server cannot be used now, will retry at the next beat: %s", exc)
            result.relay_down = True
            return
        except NewsletterError as exc:
            log.error("sending the %s edition failed, will retry at the next beat: %s", day, exc)
            result.errors.append(str(exc))
            return
        result.sends.append(sent)
        if sent.sent or sent.planned:
            log.info("%s", sent.summary())


def run_daemon(
    daily: Daily,
    *,
    clock: Callable[[], datetime],
    heartbeat: float = 30.0,
    on_beat: Callable[[Beat], None] | None = None,
) -> None:
    """Beat now (catching up after a restart), then every ``heartbeat`` seconds until ``daily.stop`` is set."""
    scheduler = schedule.Scheduler()

    def job() -> None:
        try:
            beat = daily.beat(clock())
        except Exception:  # a bug must not kill the daemon: log it and beat again later
            log.exception("the heartbeat failed; retrying at the next one")
            return
        if on_beat:
            on_beat(beat)

    # schedule annotates every(interval: int), but a float works (it becomes a timedelta): a stub too narrow
    scheduler.every(cast(int, heartbeat)).seconds.do(job)
    log.info("started: send_time %s, heartbeat every %g s", daily.settings.newsletter.send_time, heartbeat)
    job()
    while not daily.stop.is_set():
        scheduler.run_pending()
        daily.stop.wait(min(1.0, heartbeat))
    log.info("stopped")
