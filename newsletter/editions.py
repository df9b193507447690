"""The edition of a day, from selection to the last recipient: send, dry run, test copy.

``edition_for`` is the one place that selects a day's edition and records it, so that an
edition never changes once it was sent, published or previewed on record; every command
(send, the dry run, the test copy, preview, publish) goes through it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from newsletter import retention, state, storage
from newsletter.config import Settings
from newsletter.digests import digests_possible, dry_run_digests, plan_digests, renderer, send_digests
from newsletter.errors import DeliveryError
from newsletter.events import Event, load_day_events
from newsletter.ledger import DatabaseLedger, DigestLedger
from newsletter.mail.outbox import write_outbox
from newsletter.mail.transport import Abort, Connection, Permanent, Temporary
from newsletter.mail.wire import wire_data
from newsletter.render import RenderedEdition, message_id, render_edition
from newsletter.selection import Edition, select_edition
from newsletter.sending.engine import Done, SendResult, send_edition
from newsletter.storage import Database
from newsletter.subscribers import (
    Subscriber,
    Tally,
    check_address,
    iter_recipients,
    sync_csv,
    synced_recipients,
    with_public_ids,
)

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

log = logging.getLogger(__name__)

__all__ = ["DryRun", "Progress", "SendResult", "dry_run", "edition_for", "plan_day", "send_day", "send_test_copy"]


def edition_for(
    day: date,
    settings: Settings,
    conn: Database | None,
    *,
    record: bool = True,
    events: Sequence[Event] | None = None,
) -> Edition:
    """Select the edition of a date, honouring the editions on record; record it (unless ``record`` is False).

    ``conn`` is the state database (read-only when ``record`` is False) or None when there is
    none yet. A recorded edition keeps its event forever (see ``selection.choose_event``).
    Only the files that can hold the day's edition are read (``events.day_files``), unless the
    caller passes ``events``, the library it has loaded already (publish asks for ~30 days).
    """
    folder = settings.paths.events
    history = state.recorded_editions(conn) if conn is not None else {}
    if events is None:
        events = load_day_events(folder, day, [history[day]] if day in history else [])
    edition = select_edition(day, events, history, folder)
    if record and conn is not None:
        state.record_edition(conn, day, edition.event.id)
    return edition


class Progress(Protocol):
    """What the CLI shows while sending (its progress bar)."""

    def start(self, total: int) -> None:
        """Called with the number of messages due; again with the new number once planning has added to it."""

    def update(self, count: int) -> None:
        """Called after each recipient reaches an outcome."""

    def close(self) -> None:
        """Called when the run ends."""


class NoProgress:
    """Show nothing."""

    def start(self, total: int) -> None:
        pass

    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def send_day(
    settings: Settings,
    day: date,
    *,
    retry_failed: bool = False,
    select: Callable[[Subscriber], bool] | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
    plan: bool = True,
    planning: Done | None = None,
) -> SendResult:
    """The real send of one edition: record it, render it, plan recipients, send.

    Any number of sends of one edition may run at once (processes, machines): each plans the
    rows it finds missing and then helps, claiming rows with a lease; each returns when the
    edition has nothing left to send by anyone. ``plan=False`` only helps (another process
    plans: ``send --processes``; ``planning``, when given, is set once it is over, and until
    then the run waits for rows rather than ending).
    """
    progress = progress or NoProgress()
    conn = storage.connect(settings)
    try:
        with conn.guarded():
            rendered, result = _prepare(settings, day, conn, retry_failed=retry_failed, now=now)
            ledger = DatabaseLedger(conn)
            counts = ledger.counts(day)
            due = counts["failed"] if retry_failed else counts["pending"] + counts["failed"]
            progress.start(due)
            planner: Planner | PlanningProcess | None = None
            if plan and not retry_failed:  # sending starts while the list is planned
                planner = _planner(
                    settings, day, rendered, select, result, lambda: progress.start(due + result.planned)
                )
                planner.start()
            try:
                try:
                    result = send_edition(
                        settings,
                        rendered,
                        ledger,
                        only_failed=retry_failed,
                        stop=stop,
                        progress=progress.update,
                        result=result,
                        planning=planner.done if planner else planning,
                    )
                finally:
                    if planner:
                        planner.finish()  # raises what stopped the planning
                render = renderer(settings, day, lambda d: edition_for(d, settings, conn), now=now)
                digests = send_digests(
                    settings, day, conn, render, only_failed=retry_failed, stop=stop, progress=progress.update
                )
            finally:
                progress.close()
            result = _with_digests(result, digests)
            left = ledger.unsent(day) + DigestLedger(conn).unsent(day)
            if not (retry_failed or result.interrupted) and left:
                raise DeliveryError(
                    f"{left} recipients of {day.isoformat()} are still pending after the run; re-run send"
                )
            return result
    finally:
        conn.close()


class Settable(Done, Protocol):
    """Something that can be set once over (a threading.Event, or a multiprocessing one)."""

    def set(self) -> None: ...


class Planner:
    """Plans an edition in a thread of its own while the engine sends: ``work`` does the planning.

    The engine takes rows as they are planned (``done`` tells it when no more will come: it
    is set when ``work`` ends, however it ends), so the first messages go out at once instead
    of after the whole list has been read.
    """

    def __init__(self, work: Callable[[], None], done: Settable | None = None) -> None:
        self.work = work
        self.done: Settable = done if done is not None else threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="planner", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # handed to the sending thread by finish()
            self.error = exc
        finally:
            self.done.set()

    def finish(self) -> None:
        """Wait for the planning; raise what stopped it, if anything did."""
        self.thread.join()
        if self.error is not None:
            raise self.error


PROCESS_PLANNING_BYTES = 256 * 1024  # a list file at least this big is planned in a process of its own


def _planner(
    settings: Settings, day: date, rendered: RenderedEdition, select: Callable[[Subscriber], bool] | None,
    result: SendResult, planned: Callable[[], None],
) -> Planner | PlanningProcess:  # fmt: skip
    """A thread plans small lists (and any with a selection); a big list is planned on another core."""
    try:
        big = settings.paths.subscribers.stat().st_size >= PROCESS_PLANNING_BYTES
    except OSError:  # planning reports it in one line
        big = False
    if big and select is None:
        return PlanningProcess(settings, day, result, planned)

    def plan() -> None:  # on its own database connection
        with storage.connect(settings) as conn, conn.guarded():
            tally = _plan(settings, day, conn, rendered.message_id_for, select, result)
        _note_skipped(result, tally)
        planned()

    return Planner(plan)


class PlanningProcess:
    """Plans an edition in a process of its own (spawned: it costs a few tenths of a second, so only for big lists).

    The sending process then spends its core on sending while the other core reads the list.
    """

    def __init__(self, settings: Settings, day: date, result: SendResult, planned: Callable[[], None]) -> None:
        self.settings, self.day, self.result, self.planned = settings, day, result, planned
        self.pool: ProcessPoolExecutor | None = None
        self.future: Future[tuple[int, Tally]] | None = None
        self.done = self  # what the engine asks ``is_set()`` of, as of a planner thread's Event

    def is_set(self) -> bool:
        return self.future is not None and self.future.done()

    def start(self) -> None:
        import multiprocessing  # here: only a big list's send needs them
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.future = self.pool.submit(plan_list, self.settings, self.day)
        self.future.add_done_callback(lambda future: self.planned() if not future.exception() else None)

    def finish(self) -> None:
        """Wait for the planning; raise what stopped it, if anything did."""
        from concurrent.futures.process import BrokenProcessPool

        assert self.pool is not None and self.future is not None
        try:
            planned, tally = self.future.result()
        except BrokenProcessPool:
            raise DeliveryError(
                f"the planning process died; re-run send (every row not sent stays pending){_unguarded_main()}"
            ) from None
        finally:
            self.pool.shutdown()
        self.result.planned = planned
        _note_skipped(self.result, tally)


def _unguarded_main() -> str:
    """A hint when this process runs a program of its own: a spawned process imports it again, and one that
    calls send_day at import (no ``if __name__ == "__main__":``) makes the planning process fail at its start."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or Path(path).name in ("newsletter", "__main__.py"):  # the newsletter command
        return ""
    return (
        f"; if {Path(path).name} calls send_day when imported, put that code under "
        "'if __name__ == \"__main__\":' (the planning process imports it again)"
    )


