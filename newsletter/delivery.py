"""Delivery over SMTP: parallel reused connections, rate limits, retries, and the ledger.

Every recipient ends in one of: delivered (the server said 250 to DATA), bounced (a 5xx
reply: suppressed, never retried), or failed (temporary errors outlasted smtp.max_attempts:
``send --retry-failed`` tries again). Rows stay 'pending' until one of those is recorded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import re
import smtplib
import sqlite3
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from newsletter import state
from newsletter.config import Settings
from newsletter.errors import DeliveryError
from newsletter.events import load_events
from newsletter.ledger import Due, SQLiteLedger
from newsletter.render import RenderedEdition, join_segments, render_edition
from newsletter.selection import Edition, select_edition
from newsletter.subscribers import Subscriber, Tally, check_address, iter_recipients

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


class Abort(Exception):
    """A problem that stops the whole run (authentication, connection impossible)."""


class Temporary(Exception):
    """A failure worth retrying: 4xx replies, dropped connections, timeouts."""


class Permanent(Exception):
    """A 5xx reply for this recipient: bounce, never retry."""


def open_smtp(settings: Settings) -> smtplib.SMTP:
    """Connect (and STARTTLS / TLS, and AUTH) as the [smtp] settings say."""
    smtp = settings.smtp
    context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
    try:
        if smtp.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            server = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
            server.ehlo()
            if smtp.security == "starttls":
                server.starttls(context=context)
                server.ehlo()
        if smtp.username:
            if not settings.smtp_password:
                raise Abort("smtp.username is set but NEWSLETTER_SMTP_PASSWORD is not")
            server.login(smtp.username, settings.smtp_password)
    except smtplib.SMTPAuthenticationError as exc:
        raise Abort(
            f"SMTP authentication failed for {smtp.username!r}: {exc.smtp_code} {_text(exc.smtp_error)}"
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise Abort(f"the SMTP server does not support what [smtp] asks for: {exc}") from None
    except ssl.SSLError as exc:
        raise Abort(
            f"TLS with {smtp.host}:{smtp.port} failed: {exc.reason or exc} (check smtp.security and smtp.ca_file)"
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise Temporary(f"cannot connect to {smtp.host}:{smtp.port}: {exc}") from None
    return server


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class Throttle:
    """Space sends to smtp.rate_limit per second and at most smtp.max_per_hour per rolling hour."""

    def __init__(self, per_second: float, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.per_hour = per_hour
        self.clock = clock
        self._next = 0.0
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()

    @property
    def limited(self) -> bool:
        return bool(self.interval or self.per_hour)

    def wait(self, stop: threading.Event) -> bool:
        """Block until the next send is allowed; return False if asked to stop meanwhile."""
        if not self.limited:
            return not stop.is_set()
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            if self.per_hour:
                while self._recent and self._recent[0] <= now - 3600:
                    self._recent.popleft()
                if len(self._recent) >= self.per_hour:
                    slot = max(slot, self._recent[0] + 3600)
                self._recent.append(slot)
            self._next = slot + self.interval
        delay = slot - self.clock()
        return not stop.wait(delay) if delay > 0 else not stop.is_set()


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


class Connection:
    """One SMTP connection, opened lazily, reused for many messages, reopened after a drop."""

    def __init__(self, settings: Settings, before_data: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.before_data = before_data
        self.server: smtplib.SMTP | None = None

    def send(self, sender: str, recipient: str, wire: bytes) -> str:
        """Send one message, given as ``wire_data`` makes it."""
        if self.server is None:
            self.server = open_smtp(self.settings)
        try:
            return _transaction(self.server, sender, recipient, wire, self.before_data)
        except Temporary:
            self.close()
            raise

    def close(self) -> None:
        if self.server is not None:
            try:
                self.server.quit()
            except (OSError, smtplib.SMTPException):
                self.server.close()
            self.server = None


def _transaction(
    server: smtplib.SMTP, sender: str, recipient: str, wire: bytes, before_data: Callable[[], None] | None = None
) -> str:
    """MAIL, RCPT, DATA for one recipient; return the final reply or raise Temporary / Permanent / Abort.

    When the server offers PIPELINING (RFC 2920) the three commands go out in one write, so a
    message costs two round trips instead of four. ``wire`` is the message already dot-stuffed
    and terminated (``wire_data``, ``Wire``): smtplib's per-message regex is not run.
    ``before_data`` runs before the content is sent, while the server answers the envelope
    (it records the previous acceptance: ``_Pending``).
    """
    options = " BODY=8BITMIME" if server.has_extn("8bitmime") else ""
    # both addresses were validated (config, CSV, web form): plain ASCII, no quoting needed
    commands = (f"MAIL FROM:<{sender}>{options}", f"RCPT TO:<{recipient}>", "DATA")
    try:
        if server.has_extn("pipelining"):
            server.send("".join(f"{command}\r\n" for command in commands))
            _before_data(server, before_data)  # runs while the server answers
            replies = [server.getreply() for _ in commands]
        else:
            _before_data(server, before_data)
            replies = []
            for command in commands:
                server.putcmd(command)
                replies.append(server.getreply())
                if replies[-1][0] not in (250, 251):
                    break
        _check_envelope(server, sender, replies)
        server.send(wire)
        code, reply = server.getreply()
        if code != 250:
            _reset(server)
            raise _refused(code, reply)
    except smtplib.SMTPResponseException as exc:
        raise _refused(exc.smtp_code, exc.smtp_error) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise Temporary(f"connection lost: {exc or type(exc).__name__}") from None
    return f"{code} {_text(reply)}"


def _before_data(server: smtplib.SMTP, before_data: Callable[[], None] | None) -> None:
    if before_data is None:
        return
    try:
        before_data()
    except Abort:
        server.close()  # mid-transaction: drop the session so the server discards the message
        raise


def _check_envelope(server: smtplib.SMTP, sender: str, replies: list[tuple[int, bytes]]) -> None:
    """Raise for the first refused step of MAIL, RCPT, DATA; return when DATA said 354."""
    if len(replies) == 3 and replies[2][0] == 354 and all(code in (250, 251) for code, _ in replies[:2]):
        return
    if len(replies) == 3 and replies[2][0] == 354:
        # a pipelined DATA the server accepted although MAIL or RCPT failed: end it empty
        server.send(b".\r\n")
        server.getreply()
    _reset(server)
    (mail_code, mail_reply), *rest = replies
    if mail_code != 250:
        if mail_code >= 500:
            raise Abort(
                f"the server refused the sender {sender}: {mail_code} {_text(mail_reply)} (check sender.address)"
            )
        raise Temporary(f"{mail_code} {_text(mail_reply)}")
    code, reply = rest[0] if rest[0][0] not in (250, 251) else rest[1]
    raise _refused(code, reply)


def _crlf_only(data: bytes) -> bool:
    """True when every line break is CRLF: no bare CR and no bare LF."""
    lines = data.count(b"\r\n")
    return data.count(b"\n") == lines and data.count(b"\r") == lines


def wire_data(message: bytes) -> bytes:
    """The message as it goes after DATA: CRLF lines, leading dots doubled (RFC 5321 4.5.2), ending with CRLF.CRLF."""
    if not _crlf_only(message):
        message = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class Wire:
    """An edition's messages as they go after DATA, built per subscriber from pre-stuffed segments.

    Dot-stuffing and the CRLF check run once per edition on the segments. That is exact when
    no placeholder starts a line and no segment after the first starts with a dot (values are
    single lines and never start or end a line there); otherwise, and when messages are DKIM
    signed (the signature covers the unstuffed bytes), each message goes through ``wire_data``.
    """

    def __init__(self, rendered: RenderedEdition) -> None:
        self.rendered = rendered
        segments = rendered.segments
        safe = (
            rendered.sign is None
            and not segments[0].startswith(b".")
            and all(not s.endswith(b"\n") for s in segments[:-1])
            and all(not s.startswith(b".") for s in segments[1:])
            and all(_crlf_only(s) for s in segments)
            and segments[-1].endswith(b"\r\n")
        )
        self.segments: tuple[bytes, ...] | None = None
        if safe:
            stuffed = [s.replace(b"\r\n.", b"\r\n..") for s in segments]
            stuffed[-1] += b".\r\n"
            self.segments = tuple(stuffed)

    def data_for(self, subscriber: Subscriber, message_id: str = "") -> bytes:
        """The message for one subscriber, dot-stuffed and ended with CRLF.CRLF."""
        if self.segments is None:
            return wire_data(self.rendered.message_for(subscriber, message_id))
        return join_segments(self.segments, self.rendered.slots, self.rendered.values_for(subscriber, message_id))


def _refused(code: int, reply: bytes | str) -> Exception:
    """A refusal of one message: permanent for 5xx, temporary otherwise."""
    return (Permanent if code >= 500 else Temporary)(f"{code} {_text(reply)}")


def _reset(server: smtplib.SMTP) -> None:
    with suppress(OSError, smtplib.SMTPException):
        server.rset()


@contextmanager
def edition_lock(state_dir: Path, day: date) -> Iterator[None]:
    """Hold the lock of an edition: a second send of the same date exits with a clear message."""
    folder = state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"send-{day.isoformat()}.lock"
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DeliveryError(
                f"another send of the {day.isoformat()} edition is running (pid {holder}); wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def send_test(settings: Settings, rendered: RenderedEdition, address: str, ledger: SQLiteLedger) -> str:
    """Send one test copy to an address, recorded apart from the edition; return the server's reply."""
    subscriber = Subscriber(address, "")
    message_id = rendered.message_id_for(subscriber)
    connection = Connection(settings)
    try:
        reply = connection.send(settings.sender.address, address, wire_data(rendered.message_for(subscriber)))
    except (Temporary, Permanent, Abort) as exc:
        ledger.record_test_send(rendered.edition.day, address, "failed", str(exc), message_id)
        raise DeliveryError(f"test copy to {address} failed: {exc}") from None
    finally:
        connection.close()
    ledger.record_test_send(rendered.edition.day, address, "delivered", reply, message_id)
    return reply


