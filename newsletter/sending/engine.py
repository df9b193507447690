"""The sending engine: every due ledger row sent over smtp.connections parallel connections.

Every recipient ends in one of: delivered (the server said 250 to DATA), bounced (a 5xx
reply: suppressed, never retried), skipped (an address this server cannot take, with the
reason), or failed (temporary errors outlasted smtp.max_attempts or smtp.retry_window: the
daily job and ``send --retry-failed`` try again). Rows stay 'pending' until one of those is
recorded.

No fault blocks a connection: a 4xx keeps the session (RSET) and puts the recipient back in
the queue with a not-before time, so the connection goes straight on with the next one; a
dropped connection reopens with its own backoff. When connections cannot be opened for
``RELAY_PATIENCE`` seconds in a row, the run stops (``RelayDown``) and leaves every row not
sent pending. An unexpected error in a sending thread stops the run too: it never hangs and
never ends as if complete.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

from newsletter.config import Settings
from newsletter.errors import DeliveryError, RelayDown
from newsletter.ledger import Due, Ledger
from newsletter.mail.transport import Abort, CannotConnect, Connection, Dropped, Permanent, Temporary, Unsendable
from newsletter.mail.wire import Wire
from newsletter.render import RenderedEdition
from newsletter.sending import journal
from newsletter.sending.journal import Journal
from newsletter.sending.throttle import Throttle, account

log = logging.getLogger(__name__)

RELAY_FAILURES = 3  # failed attempts to open a connection, in a row over all connections, before giving up ...
RELAY_PATIENCE = 10.0  # ... once they span this many seconds (or smtp.timeout if shorter)
RECONNECT_CAP = 8.0  # longest wait of one connection before it tries to reopen
PLANNING_POLL = 0.02  # seconds between claims while the edition is still being planned, and the first pause after
# another sender was found holding the rest (its last rows are usually done within moments): doubling up to the poll
CLAIM_PER_CONNECTION = 16  # rows a sender leases at a time, per connection: what a crash leaves waiting for the lease


@dataclass
class SendResult:
    """The outcome of one run of sending an edition."""

    day: date
    delivered: int = 0
    bounced: int = 0
    failed: int = 0  # temporary failures left after smtp.max_attempts or smtp.retry_window
    skipped: int = 0  # invalid rows, duplicates, suppressed addresses, and addresses the server cannot take
    planned: int = 0  # recipients newly added to the ledger by this run
    duration: float = 0.0
    interrupted: bool = False
    skipped_detail: str = ""
    unsendable: int = 0  # of skipped: addresses the server cannot take (e.g. no SMTPUTF8)

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
        parts = [self.skipped_detail] if self.skipped_detail else []
        if self.unsendable:
            parts.append(f"{self.unsendable} not sendable: see 'newsletter status'")
        detail = f" ({', '.join(parts)})" if parts else ""
        note = ", interrupted" if self.interrupted else ""
        return (
            f"{self.day.isoformat()}: delivered {self.delivered}, bounced {self.bounced}, failed {self.failed}, "
            f"skipped {self.skipped}{detail}, {self.duration:.1f} s, {self.rate:.0f} messages/s{note}"
        )


class Done(Protocol):
    """Whether something is over (a threading.Event, or a planning process's future)."""

    def is_set(self) -> bool: ...


@dataclass
class Work:
    """One recipient in the queue, with what this run has tried so far."""

    due: Due
    attempts: int = 0
    first_failure: float = 0.0
    taken: bool = False  # handed to a connection and not yet done or put back


class Claims:
    """This sender's share of an edition: batches of due rows leased from the ledger, renewed while held.

    The first pass walks the edition's rows in key order, taking those no other sender holds
    (while the edition is still being planned, a second walk takes the rows planned behind it);
    then it takes the rows whose lease ran out (a sender that died, or stopped and gave them
    back). While another sender still holds rows of the edition, ``next_batch`` returns an
    empty batch (ask again later): a dead sender's rows are taken over once its lease ends.
    None means the edition has nothing left to send by anyone.
    """

    def __init__(
        self, ledger: Ledger, day: date, *, lease: float, batch: int, only_failed: bool = False,
        clock: Callable[[], float] = time.time, planning: Done | None = None,
    ) -> None:  # fmt: skip
        self.ledger, self.day, self.lease, self.batch = ledger, day, lease, batch
        self.only_failed, self.clock = only_failed, clock
        self.planning = planning  # set once every row is planned; None: they all are
        self.behind_row: int | None = ledger.last_row() if planning else None  # the walk over rows planned meanwhile
        self.final: str | None = None  # after the planning: the last walk, in key order
        self.owner = owner_id()
        self.after: str | None = ""  # the first pass's position (a lower-case address); None once it is done
        self.journals = journal.folder_of(ledger.conn)  # SQLite: the senders' journals, replayed before a claim
        self.on_wait: Callable[[], None] = lambda: None  # before waiting for other senders: record what this one holds

    def next_batch(self) -> list[Due] | None:
        """Claim the next rows for this sender: a batch, [] to ask again later, or None when all is done."""
        now = self.clock()
        if self.after is not None:
            rows = self._claim(now, self.after)
            if rows:
                self.after = rows[-1].subscriber.key
                return rows
            if (behind := self._catch_up(now)) is not None:
                return behind
            self.after = None
        rows = self._claim(now, None)
        if rows:
            return rows
        holders = self.ledger.holders(self.day, self.owner, now)
        gone = [holder for holder in holders if not alive(holder)]
        for holder in gone:  # a sender of this machine that was killed: its rows need not wait for the lease
            log.info("taking over the rows of %s (that process is gone)", holder)
            self.ledger.release(self.day, holder)
        if gone:
            return self._claim(now, None)
        if holders:
            self.on_wait()  # others may be waiting for this sender's rows too: record them first
            return []
        return None

    def _catch_up(self, now: float) -> list[Due] | None:
        """Rows planned while this sender works: a batch, [] to ask again soon, or None once planning is over and all are taken.

        Planning adds rows in the file's order, anywhere in key order, so they are walked in the
        order they were added (pending rows only: those this run gave up on stay failed). When
        the planning ends, one last walk in key order takes any row another sender's planning
        added before this one's newest.
        """
        if self.behind_row is not None:
            rows = self._claim(now, None, only_pending=True, after_row=self.behind_row)
            if rows:
                self.behind_row = max(row.rowid for row in rows)
                return rows
            if self.planning is not None:
                if not self.planning.is_set():
                    return []
                self.planning = None  # rows may have been added since that claim: one more look
                return self._catch_up(now)
            self.behind_row, self.final = None, ""
        if self.final is not None:
            rows = self._claim(now, self.final, only_pending=True)
            if rows:
                self.final = rows[-1].subscriber.key
                return rows
            self.final = None
        return None

    def _claim(
        self, now: float, after: str | None, only_pending: bool = False, after_row: int | None = None
    ) -> list[Due]:
        if self.journals is not None:  # what a killed sender recorded reaches the ledger before its rows are taken
            try:
                journal.replay(self.journals, self.ledger)
            except OSError as exc:
                raise Abort(f"cannot read the senders' journals in {self.journals}: {exc.strerror or exc}") from None
        return self.ledger.claim(
            self.day, self.owner, now=now, until=now + self.lease, limit=self.batch, after=after,
            only_failed=self.only_failed, only_pending=only_pending, after_row=after_row,
        )  # fmt: skip

    def renew(self) -> None:
        """Extend the lease of what this sender holds (the heartbeat)."""
        self.ledger.renew(self.day, self.owner, self.clock() + self.lease)

    def release(self) -> None:
        """Give back what this sender still holds: the run stops, another sender may take it at once."""
        self.ledger.release(self.day, self.owner)


def owner_id() -> str:
    """A sender's name in the ledger's leases: this machine, this process, and a random part for the run."""
    return f"{machine()}:{os.getpid()}:{secrets.token_hex(4)}"


_RUNNING: set[str] = set()  # the owners of this process's runs still going: an earlier run's owner is gone


def machine() -> str:
    """This machine as leases name it: the host name and (on Linux) the process-id namespace, where pids mean something."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{namespace}"


def alive(owner: str) -> bool:
    """False only for a sender of this machine whose process (or, in this process, whose run) is over; one elsewhere counts as alive."""
    host, _, rest = owner.rpartition(":")[0].rpartition(":")
    if host != machine() or not rest.isdigit():
        return True
    if int(rest) == os.getpid():
        return owner in _RUNNING
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user has that id: alive
        return True
    return True


class WorkQueue:
    """The claimed rows, then retries at their not-before time, handed one at a time to whichever connection is free."""

    def __init__(
        self,
        claims: Callable[[], list[Due] | None],
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        poll: float = 1.0,
        soon: Callable[[], bool] = lambda: False,
        low: int = 0,
    ) -> None:
        self.claims, self.stop, self.clock, self.poll = claims, stop, clock, poll
        self.low = low  # ``top_up`` claims the next batch once no more rows than this are left
        self.soon = soon  # True while rows may appear any moment (planning): ask again after PLANNING_POLL
        self.rows: deque[Due] = deque()
        self.retries: list[tuple[float, int, Work]] = []
        self.order = itertools.count()
        self.in_hand = 0  # items taken and not yet done: they may come back as retries
        self.exhausted = False
        self.next_claim = 0.0  # when to ask the ledger again after it had nothing for now
        self.empty = 0  # claims in a row that found the rest held by other senders
        self.claiming = False  # a connection is claiming the next batch (without holding the lock)
        self.cond = threading.Condition()

    def take(self) -> Work | None:
        """The next recipient to send, waiting for a retry's time (or another sender) if need be; None when all is done or on stop."""
        with self.cond:
            while not self.stop.is_set():
                if self.retries and self.retries[0][0] <= self.clock():
                    return self._hand(heapq.heappop(self.retries)[2])
                if not self.rows and self._claim_due():
                    self._refill()
                    continue
                if self.rows:
                    return self._hand(Work(self.rows.popleft()))
                if self.exhausted and not self.retries and self.in_hand == 0 and not self.claiming:
                    self.cond.notify_all()
                    return None
                wait = self.retries[0][0] - self.clock() if self.retries else 0.25
                self.cond.wait(min(max(wait, 0.0), 0.25))
            return None

    def take_now(self, spare: int = 0) -> Work | None:
        """A recipient at hand (a retry that is due, or a claimed row), without waiting or claiming; else None.

        With ``spare``, a row is taken only when more than that many are at hand (the rest are
        left for the connections that are free).
        """
        with self.cond:
            if self.stop.is_set():
                return None
            if self.retries and self.retries[0][0] <= self.clock():
                return self._hand(heapq.heappop(self.retries)[2])
            if len(self.rows) > spare:
                return self._hand(Work(self.rows.popleft()))
            return None

    def top_up(self) -> None:
        """Claim the next batch now if no more than ``low`` rows are left, so the connections never wait for a claim."""
        if len(self.rows) > self.low:  # the common case, read without the lock
            return
        with self.cond:
            if len(self.rows) <= self.low and self._claim_due():
                self._refill()

    def _claim_due(self) -> bool:
        return not self.exhausted and not self.claiming and self.clock() >= self.next_claim

    def _refill(self) -> None:
        """Claim a batch (the caller holds ``cond``): the lock is let go meanwhile, so the other connections go on."""
        self.claiming = True
        self.cond.release()
        try:
            batch = self.claims()
        finally:
            self.cond.acquire()
            self.claiming = False
            self.cond.notify_all()
        if batch is None:
            self.exhausted = True
        elif batch:
            self.rows.extend(batch)
            self.empty = 0
        else:  # another sender holds the rest (its lease may run out), or rows are still being planned
            self.next_claim = self.clock() + self._pause()

    def _pause(self) -> float:
        """How long to wait before asking again after an empty claim.

        While planning: PLANNING_POLL. Else another sender holds the rest: it is usually done
        within moments, so look again soon, then less and less often up to ``poll`` (a dead
        sender of another machine keeps its rows until its lease ends).
        """
        if self.soon():
            return PLANNING_POLL
        self.empty += 1
        return min(self.poll, PLANNING_POLL * 2 ** min(self.empty - 1, 16))

    def _hand(self, work: Work) -> Work:
        self.in_hand += 1
        work.taken = True
        return work

    def done(self, work: Work) -> None:
        """The recipient reached an outcome (or stays pending because the run stops); a second call is a no-op."""
        with self.cond:
            if work.taken:
                work.taken = False
                self.in_hand -= 1
                self.cond.notify_all()

    def again(self, work: Work, at: float) -> None:
        """Put the recipient back, to be sent at or after ``at`` (monotonic seconds)."""
        with self.cond:
            if work.taken:
                work.taken = False
                self.in_hand -= 1
            heapq.heappush(self.retries, (at, next(self.order), work))
            self.cond.notify_all()

    @property
    def waiting(self) -> int:
        with self.cond:
            return len(self.retries)


class Relay:
    """Whether the server can be reached: failed openings in a row over all connections, and since when."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.patience = min(RELAY_PATIENCE, settings.smtp.timeout)
        self.clock = clock
        self.failures = 0
        self.since: float | None = None
        self.error = ""
        self.lock = threading.Lock()

    def opened(self) -> None:
        """A connection opened or a message was accepted: the server is reachable."""
        if self.failures:
            with self.lock:
                self.failures, self.since = 0, None

    def failed(self, started: float, error: str) -> bool:
        """Count a failed opening that began at ``started``; True when the run should give up."""
        with self.lock:
            self.failures += 1
            self.since = started if self.since is None else min(self.since, started)
            self.error = error
            span = self.clock() - self.since
            return self.failures >= RELAY_FAILURES and span >= self.patience

    def give_up_message(self) -> str:
        with self.lock:
            span = self.clock() - (self.since or self.clock())
            return f"{self.error} ({self.failures} attempts in {span:.0f} s)"


class Acceptances:
    """Acceptances not yet recorded, shared by the connections: one write records all that are held.

    A connection adds its acceptance and, before the next message's content goes out or it
    waits for anything, makes sure that acceptance is recorded; whichever connection records
    first takes every acceptance held (a group commit). So at most one message per
    connection is ever sent but not yet recorded. Recorded means committed to the ledger or,
    on SQLite, appended to this sender's journal, which moves into the ledger in batches
    (``journal``).
    """

    def __init__(self, ledger: Ledger, day: date, journal: Journal | None = None) -> None:
        self.ledger, self.day, self.journal = ledger, day, journal
        self.held: list[tuple[str, str]] = []
        self.added = 0
        self.committed = 0
        self.hold = threading.Lock()
        self.commit = threading.Lock()

    def add(self, email: str, reply: str) -> int:
        """Hold an acceptance; return its ticket for ``ensure``."""
        with self.hold:
            self.held.append((email, reply))
            self.added += 1
            return self.added

    def ensure(self, ticket: int) -> None:
        """Return once the acceptance of ``ticket`` is recorded; raise Abort if it cannot be."""
        if self.committed >= ticket:
            return
        with self.commit:
            if self.committed >= ticket:
                return
            self._write()

    def flush(self) -> None:
        """Record what is held and move the journal into the ledger (the rows leave this sender's leases); raise Abort if that fails."""
        with self.commit:
            self._write()
            if self.journal is not None:
                self._flush()

    def _write(self) -> None:
        """Record every acceptance held (the caller holds ``commit``): to the ledger, or appended to the journal."""
        with self.hold:
            batch, self.held, upto = self.held, [], self.added
        if self.journal is None:
            self._record(batch)
        elif batch:
            self._journal(batch)
        self.committed = upto

    def finish(self) -> None:
        """The run ends: ``flush``, then close the journal (if the flush fails, it stays for a replay)."""
        try:
            self.flush()
        finally:
            if self.journal is not None:
                self.journal.close()

    def _record(self, batch: list[tuple[str, str]]) -> None:
        try:
            self.ledger.mark_delivered_many(self.day, batch)
        except self.ledger.errors as exc:
            raise Abort(f"cannot record deliveries in the ledger: {self.ledger.error(exc)}") from None

    def _journal(self, batch: list[tuple[str, str]]) -> None:
        assert self.journal is not None
        try:
            self.journal.append(self.day, batch)
        except OSError as exc:
            raise self._journal_error(exc) from None
        if self.journal.due():
            self._flush()

    def _flush(self) -> None:
        assert self.journal is not None
        try:
            self.journal.flush(self.ledger)
        except self.ledger.errors as exc:
            raise Abort(f"cannot record deliveries in the ledger: {self.ledger.error(exc)}") from None
        except OSError as exc:
            raise self._journal_error(exc) from None

    def _journal_error(self, exc: OSError) -> Abort:
        assert self.journal is not None
        return Abort(f"cannot record deliveries in {self.journal.path}: {exc.strerror or exc}")


@dataclass
class Run:
    """State shared by the sending threads of one run."""

    settings: Settings
    rendered: RenderedEdition
    ledger: Ledger
    queue: WorkQueue
    relay: Relay
    throttle: Throttle
    accepted: Acceptances
    stop: threading.Event
    progress: Callable[[int], None] | None
    result: SendResult
    wire: Wire
    clock: Callable[[], float] = time.monotonic
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort: str | None = None
    relay_down: bool = False

    @property
    def day(self) -> date:
        return self.rendered.edition.day

    def count(self, outcome: str) -> None:
        with self.lock:
            setattr(self.result, outcome, getattr(self.result, outcome) + 1)
        if self.progress:
            self.progress(1)

    def halt(self, reason: str, *, relay: bool = False) -> None:
        """Stop the run for a reason that concerns every recipient; rows not sent stay pending."""
        with self.lock:
            if self.abort is None:
                self.abort, self.relay_down = reason, relay
        self.stop.set()

    def backoff(self, attempts: int) -> float:
        """The wait before attempt ``attempts + 1``: smtp.retry_delay doubled per attempt, with +-50% jitter."""
        return self.settings.smtp.retry_delay * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)


def send_edition(
    settings: Settings,
    rendered: RenderedEdition,
    ledger: Ledger,
    *,
    only_failed: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    result: SendResult | None = None,
    planning: Done | None = None,
) -> SendResult:
    """Send the edition to every due ledger row over smtp.connections parallel connections.

    ``planning``, when given, is set once every row is planned: until then rows may still
    appear, and the run waits for them rather than ending.

    Raise RelayDown (the server cannot be reached, authentication or TLS failed) or
    DeliveryError (the ledger cannot record, an unexpected error) when the run stops early;
    every row not sent then stays pending.
    """
    day = rendered.edition.day
    result = result or SendResult(day)
    stop = stop or threading.Event()
    lease = settings.database.lease_seconds
    claims = Claims(
        ledger, day, lease=lease, batch=CLAIM_PER_CONNECTION * settings.smtp.connections, only_failed=only_failed,
        planning=planning,
    )  # fmt: skip
    run = Run(
        settings, rendered, ledger,
        WorkQueue(
            claims.next_batch, stop, poll=min(1.0, lease / 5), soon=lambda: claims.planning is not None,
            low=claims.batch // 2,  # half a batch ahead: a claim may wait for the database's lock
        ),
        Relay(settings),
        Throttle(ledger.conn, account(settings.smtp), settings.smtp.rate_limit, settings.smtp.max_per_hour),
        Acceptances(ledger, day, Journal(claims.journals, claims.owner) if claims.journals else None),
        stop, progress, result, Wire(rendered),
    )  # fmt: skip
    workers = [
        threading.Thread(target=_worker, args=(run,), name=f"smtp-{i}", daemon=True)
        for i in range(settings.smtp.connections)
    ]
    done = threading.Event()
    claims.on_wait = run.accepted.flush
    _RUNNING.add(claims.owner)
    heartbeat = threading.Thread(target=_heartbeat, args=(claims, lease / 3, done), name="lease", daemon=True)
    started = time.perf_counter()
    heartbeat.start()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        done.set()
        heartbeat.join()
        if _finish(run):
            _release(run, claims)
        _RUNNING.discard(claims.owner)
    result.duration = time.perf_counter() - started
    result.interrupted = stop.is_set() and run.abort is None
    if run.abort:
        left = f"{result.delivered} delivered before it stopped, every other recipient stays pending"
        if run.relay_down:
            raise RelayDown(f"{run.abort}; {left}: the next run tries again")
        raise DeliveryError(f"{run.abort}; {left} (re-run send)")
    return result


def _finish(run: Run) -> bool:
    """Move every acceptance into the ledger; False (the run stops, the rows stay leased) if that fails.

    Only then may the rows still held be given back: a journal not yet moved would let
    another sender take rows it already records as delivered.
    """
    try:
        run.accepted.finish()
    except Abort as exc:
        run.halt(str(exc))
        return False
    return True


def _heartbeat(claims: Claims, every: float, done: threading.Event) -> None:
    """Renew this sender's leases every ``every`` seconds until the run is over."""
    while not done.wait(every):
        try:
            claims.renew()
        except claims.ledger.errors as exc:  # the next renewal may succeed; recording would fail and stop the run
            log.warning("cannot renew the leases of %s: %s", claims.owner, exc)


def _release(run: Run, claims: Claims) -> None:
    """Give back the rows not sent (the run stopped early); a failure only leaves them until the lease ends."""
    try:
        claims.release()
    except claims.ledger.errors as exc:
        log.debug("cannot give back the rows of %s (they return when the lease ends): %s", claims.owner, exc)


@dataclass
class Lane:
    """One connection's state: the connection, its last acceptance's ticket, and the recipient it took next."""

    connection: Connection
    ticket: int = 0
    upcoming: Work | None = None  # taken while the last message went out: its envelope may be on the wire already


def _worker(run: Run) -> None:
    """One connection's loop: take a recipient, send it, record the outcome; stop the run on any surprise."""
    lane = Lane(Connection(run.settings))
    lane.connection.before_data = lambda: run.accepted.ensure(lane.ticket)
    work: Work | None = None
    try:
        while (work := _next(run, lane)) is not None:
            _deliver(run, lane, work)
    except run.ledger.errors as exc:
        run.halt(str(run.ledger.error(exc)))
    except Abort as exc:  # recording before a wait failed
        run.halt(str(exc))
    except Exception as exc:
        log.debug("sending thread failed", exc_info=True)
        run.halt(f"unexpected error while sending ({type(exc).__name__}: {exc})")
    finally:
        for left in (work, lane.upcoming):
            if left is not None:
                run.queue.done(left)  # stays pending
        _recorded(run, lane.ticket)
        lane.connection.close()


def _next(run: Run, lane: Lane) -> Work | None:
    """The next recipient: the one taken already, or one at hand, goes at once (its envelope overlaps recording the last acceptance); else record, then wait."""
    run.queue.top_up()
    work, lane.upcoming = lane.upcoming, None
    if work is None:
        work = run.queue.take_now()
    if work is None and _recorded(run, lane.ticket):
        work = run.queue.take()
    return work


def _following(run: Run, lane: Lane) -> str | None:
    """Take this connection's next recipient now, if one is at hand, so its envelope can go out with this message."""
    if lane.upcoming is None:  # only from a queue with a row for every other connection: a short list uses them all
        lane.upcoming = run.queue.take_now(spare=run.settings.smtp.connections - 1)
    return lane.upcoming.due.subscriber.email if lane.upcoming is not None else None


def _recorded(run: Run, ticket: int) -> bool:
    """Commit this connection's last acceptance before waiting for anything; False (and stop) if that fails."""
    try:
        run.accepted.ensure(ticket)
    except Abort as exc:
        run.halt(str(exc))
        return False
    return True


def _deliver(run: Run, lane: Lane, work: Work) -> None:
    """Try one recipient once; record the outcome, or put it back in the queue with a not-before time."""
    subscriber, connection = work.due.subscriber, lane.connection
    if (run.throttle.limited and not _recorded(run, lane.ticket)) or not run.throttle.wait(run.stop):
        run.queue.done(work)  # asked to stop: stays pending
        return
    if not connection.is_open and not _recorded(run, lane.ticket):  # opening may take a while: record first
        run.queue.done(work)
        return
    if not _open(run, connection, work):
        return
    following = None if run.throttle.limited else lambda: _following(run, lane)  # limited: each waits for its slot
    try:
        data = run.wire.data_for(subscriber, work.due.message_id)
        reply = connection.send(run.settings.envelope_sender, subscriber.email, data, following)
    except ValueError as exc:  # no IDNA form for the To: header
        _unsendable(run, work, Unsendable(f"not sent: {exc}"))
    except Unsendable as exc:
        _unsendable(run, work, exc)
    except Permanent as exc:
        run.ledger.bounce(run.day, subscriber.email, str(exc))
        log.info("bounced %s: %s", subscriber.email, exc)
        run.queue.done(work)
        run.count("bounced")
    except Abort as exc:
        run.queue.done(work)
        run.halt(str(exc), relay=True)
    except Temporary as exc:
        _temporary(run, work, exc)
        if isinstance(exc, Dropped) and _recorded(run, lane.ticket):
            run.stop.wait(min(run.backoff(1), RECONNECT_CAP))  # the connection's own backoff before reopening
    else:
        lane.ticket = run.accepted.add(subscriber.email, reply)
        run.relay.opened()  # the server is there: a streak of failed openings elsewhere starts again
        run.queue.done(work)
        run.count("delivered")


def _open(run: Run, connection: Connection, work: Work) -> bool:
    """Make sure the connection is open; on failure put the recipient back untouched (for any connection) and back off.

    The run gives up only when no connection could be opened, and nothing was delivered,
    for RELAY_PATIENCE seconds: a server that admits fewer connections than smtp.connections
    slows a run down but does not stop it.
    """
    if connection.is_open:
        return True
    started = run.clock()
    try:
        connection.open()
    except CannotConnect as exc:
        connection.failures += 1
        log.debug("%s", exc)
        if run.relay.failed(started, str(exc)):
            run.queue.done(work)
            run.halt(run.relay.give_up_message(), relay=True)
            return False
        run.queue.again(work, run.clock())  # no attempt counted: the relay's fault, not the recipient's
        run.stop.wait(min(run.backoff(connection.failures), RECONNECT_CAP))
        return False
    except Abort as exc:
        run.queue.done(work)
        run.halt(str(exc), relay=True)
        return False
    connection.failures = 0
    run.relay.opened()
    return True


def _temporary(run: Run, work: Work, exc: Temporary) -> None:
    """Retry later within smtp.max_attempts and smtp.retry_window; else the row stays failed for a later run."""
    smtp, email = run.settings.smtp, work.due.subscriber.email
    now = run.clock()
    work.attempts += 1
    work.first_failure = work.first_failure or now
    at = now + run.backoff(work.attempts)
    if work.attempts >= smtp.max_attempts or at - work.first_failure > smtp.retry_window:
        run.ledger.mark_failed(run.day, email, str(exc))
        log.warning("failed %s after %d attempts: %s", email, work.attempts, exc)
        run.queue.done(work)
        run.count("failed")
        return
    run.ledger.mark_retry(run.day, email, str(exc))
    log.debug("retrying %s in %.1f s: %s", email, at - now, exc)
    run.queue.again(work, at)


def _unsendable(run: Run, work: Work, exc: Permanent) -> None:
    email = work.due.subscriber.email
    run.ledger.mark_unsendable(run.day, email, str(exc))
    log.warning("%s", exc)
    run.queue.done(work)
    with run.lock:
        run.result.unsendable += 1
    run.count("skipped")