def plan_list(settings: Settings, day: date) -> tuple[int, Tally]:
    """In the planning process: sync the list and plan the date's rows; return how many were new and what was skipped."""
    result = SendResult(day)
    with storage.connect(settings) as conn, conn.guarded():
        tally = _plan(settings, day, conn, lambda s: message_id(settings, day, s.email), None, result)
    return result.planned, tally


def plan_day(
    settings: Settings,
    day: date,
    *,
    retry_failed: bool = False,
    now: datetime | None = None,
    rendered_hook: Callable[[], None] = lambda: None,
) -> SendResult:
    """Record, render and plan an edition without sending it (``send --processes`` plans once, then its senders help).

    ``rendered_hook`` is called once the edition is rendered (its inlined HTML in the state
    folder's cache), before the planning.
    """
    conn = storage.connect(settings)
    try:
        with conn.guarded():
            rendered, result = _prepare(settings, day, conn, retry_failed=retry_failed, now=now)
            rendered_hook()
            if not retry_failed:
                _note_skipped(result, _plan(settings, day, conn, rendered.message_id_for, None, result))
            return result
    finally:
        conn.close()


def _prepare(
    settings: Settings, day: date, conn: Database, *, retry_failed: bool, now: datetime | None
) -> tuple[RenderedEdition, SendResult]:
    """Refuse a folded date (or a retry of a date never sent), then record and render its edition."""
    retention.refuse_folded(conn, day)
    if retry_failed and day not in state.recorded_editions(conn):
        raise DeliveryError(f"no edition of {day.isoformat()} has been sent yet; nothing to retry")
    return render_edition(edition_for(day, settings, conn), settings, now=now), SendResult(day)