def write_outbox(rendered: RenderedEdition, subscribers: Iterable[Subscriber], folder: Path) -> int:
    """Write each recipient's message as an .eml file instead of sending; return how many."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for subscriber in subscribers:
        name = "".join(ch if ch.isalnum() or ch in "@._-+" else "_" for ch in subscriber.key)
        path = folder / f"{rendered.edition.day.isoformat()}_{name}.eml"
        temporary = path.with_suffix(".eml.tmp")
        temporary.write_bytes(rendered.message_for(subscriber))
        os.replace(temporary, path)
        count += 1
    return count


class Progress:
    """What the CLI shows while sending; the default shows nothing."""

    def start(self, total: int) -> None:
        """Called once with the number of messages due."""

    def update(self, count: int) -> None:
        """Called after each recipient reaches an outcome."""

    def close(self) -> None:
        """Called when the run ends."""


def record_edition(settings: Settings, day: date, conn: sqlite3.Connection, *, existing_only: bool = False) -> Edition:
    """Select the edition of a date and record it, so that it never changes afterwards."""
    folder = settings.paths.events
    history = state.recorded_editions(conn)
    if existing_only and day not in history:
        raise DeliveryError(f"no edition of {day.isoformat()} has been sent yet; nothing to retry")
    edition = select_edition(day, load_events(folder), history, folder)
    state.record_edition(conn, day, edition.event.id)
    return edition


def send_day(
    settings: Settings,
    day: date,
    *,
    retry_failed: bool = False,
    select: Callable[[Subscriber], bool] | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> SendResult:
    """The real send of one edition: lock it, record it, render it, plan recipients, send."""
    progress = progress or Progress()
    conn = state.connect(settings.paths.state)
    try:
        with edition_lock(settings.paths.state, day):
            ledger = SQLiteLedger(conn)
            rendered = render_edition(
                record_edition(settings, day, conn, existing_only=retry_failed), settings, now=now
            )
            result = SendResult(day)
            if not retry_failed:
                tally = Tally()
                recipients: Iterable[Subscriber] = iter_recipients(settings.paths.subscribers, conn, tally)
                result.planned = ledger.plan(
                    day, filter(select, recipients) if select else recipients, rendered.message_id_for
                )
                _note_skipped(result, tally)
            counts = ledger.counts(day)
            progress.start(counts["failed"] if retry_failed else counts["pending"] + counts["failed"])
            try:
                return send_edition(
                    settings,
                    rendered,
                    ledger,
                    only_failed=retry_failed,
                    stop=stop,
                    progress=progress.update,
                    result=result,
                )
            finally:
                progress.close()
    finally:
        conn.close()


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


def dry_run(settings: Settings, day: date, *, outbox: Path | None = None) -> DryRun:
    """Select, render and count (or write to an outbox) without touching the network or the state."""
    conn = state.connect_readonly(settings.paths.state)
    try:
        history = state.recorded_editions(conn) if conn else {}
        edition = select_edition(day, load_events(settings.paths.events), history, settings.paths.events)
        rendered = render_edition(edition, settings, allow_insecure_secret=True)
        tally = Tally()
        recipients = iter_recipients(settings.paths.subscribers, conn, tally)
        done = _final_keys(conn, day)
        pending = (s for s in recipients if s.key not in done)
        count = write_outbox(rendered, pending, outbox) if outbox else sum(1 for _ in pending)
        return DryRun(edition, rendered, count, tally, len(done))
    finally:
        if conn:
            conn.close()


def _final_keys(conn: sqlite3.Connection | None, day: date) -> frozenset[str]:
    if conn is None:
        return frozenset()
    rows = conn.execute(
        "SELECT email FROM deliveries WHERE day = ? AND status IN ('delivered', 'bounced', 'skipped')",
        (day.isoformat(),),
    )
    return frozenset(row[0] for row in rows)


def send_test_copy(settings: Settings, day: date, address: str) -> str:
    """Send a test copy of a date's edition to one address, without touching the edition's rows."""
    try:
        address = check_address(address)
    except ValueError as exc:
        raise DeliveryError(f"--to {address!r} is not a valid email address: {exc}") from None
    conn = state.connect(settings.paths.state)
    try:
        history = state.recorded_editions(conn)
        edition = select_edition(day, load_events(settings.paths.events), history, settings.paths.events)
        return send_test(settings, render_edition(edition, settings), address, SQLiteLedger(conn))
    finally:
        conn.close()
