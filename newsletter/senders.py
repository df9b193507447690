"""``send --processes N``: N sender processes of one edition on this machine, so that it uses all its cores.

The edition is recorded, rendered and planned once, here; then N processes (spawned, each
with its own database connection and SMTP connections) call ``send_day(plan=False)`` and
share the edition through the ledger's leases like senders on different machines would.
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

from newsletter import storage
from newsletter.config import Settings
from newsletter.editions import NoProgress, Progress, plan_day, send_day
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
    """Plan the edition once, then send it from ``processes`` processes; return their results together."""
    progress = progress or NoProgress()
    started = time.perf_counter()
    result = plan_day(settings, day, retry_failed=retry_failed, now=now)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds a database connection
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(_sender, settings, day, retry_failed, now, verbose()) for _ in range(processes)]
        _watch(settings, day, futures, progress, retry_failed)
    shares, errors = _outcomes(futures)
    for share in shares:
        for outcome in OUTCOMES:
            setattr(result, outcome, getattr(result, outcome) + getattr(share, outcome))
        result.interrupted = result.interrupted or share.interrupted
    result.duration = time.perf_counter() - started
    if errors:
        raise next((e for e in errors if isinstance(e, RelayDown)), errors[0])
    return result


def verbose() -> bool:
    return logging.getLogger("newsletter").getEffectiveLevel() <= logging.DEBUG


def _sender(settings: Settings, day: date, retry_failed: bool, now: datetime | None, debug: bool) -> SendResult:
    """One sender process: help send the planned edition (its log goes to stderr like the parent's)."""
    from newsletter import logs

    logs.setup(debug)
    logging.getLogger("newsletter").setLevel(logging.DEBUG if debug else settings.newsletter.log_level.upper())
    return send_day(settings, day, retry_failed=retry_failed, now=now, plan=False)


def _watch(settings: Settings, day: date, futures: list[Future], progress: Progress, retry_failed: bool) -> None:
    """Show the progress from the ledger (all processes together) until every sender is done.

    It counts every half second, or less often when counting takes long (a million rows: a
    scan of a few tenths of a second), so that the progress bar costs the database a tenth of
    its time at most.
    """
    with storage.connect(settings) as db:
        ledger = DatabaseLedger(db)
        left = _left(ledger, day, retry_failed)
        progress.start(left)
        every = 0.5
        try:
            running = True
            while running:
                running = bool(wait(futures, timeout=every).not_done)
                started = time.perf_counter()
                now_left = _left(ledger, day, retry_failed)
                every = max(0.5, 10 * (time.perf_counter() - started))  # counting a big edition reads it: rarely
                progress.update(max(0, left - now_left))
                left = min(left, now_left)
        finally:
            progress.close()


def _left(ledger: DatabaseLedger, day: date, retry_failed: bool) -> int:
    counts = ledger.counts(day)
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
