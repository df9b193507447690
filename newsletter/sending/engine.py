"""The sending engine: every due ledger row sent over smtp.connections parallel connections.

Every recipient ends in one of: delivered (the server said 250 to DATA), bounced (a 5xx
reply: suppressed, never retried), or failed (temporary errors outlasted smtp.max_attempts:
``send --retry-failed`` tries again). Rows stay 'pending' until one of those is recorded.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date

from newsletter import state
from newsletter.config import Settings
from newsletter.errors import DeliveryError
from newsletter.ledger import Due, SQLiteLedger
from newsletter.mail.transport import Abort, Connection, Permanent, Temporary
from newsletter.mail.wire import Wire
from newsletter.render import RenderedEdition
from newsletter.sending.throttle import Throttle

log = logging.getLogger(__name__)


@dataclass
class SendResult:
    """The outcome of one run of sending an edition."""

    day: date
    delivered: int = 0
    bounced: int = 0
    failed: int = 0  # temporary failures left after smtp.max_attempts
    skipped: int = 0  # invalid rows, duplicates and suppressed addresses
    planned: int = 0  # recipients newly added to the ledger by this run
    duration: float = 0.0
    interrupted: bool = False
    skipped_detail: str = ""

    @property
    def sent(self) -> int:
        return self.delivered + self.bounced + self.failed

    @property
    def rate(self) -> float:
        return self.sent / self.duration if self.duration > 0 else 0.0

    @property
    def complete(self) -> bool:
        """True when every recipient reached a final state (nothing left to retry)."""
        return self.failed == 0 and not self.interrupted

    def summary(self) -> str:
        detail = f" ({self.skipped_detail})" if self.skipped_detail else ""
        note = ", interrupted" if self.interrupted else ""
        return (
            f"{self.day.isoformat()}: delivered {self.delivered}, bounced {self.bounced}, failed {self.failed}, "
            f"skipped {self.skipped}{detail}, {self.duration:.1f} s, {self.rate:.0f} messages/s{note}"
        )


@dataclass
class _Shared:
    """State shared by the sending threads of one run."""

    settings: Settings
    rendered: RenderedEdition
    ledger: SQLiteLedger
    throttle: Throttle
    stop: threading.Event
    progress: Callable[[int], None] | None
    result: SendResult
    wire: Wire
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort: str | None = None

    def count(self, outcome: str) -> None:
        with self.lock:
            setattr(self.result, outcome, getattr(self.result, outcome) + 1)
        if self.progress:
            self.progress(1)


class _Pending:
    """A sending thread's latest acceptance, recorded in the ledger while the next envelope is on the wire.

    The thread commits it as soon as the next message's MAIL, RCPT and DATA are sent, so the
    commit overlaps the server's round trip, and in any case before that message's content
    goes out or the thread waits for anything: at most one message per connection is ever
    sent but not yet recorded.
    """

    def __init__(self, ledger: SQLiteLedger, day: date) -> None:
        self.ledger, self.day = ledger, day
        self.mark: tuple[str, str] | None = None

    def delivered(self, email: str, reply: str) -> None:
        self.flush()
        self.mark = (email, reply)

    def flush(self) -> None:
        """Commit the acceptance held, if any; raise Abort if the ledger cannot record it."""
        if self.mark is None:
            return
        (email, reply), self.mark = self.mark, None
        try:
            self.ledger.mark_delivered(self.day, email, reply)
        except sqlite3.Error as exc:
            raise Abort(f"cannot record deliveries in the ledger ({exc}); the unrecorded one stays pending") from None


def send_edition(
    settings: Settings,
    rendered: RenderedEdition,
    ledger: SQLiteLedger,
    *,
    only_failed: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    result: SendResult | None = None,
) -> SendResult:
    """Send the edition to every due ledger row over smtp.connections parallel connections."""
    day = rendered.edition.day
    result = result or SendResult(day)
    shared = _Shared(
        settings,
        rendered,
        ledger,
        Throttle(settings.smtp.rate_limit, settings.smtp.max_per_hour),
        stop or threading.Event(),
        progress,
        result,
        Wire(rendered),
    )
    work: queue.Queue[list[Due] | None] = queue.Queue(maxsize=settings.smtp.connections * 4)
    workers = [
        threading.Thread(target=_worker, args=(shared, work), name=f"smtp-{i}", daemon=True)
        for i in range(settings.smtp.connections)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    try:
        _feed(ledger.due(day, only_failed=only_failed), work, shared)
    finally:
        for _ in workers:
            work.put(None)
        for worker in workers:
            worker.join()
        result.duration = time.perf_counter() - started
    result.interrupted = shared.stop.is_set() and shared.abort is None
    if shared.abort:
        raise DeliveryError(
            f"{shared.abort}; {result.delivered} delivered before it stopped, the rest stay pending (re-run send)"
        )
    return result


BATCH = 16  # recipients handed to a worker at once: fewer queue hand-offs between threads


def _feed(due: Iterator[Due], work: queue.Queue[list[Due] | None], shared: _Shared) -> None:
    batch: list[Due] = []
    for item in due:
        batch.append(item)
        if len(batch) == BATCH and not _put(work, batch, shared):
            return
        batch = [] if len(batch) == BATCH else batch
    if batch:
        _put(work, batch, shared)


def _put(work: queue.Queue[list[Due] | None], batch: list[Due], shared: _Shared) -> bool:
    """Hand a batch to the workers; False if asked to stop while waiting for room."""
    while not shared.stop.is_set():
        try:
            work.put(batch, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _worker(shared: _Shared, work: queue.Queue[list[Due] | None]) -> None:
    pending = _Pending(shared.ledger, shared.rendered.edition.day)
    connection = Connection(shared.settings, before_data=pending.flush)
    try:
        while _flushed(shared, pending) and (batch := work.get()) is not None:
            for item in batch:
                if shared.stop.is_set():
                    break  # what was not sent stays pending
                _deliver_one(shared, connection, pending, item)
    finally:
        _flushed(shared, pending)
        connection.close()


def _flushed(shared: _Shared, pending: _Pending) -> bool:
    """Record the acceptance held before waiting for anything; False (and stop the run) if that fails."""
    try:
        pending.flush()
    except Abort as exc:
        shared.abort = shared.abort or str(exc)
        shared.stop.set()
        return False
    return True


def _deliver_one(shared: _Shared, connection: Connection, pending: _Pending, item: Due) -> None:
    """Send one message with retries; record the outcome in the ledger."""
    settings, day = shared.settings, shared.rendered.edition.day
    subscriber = item.subscriber
    data = shared.wire.data_for(subscriber, item.message_id)
    delay = settings.smtp.retry_delay
    for attempt in range(1, settings.smtp.max_attempts + 1):
        if shared.throttle.limited and not _flushed(shared, pending):
            return
        if not shared.throttle.wait(shared.stop):
            return
        try:
            reply = connection.send(settings.sender.address, subscriber.email, data)
        except Permanent as exc:
            shared.ledger.mark_bounced(day, subscriber.email, str(exc))
            state.suppress(shared.ledger.conn, subscriber.email, "bounced", str(exc))
            log.info("bounced %s: %s", subscriber.email, exc)
            shared.count("bounced")
            return
        except Abort as exc:
            shared.abort = str(exc)
            shared.stop.set()
            return
        except Temporary as exc:
            if attempt == settings.smtp.max_attempts:
                shared.ledger.mark_failed(day, subscriber.email, str(exc))
                log.warning("failed %s after %d attempts: %s", subscriber.email, attempt, exc)
                shared.count("failed")
                return
            shared.ledger.mark_retry(day, subscriber.email, str(exc))
            log.debug("retrying %s in %.1f s: %s", subscriber.email, delay, exc)
            if not _flushed(shared, pending) or shared.stop.wait(delay):
                return
            delay *= 2
            continue
        pending.delivered(subscriber.email, reply)
        shared.count("delivered")
        return