def _plan(
    settings: Settings,
    day: date,
    conn: Database,
    message_id_of: Callable[[Subscriber], str],
    select: Callable[[Subscriber], bool] | None,
    result: SendResult,
) -> Tally:
    """Sync the list, then add the date's digest rows and edition rows not yet in the ledger; return what was skipped.

    Digest rows go first (their readers get no daily edition that date), so the list is synced
    before either is planned. A list that had no weekly reader and no recent digest has nobody
    whose digest could take the place of a daily edition: there the file is read once, synced
    and planned chunk by chunk (``synced_recipients``), and the digests of any weekly readers
    it brings are planned after.
    """
    csv, tally = settings.paths.subscribers, Tally()
    ledger = DatabaseLedger(conn)

    def only(recipients: Iterable[Subscriber]) -> Iterable[Subscriber]:
        return filter(select, recipients) if select else recipients

    if digests_possible(conn, day):
        sync_csv(csv, conn, Tally())  # its bad rows are reported just below
        plan_digests(settings, day, conn, Tally(), select)
        result.planned = ledger.plan(day, only(iter_recipients(csv, conn, tally)), message_id_of)
    else:
        result.planned = ledger.plan(day, only(synced_recipients(csv, conn, tally)), message_id_of)
        plan_digests(settings, day, conn, Tally(), select)  # the weekly readers the file just brought, if any
    return tally


def _with_digests(result: SendResult, digests: SendResult) -> SendResult:
    """The date's outcome: its edition's and its weekly digests' together."""
    if digests.sent:
        log.info("%s weekly digests: %s", digests.day, digests.summary())
    for outcome in ("delivered", "bounced", "failed", "duration"):
        setattr(result, outcome, getattr(result, outcome) + getattr(digests, outcome))
    result.interrupted = result.interrupted or digests.interrupted
    return result


def _note_skipped(result: SendResult, tally: Tally) -> None:
    for problem in tally.problems:
        log.warning("skipped %s", problem)
    result.skipped = tally.invalid + tally.duplicates + tally.suppressed
    result.skipped_detail = f"{tally.invalid} invalid, {tally.duplicates} duplicate, {tally.suppressed} suppressed"


@dataclass
class DryRun:
    """What a send would do, computed without a network connection or a change of state."""

    edition: Edition
    rendered: RenderedEdition
    recipients: int
    tally: Tally
    already: int  # recipients with a final outcome in the ledger already
    digests: int = 0  # weekly readers whose digest falls on this date (written to the outbox too)


def dry_run(settings: Settings, day: date, *, outbox: Path | None = None) -> DryRun:
    """Select, render and count (or write to an outbox) without touching the network or the state."""
    conn = storage.connect_readonly(settings)
    try:
        if conn:
            retention.refuse_folded(conn, day)
        edition = edition_for(day, settings, conn, record=False)
        rendered = render_edition(edition, settings, allow_insecure_secret=True)
        render = renderer(
            settings, day, lambda d: edition_for(d, settings, conn, record=False), allow_insecure_secret=True
        )
        digests, digest_keys = dry_run_digests(settings, day, conn, render, outbox=outbox)
        tally = Tally()
        recipients = iter_recipients(settings.paths.subscribers, conn, tally)
        done = DatabaseLedger(conn).finished(day) if conn else frozenset()
        pending = (s for s in recipients if s.key not in done and s.key not in digest_keys)
        count = write_outbox(rendered, with_public_ids(pending, conn), outbox) if outbox else sum(1 for _ in pending)
        return DryRun(edition, rendered, count, tally, len(done), digests)
    finally:
        if conn:
            conn.close()


def send_test_copy(settings: Settings, day: date, address: str) -> str:
    """Send a test copy of a date's edition to one address, without touching the edition's rows."""
    try:
        address = check_address(address)
    except ValueError as exc:
        raise DeliveryError(f"--to {address!r} is not a valid email address: {exc}") from None
    conn = storage.connect(settings)
    try:
        edition = edition_for(day, settings, conn, record=False)
        return send_test(settings, render_edition(edition, settings), address, DatabaseLedger(conn))
    finally:
        conn.close()


def send_test(settings: Settings, rendered: RenderedEdition, address: str, ledger: DatabaseLedger) -> str:
    """Send one test copy to an address, recorded apart from the edition; return the server's reply."""
    row = state.find_subscriber(ledger.conn, address)  # a reader's own copy carries their working unsubscribe link
    subscriber = Subscriber(address, "", public_id=row["public_id"] if row else "")
    message_id = rendered.message_id_for(subscriber)
    connection = Connection(settings)
    try:
        reply = connection.send(settings.envelope_sender, address, wire_data(rendered.message_for(subscriber)))
    except (Temporary, Permanent, Abort) as exc:
        ledger.record_test_send(rendered.edition.day, address, "failed", str(exc), message_id)
        raise DeliveryError(f"test copy to {address} failed: {exc}") from None
    finally:
        connection.close()
    ledger.record_test_send(rendered.edition.day, address, "delivered", reply, message_id)
    return reply
