"""``send --processes N``: N sender processes of one edition on this machine, so that it uses all its cores.

The edition is recorded, rendered and planned once, here, while N processes (spawned at once,
each with its own database connection and SMTP connections) call ``send_day(plan=False)``
and share the edition through the ledger's leases like senders on different machines would:
they start sending the rows planned so far, and take the rest as they appear, until the
planning is over (an event the pool hands each process when it starts).

Each process waits for the parent's render of the edition (it imports meanwhile), whose
inlined HTML it then reads from the state folder's cache instead of running premailer again.

Their results add up to one summary. Errors keep their meaning: the relay down in any
process is exit status 3 (every row not sent stays pending); a process that dies leaves its
rows to the others (a gone process of this machine is taken over at once).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import date, datetime
from multiprocessing import synchronize

from newsletter import storage
from newsletter.config import Settings
from newsletter.editions import NoProgress, Planner, Progress, plan_day, send_day
from newsletter.errors import DeliveryError, NewsletterError, RelayDown
from newsletter.ledger import DatabaseLedger
from newsletter.sending.engine import SendResult

log = logging.getLogger(__name__)

OUTCOMES = ("delivered", "bounced", "failed", "skipped", "unsendable")  # a sender's skipped: not sendable


def send_with_processes(
    settings: Settings,
    day: date,
    processes: int,
    *,
    retry_failed: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> SendResult:
    """Plan the edition once while ``processes`` processes send it; return their results together."""
    progress = progress or NoProgress()
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds a database connection
    planned, rendered = context.Event(), context.Event()
    plans: list[SendResult] = []

    def planning() -> None:
        try:
            plans.append(plan_day(settings, day, retry_failed=retry_failed, now=now, rendered_hook=rendered.set))
        finally:
            rendered.set()  # whatever happened: a sender never waits for a render that will not come

    planner = Planner(planning, planned)
    with ProcessPoolExecutor(
        max_workers=processes, mp_context=context, initializer=_hand_events, initargs=(planned, rendered)
    ) as pool:
        futures = [pool.submit(_sender, settings, day, retry_failed, now, verbose()) for _ in range(processes)]
        planner.start()  # the processes start (and import) meanwhile, then send the rows planned so far
        try:
            _watch(settings, day, futures, progress, retry_failed)
        finally:
            planner.thread.join()
    planner.finish()  # raises what stopped the planning
    result = plans[0]
    shares, errors = _outcomes(futures)
    for share in shares:
        for outcome in OUTCOMES:
            setattr(result, outcome, getattr(result, outcome) + getattr(share, outcome))
        result.interrupted = result.interrupted or share.interrupted
    result.duration = time.perf_counter() - started
    if errors:
        raise next((e for e in errors if isinstance(e, RelayDown)), errors[0])
    return result


RENDER_PATIENCE = 60.0  # seconds a sender waits for the parent's render before it renders the edition itself

_EVENTS: list[synchronize.Event] = []  # in a sender process: the parent's planning and render events, handed over once by the pool


def _hand_events(planned: synchronize.Event, rendered: synchronize.Event) -> None:
    """The pool's initializer: keep the events that tell this process when the planning is over and the edition rendered."""
    _EVENTS[:] = [planned, rendered]


def verbose() -> bool:
    return logging.getLogger("newsletter").getEffectiveLevel() <= logging.DEBUG


def _sender(settings: Settings, day: date, retry_failed: bool, now: datetime | None, debug: bool) -> SendResult:
    """One sender process: help send the planned edition (its log goes to stderr like the parent's)."""
    from newsletter import logs

    logs.setup(debug)
    logging.getLogger("newsletter").setLevel(logging.DEBUG if debug else settings.newsletter.log_level.upper())
    planned, rendered = _EVENTS if _EVENTS else (None, None)
    if rendered is not None:
        rendered.wait(RENDER_PATIENCE)  # then the edition's inlined HTML is in the cache
    return send_day(settings, day, retry_failed=retry_failed, now=now, plan=False, planning=planned)


def _watch(settings: Settings, day: date, futures: list[Future], progress: Progress, retry_failed: bool) -> None:
    """Show the progress from the ledger (all processes together) until every sender is done.

    It counts every half second, or less often when counting takes long (a million rows: a
    scan of a few tenths of a second), so that the progress bar costs the database a tenth of
    its time at most.
    """
    with storage.connect(settings) as db:
        ledger = DatabaseLedger(db)
        counts = ledger.counts(day)
        before = sum(counts.values()) - _left(counts, retry_failed)  # final before this run: not its work
        shown = _shown(progress, counts, before, (0, 0), retry_failed)
        every = 0.5
        try:
            running = True
            while running:
                running = bool(wait(futures, timeout=every).not_done)
                started = time.perf_counter()
                counts = ledger.counts(day)
                every = max(0.5, 10 * (time.perf_counter() - started))  # counting a big edition reads it: rarely
                shown = _shown(progress, counts, before, shown, retry_failed)
        finally:
            progress.close()


def _shown(
    progress: Progress, counts: dict[str, int], before: int, shown: tuple[int, int], retry_failed: bool
) -> tuple[int, int]:
    """Bring the progress up to the ledger's counts; return (total, done) as shown now. The total grows while planning."""
    total, done = shown
    if sum(counts.values()) - before != total:
        total = sum(counts.values()) - before
        progress.start(total)
    if (now_done := total - _left(counts, retry_failed)) > done:
        progress.update(now_done - done)
        done = now_done
    return total, done


def _left(counts: dict[str, int], retry_failed: bool) -> int:
    return counts["failed"] if retry_failed else counts["pending"] + counts["failed"]


def _outcomes(futures: list[Future]) -> tuple[list[SendResult], list[NewsletterError]]:
    """The senders' results, and their errors (a process that died is one too)."""
    shares: list[SendResult] = []
    errors: list[NewsletterError] = []
    for future in futures:
        try:
            shares.append(future.result())
        except NewsletterError as exc:
            errors.append(exc)
        except BrokenProcessPool:
            errors.append(DeliveryError("a sender process died; the rows it held return to the pool: re-run send"))
        except Exception as exc:  # a bug in a sender: one line, the rows it held return to the pool
            errors.append(DeliveryError(f"a sender process failed ({type(exc).__name__}: {exc}); re-run send"))
    return shares, errors
