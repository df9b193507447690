"""The delivery ledger: one row per (edition date, subscriber), the single source of truth.

A message is marked delivered only after the SMTP server accepted it (a sender commits it
while the next message's envelope is on the wire, and always before that message's
content). Rows are 'pending' until a final outcome, so after a crash every row not yet
'delivered' or 'bounced' is simply sent again; only messages in flight at the crash (at
most one per connection) can be sent twice, and they carry the same Message-ID. The
interface is small (plan, claim, mark, counts) and its SQL runs on both storage backends
(SQLite and PostgreSQL, see newsletter.storage).

Several senders (threads of one run, processes, machines) share an edition through leases:
``claim`` takes a batch of due rows for an owner until a moment (Unix time), ``renew``
extends what the owner holds while it works, and recording an outcome clears the lease. A
row whose lease ran out (its sender died, or ``release`` gave it back) is claimable again,
so a crash can send twice only what that sender had in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from newsletter import retention
from newsletter.errors import StorageError
from newsletter.state import suppress, utcnow_text
from newsletter.storage import Database
from newsletter.subscribers import Subscriber

STATUSES = ("pending", "delivered", "failed", "bounced", "skipped")
FINAL = frozenset({"delivered", "bounced", "skipped"})


@dataclass(frozen=True)
class Due:
    """A recipient still to be mailed for an edition."""

    rowid: int
    subscriber: Subscriber
    attempts: int
    message_id: str = ""  # as planned: every (re)send of the row carries this Message-ID


class Ledger(Protocol):
    """What the sending engine needs from a ledger; DatabaseLedger (and DigestLedger) implement it."""

    conn: Database  # the state database (the engine's shared send budget lives there too)

    @property
    def label(self) -> str: ...
    @property
    def errors(self) -> tuple[type[BaseException], ...]: ...
    def error(self, exc: BaseException) -> StorageError: ...
    def plan(self, day: date, subscribers: Iterable[Subscriber], message_id: Callable[[Subscriber], str]) -> int: ...
    def claim(self, day: date, owner: str, *, now: float, until: float, limit: int,
              after: str | None = None, only_failed: bool = False, only_pending: bool = False,
              after_row: int | None = None) -> list[Due]: ...  # fmt: skip
    def last_row(self) -> int: ...
    def holders(self, day: date, owner: str, now: float) -> list[str]: ...
    def renew(self, day: date, owner: str, until: float) -> int: ...
    def release(self, day: date, owner: str) -> None: ...
    def finished(self, day: date) -> frozenset[str]: ...
    def mark_delivered_many(self, day: date, accepted: list[tuple[str, str]]) -> None: ...
    def mark_retry(self, day: date, email: str, reply: str) -> None: ...
    def mark_failed(self, day: date, email: str, reply: str) -> None: ...
    def bounce(self, day: date, email: str, reply: str) -> None: ...
    def mark_unsendable(self, day: date, email: str, reason: str) -> None: ...
    def unsent(self, day: date, now: float | None = None) -> int: ...
    def counts(self, day: date) -> dict[str, int]: ...


INSERT_EDITION_ROWS = (
    "INSERT INTO deliveries (day, email, address, name, timezone, message_id, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
INSERT_DIGEST_ROWS = (
    "INSERT INTO deliveries (day, email, address, name, timezone, message_id, updated_at, "
    "kind, digest_from) VALUES (?, ?, ?, ?, ?, ?, ?, 'digest', ?) ON CONFLICT DO NOTHING"
)
# PostgreSQL: a batch of planned rows in one statement, each column as one array (in the batch's order,
# which the row ids keep), where executemany runs one INSERT per row.
_UNNEST = "unnest({}) WITH ORDINALITY AS r({}, n)"
INSERT_ROWS_PG = {
    INSERT_EDITION_ROWS: (
        "INSERT INTO deliveries (day, email, address, name, timezone, message_id, updated_at) "
        f"SELECT d, e, a, m, z, i, u FROM {_UNNEST.format(', '.join(['?::text[]'] * 7), 'd, e, a, m, z, i, u')} "
        "ORDER BY n ON CONFLICT DO NOTHING"
    ),
    INSERT_DIGEST_ROWS: (
        "INSERT INTO deliveries (day, email, address, name, timezone, message_id, updated_at, kind, digest_from) "
        f"SELECT d, e, a, m, z, i, u, 'digest', f FROM {_UNNEST.format(', '.join(['?::text[]'] * 8), 'd, e, a, m, z, i, u, f')} "
        "ORDER BY n ON CONFLICT DO NOTHING"
    ),
}

# A claim: the next due rows of the edition with no live lease, taken for an owner in one statement
# (SQLite: inside a write transaction; PostgreSQL: on its own, skipping the rows another claim has
# locked). ``{where}`` is
# "d.email > ?" (the sender's first pass, walking the primary key), "d.rowid > ?" (rows planned while
# the sender works, in the order they were added; "d.id" on PostgreSQL) or "d.lease_owner != ''" (rows
# whose sender died or gave them back). The rows are picked once, in a materialized CTE (an
# ``IN (SELECT ... LIMIT ... FOR UPDATE SKIP LOCKED)`` may be evaluated again by PostgreSQL and
# take more than the limit). RETURNING carries the reader's public id for the links. ``{picked}``
# is how the UPDATE finds the picked rows: see CLAIM_PICKED.
CLAIM_ROWS = (
    "WITH picked AS MATERIALIZED (SELECT d.email FROM deliveries d WHERE d.day = ? AND d.status IN ({statuses}) "
    "AND {scope} AND {where} AND d.lease_until < ? "
    "AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = d.email) ORDER BY {order} LIMIT ?{lock}) "
    "UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE day = ? AND email {picked} "
    "RETURNING email, address, name, timezone, attempts, message_id, "
    "(SELECT u.public_id FROM subscribers u WHERE u.email = deliveries.email), deliveries.{rowid}"
)
CLAIM_SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"  # PostgreSQL: rows another claim holds are skipped, not waited for
# PostgreSQL: "= ANY(ARRAY(...))", an index lookup of each picked key in every plan. With "IN (SELECT ...)"
# the generic plan that a prepared claim switches to after five runs hash-joins the picked keys
# against a sequential scan of the whole edition: every claim then reads every row of the date.
CLAIM_PICKED = {"sqlite": "IN (SELECT email FROM picked)", "postgresql": "= ANY(ARRAY(SELECT email FROM picked))"}
LEASE_HOLDERS = (
    "SELECT DISTINCT d.lease_owner FROM deliveries d WHERE d.day = ? AND d.lease_owner != '' AND d.lease_owner != ? "
    "AND d.lease_until >= ? AND d.status IN ('pending', 'failed') AND {scope}"
)
RENEW_LEASES = (
    "UPDATE deliveries SET lease_until = ? WHERE day = ? AND lease_owner != '' AND lease_owner = ? AND lease_until > 0"
)
RELEASE_LEASES = "UPDATE deliveries SET lease_until = 0 WHERE day = ? AND lease_owner != '' AND lease_owner = ?"
RECORD_OUTCOME = (
    "UPDATE deliveries SET status = ?, last_reply = ?, attempts = attempts + 1, updated_at = ?, "
    "lease_owner = '', lease_until = 0 WHERE day = ? AND email = ?"
)  # a final outcome (or 'failed', for a later run) gives the row up
RECORD_DELIVERED = RECORD_OUTCOME + " AND status IN ('pending', 'failed')"  # applied twice (a replayed journal): no change
RECORD_RETRY = (
    "UPDATE deliveries SET status = 'pending', last_reply = ?, attempts = attempts + 1, updated_at = ? "
    "WHERE day = ? AND email = ?"
)  # the row stays this sender's (its lease held) until the retry is done


# Rows planned a transaction. PostgreSQL: one INSERT ... SELECT FROM unnest statement of 2,000.
# SQLite: 250, since the transaction holds the one write lock while the senders' claims and
# journal moves wait for it (with 2,000 a sender's connections ran out of rows meanwhile:
# a send of 20,000 with 1 or 2 processes was about 10% faster with 250).
PLAN_BATCH = {"postgresql": 2000, "sqlite": 250}


class DatabaseLedger:
    """The ledger in the state database (either backend); safe to share between sending threads."""

    KIND = "edition"  # the rows this ledger sends and counts: daily editions ('digest': DigestLedger)

    def __init__(self, conn: Database) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        """The database (file, or URL with the password masked), for messages."""
        return self.conn.label

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The storage backend's exceptions (a full disk, a lost connection)."""
        return self.conn.errors

    def error(self, exc: BaseException) -> StorageError:
        """One line for a storage error, naming the database."""
        return self.conn.error(exc)

    def _scope(self) -> tuple[str, tuple[str, ...]]:
        """The SQL condition (and its parameters) that keeps this ledger to its own kind of row."""
        return "kind = ?", (self.KIND,)

    def plan(
        self, day: date, subscribers: Iterable[Subscriber], message_id: Callable[[Subscriber], str], batch: int = 0
    ) -> int:
        """Add a pending row (with its Message-ID) for every subscriber not yet in this edition; return how many were new.

        ``batch`` rows at a time (default ``PLAN_BATCH`` of the backend), each batch one
        transaction, so that senders claim the rows planned so far while the rest is planned.
        """
        batch = batch or PLAN_BATCH[self.conn.backend]
        added, analyzed = 0, 0
        rows: list[tuple[str, ...]] = []
        now = utcnow_text()
        for subscriber in subscribers:
            key = subscriber.key
            rows.append(
                (
                    day.isoformat(),
                    key,
                    subscriber.email,
                    subscriber.name,
                    subscriber.timezone,
                    message_id(subscriber),
                    now,
                )
            )
            if len(rows) >= batch:
                added += self._insert(rows)
                rows = []
                if added >= 4 * analyzed + batch:  # senders claim while the list is planned: 2,000, 10,000, 42,000 ...
                    analyzed = self._analyzed(added)
        added += self._insert(rows)
        return self._analyzed(added) if added > analyzed else added

    def _insert(self, rows: Sequence[tuple[str, ...]], statement: str = INSERT_EDITION_ROWS) -> int:
        """Insert ledger rows in one transaction, ignoring those already there; return how many were new."""
        if not rows:
            return 0
        if self.conn.backend == "postgresql":
            columns = [list(column) for column in zip(*rows, strict=True)]
            with self._lock:
                return self.conn.execute(INSERT_ROWS_PG[statement], columns).rowcount
        with self._lock, self.conn.transaction():
            return self.conn.executemany(statement, rows)

    def _analyzed(self, added: int) -> int:
        """PostgreSQL: refresh the table's statistics once rows were planned; return ``added``.

        Until autovacuum gets to it (a minute or more), the planner would go by the statistics
        of the table before the edition (a few rows, or none): it then plans each claim as a
        scan and sort of every row of the date instead of a walk of the primary key. Senders
        claim while the list is being planned, so ``plan`` does this as the rows grow fourfold
        (each ANALYZE reads a sample of the table: a few tens of milliseconds at any size).
        """
        if added and self.conn.backend == "postgresql":
            with self._lock:
                self.conn.execute("ANALYZE deliveries")
        return added

    def claim(
        self,
        day: date,
        owner: str,
        *,
        now: float,
        until: float,
        limit: int,
        after: str | None = None,
        only_failed: bool = False,
        only_pending: bool = False,
        after_row: int | None = None,
    ) -> list[Due]:
        """Lease up to ``limit`` due rows to ``owner`` until ``until``, in key order; return them.

        ``after`` (a lower-case address, '' to start) walks the rows not yet leased past that
        key; None takes rows whose lease ran out (a dead sender's, or given back by ``release``).
        ``after_row`` (a row id, see ``last_row``) walks instead the rows added after that one,
        in the order they were added. ``only_pending`` leaves the failed rows out (those a run
        has given up on stay so).
        """
        sql, params = self.claim_statement(day, owner, now, until, limit, after, only_failed, only_pending, after_row)
        if self.conn.backend == "postgresql":  # one statement: its own transaction, one round trip
            with self._lock:
                rows = self.conn.execute(sql, params).fetchall()
        else:
            with self._lock, self.conn.transaction():
                rows = self.conn.execute(sql, params).fetchall()
        rows.sort(key=lambda row: row[0])
        return [
            Due(row[7], Subscriber(row[1], row[2], row[3], public_id=row[6] or ""), row[4], row[5] or "")
            for row in rows
        ]

    def last_row(self) -> int:
        """The id of the newest ledger row (0 when there is none): ``claim(after_row=...)`` walks those added after it."""
        with self._lock:
            return int(self.conn.execute(f"SELECT COALESCE(MAX({self.conn.rowid}), 0) FROM deliveries").fetchone()[0])

    def claim_statement(
        self, day: date, owner: str, now: float, until: float, limit: int, after: str | None, only_failed: bool,
        only_pending: bool = False, after_row: int | None = None,
    ) -> tuple[str, tuple[object, ...]]:  # fmt: skip
        """The SQL and parameters of a claim (see ``claim``)."""
        statuses = ("failed",) if only_failed else ("pending",) if only_pending else ("pending", "failed")
        scope, scoped = self._scope()
        rowid, order = self.conn.rowid, "d.email"
        cursor: tuple[object, ...]
        if after_row is not None:
            where, cursor, order = f"d.{rowid} > ?", (after_row,), f"d.{rowid}"
        elif after is not None:
            where, cursor = "d.email > ?", (after,)
        else:
            where, cursor = "d.lease_owner != ''", ()
        sql = CLAIM_ROWS.format(
            statuses=",".join("?" * len(statuses)), scope=scope, where=where, lock=self._skip_locked(),
            picked=CLAIM_PICKED[self.conn.backend], order=order, rowid=rowid,
        )  # fmt: skip
        return sql, (day.isoformat(), *statuses, *scoped, *cursor, now, limit, owner, until, day.isoformat())

    def _skip_locked(self) -> str:
        """What a claim's SELECT adds so that concurrent claims skip each other's rows (SQLite's write lock serializes them)."""
        return CLAIM_SKIP_LOCKED if self.conn.backend == "postgresql" else ""

    def holders(self, day: date, owner: str, now: float) -> list[str]:
        """The other senders that hold a live lease on rows of this edition still to send."""
        scope, scoped = self._scope()
        with self._lock:
            rows = self.conn.execute(LEASE_HOLDERS.format(scope=scope), (day.isoformat(), owner, now, *scoped))
            return sorted(row[0] for row in rows)

    def renew(self, day: date, owner: str, until: float) -> int:
        """Extend the lease of every row the owner still holds (its heartbeat); return how many."""
        with self._lock:
            return self.conn.execute(RENEW_LEASES, (until, day.isoformat(), owner)).rowcount

    def release(self, day: date, owner: str) -> None:
        """Give back the rows the owner still holds (the run stops): any sender may claim them at once."""
        with self._lock:
            self.conn.execute(RELEASE_LEASES, (day.isoformat(), owner))

    def finished(self, day: date) -> frozenset[str]:
        """Return the addresses (lower case) that already have a final outcome for the edition."""
        with self._lock:
            rows = self.conn.execute(  # any kind: a reader gets one message a date, edition or digest
                "SELECT email FROM deliveries WHERE day = ? AND status IN ('delivered', 'bounced', 'skipped')",
                (day.isoformat(),),
            ).fetchall()
        return frozenset(row[0] for row in rows)

    def _update(self, day: date, email: str, status: str, reply: str) -> None:
        with self._lock:
            self._write(day, email, status, reply)

    def _write(self, day: date, email: str, status: str, reply: str) -> None:
        self.conn.execute(RECORD_OUTCOME, (status, reply[:500], utcnow_text(), day.isoformat(), email.lower()))

    def mark_delivered(self, day: date, email: str, reply: str) -> None:
        """Record that the server accepted the message (250): final."""
        self._update(day, email, "delivered", reply)

    def mark_retry(self, day: date, email: str, reply: str) -> None:
        """Record a temporary failure that will be retried in this run (the sender keeps its lease)."""
        with self._lock:
            self.conn.execute(RECORD_RETRY, (reply[:500], utcnow_text(), day.isoformat(), email.lower()))

    def mark_failed(self, day: date, email: str, reply: str) -> None:
        """Record a temporary failure that exhausted its attempts (send --retry-failed tries again)."""
        self._update(day, email, "failed", reply)

    def mark_delivered_many(self, day: date, accepted: list[tuple[str, str]]) -> None:
        """Record several acceptances (address, reply) in one transaction; rows already final stay as they are."""
        if not accepted:
            return
        now, when = utcnow_text(), day.isoformat()
        rows = [("delivered", reply[:500], now, when, email.lower()) for email, reply in accepted]
        if self.conn.backend == "postgresql":
            # psycopg sends the rows' UPDATEs in one pipeline: one round trip, and the server runs them in one
            # implicit transaction (until the pipeline's sync), so BEGIN and COMMIT would only add two more;
            # one acceptance is one statement (a pipeline costs the sender some 40 us more)
            with self._lock:
                if len(rows) == 1:
                    self.conn.execute(RECORD_DELIVERED, rows[0])
                else:
                    self.conn.executemany(RECORD_DELIVERED, rows)
            return
        with self._lock, self.conn.transaction():
            self.conn.executemany(RECORD_DELIVERED, rows)

    def bounce(self, day: date, email: str, reply: str) -> None:
        """Record a permanent rejection and suppress the address, in one transaction."""
        with self._lock, self.conn.transaction():
            self._write(day, email, "bounced", reply)
            suppress(self.conn, email, "bounced", reply)

    def mark_unsendable(self, day: date, email: str, reason: str) -> None:
        """Record an address this server cannot take (never sent, not suppressed): final, with the reason."""
        with self._lock:
            self.conn.execute(
                "UPDATE deliveries SET status = 'skipped', last_reply = ?, updated_at = ?, lease_owner = '', "
                "lease_until = 0 WHERE day = ? AND email = ?",
                (reason[:500], utcnow_text(), day.isoformat(), email.lower()),
            )

    def mark_bounced(self, day: date, email: str, reply: str) -> None:
        """Record a permanent rejection (5xx): final, never retried."""
        self._update(day, email, "bounced", reply)

    def unsent(self, day: date, now: float | None = None) -> int:
        """Count the rows still pending that no live sender holds (suppressed addresses aside, never sent)."""
        scope, scoped = self._scope()
        with self._lock:
            row = self.conn.execute(
                f"SELECT COUNT(*) FROM deliveries d WHERE day = ? AND status = 'pending' AND {scope} "
                "AND lease_until < ? AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = d.email)",
                (day.isoformat(), *scoped, time.time() if now is None else now),
            ).fetchone()
        return int(row[0])

    def counts(self, day: date) -> dict[str, int]:
        """Count the edition's rows per status, with those ``prune`` folded into totals."""
        result = dict.fromkeys(STATUSES, 0)
        with self._lock:
            for status, count in self.conn.execute(
                "SELECT status, COUNT(*) FROM deliveries WHERE day = ? AND kind = ? GROUP BY status",
                (day.isoformat(), self.KIND),
            ):
                result[status] = count
            for status, count in retention.totals_of(self.conn, day, self.KIND).items():
                result[status] = result.get(status, 0) + count
        return result

    def editions(self) -> list[tuple[date, dict[str, int]]]:
        """Every edition in the ledger, newest first, with its counts per status (folded ones from their totals)."""
        table: dict[str, dict[str, int]] = {}
        with self._lock:
            for day, status, count in self.conn.execute(
                "SELECT day, status, COUNT(*) FROM deliveries WHERE kind = ? GROUP BY day, status", (self.KIND,)
            ):
                table.setdefault(day, dict.fromkeys(STATUSES, 0))[status] = count
            for day, totals in retention.all_totals(self.conn, self.KIND).items():
                row = table.setdefault(day, dict.fromkeys(STATUSES, 0))
                for status, count in totals.items():
                    row[status] = row.get(status, 0) + count
        return [(date.fromisoformat(day), counts) for day, counts in sorted(table.items(), reverse=True)]

    def find_message(self, message_id: str) -> tuple[date, str] | None:
        """Return (edition date, address) of a Message-ID we sent, for bounce handling."""
        with self._lock:
            row = self.conn.execute(
                "SELECT day, address FROM deliveries WHERE message_id = ?", (message_id.strip(),)
            ).fetchone()
        return (date.fromisoformat(row[0]), row[1]) if row else None

    def record_test_send(self, day: date, email: str, status: str, reply: str, message_id: str) -> None:
        """Record a --to test copy, apart from the edition's rows."""
        with self._lock:
            self.conn.execute(
                "INSERT INTO test_sends (day, email, status, last_reply, message_id, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
                (day.isoformat(), email, status, reply[:500], message_id, utcnow_text()),
            )


class DigestLedger(DatabaseLedger):
    """The weekly digests' rows of the ledger: the same table, the same promises, ``kind = 'digest'``.

    A digest row also records the first edition it holds (``digest_from``): digests of one
    date differ by that date only, and each variant is rendered once. ``since`` keeps the
    ledger to one variant while it is sent; counts and the plan cover them all.
    """

    KIND = "digest"

    def __init__(self, conn: Database, since: date | None = None) -> None:
        super().__init__(conn)
        self.since = since

    def _scope(self) -> tuple[str, tuple[str, ...]]:
        if self.since is None:
            return "kind = 'digest'", ()
        return "kind = 'digest' AND digest_from = ?", (self.since.isoformat(),)

    def plan_digests(self, day: date, readers: Iterable[tuple[Subscriber, date, str]]) -> int:
        """Add a pending digest row for each (reader, first edition date, Message-ID) without a row that date.

        A reader who already has a row for the date (the day's edition) gets no digest that date.
        """
        now = utcnow_text()
        rows = [
            (day.isoformat(), s.key, s.email, s.name, s.timezone, message_id, now, since.isoformat())
            for s, since, message_id in readers
        ]
        return self._analyzed(self._insert(rows, INSERT_DIGEST_ROWS))

    def last_mailed(self, email: str, before: date) -> tuple[date, str] | None:
        """The latest date before ``before`` with a row for this reader (edition or digest), and its kind."""
        with self._lock:
            row = self.conn.execute(
                "SELECT day, kind FROM deliveries WHERE email = ? AND day < ? ORDER BY day DESC LIMIT 1",
                (email.lower(), before.isoformat()),
            ).fetchone()
        return (date.fromisoformat(row[0]), row[1]) if row else None

    def recent_digests(self, day: date, days: int = 7) -> dict[str, date]:
        """Readers with a digest in the ``days`` before ``day``: lower-case address -> that digest's date."""
        start = date.fromordinal(day.toordinal() - days).isoformat()
        with self._lock:
            rows = self.conn.execute(
                "SELECT email, MAX(day) FROM deliveries WHERE kind = 'digest' AND day >= ? AND day < ? GROUP BY email",
                (start, day.isoformat()),
            ).fetchall()
        return {row[0]: date.fromisoformat(row[1]) for row in rows}

    def variants(self, day: date, *, only_failed: bool = False) -> list[date]:
        """The first edition dates of the digests of a date still to send (each is rendered once)."""
        statuses = ("failed",) if only_failed else ("pending", "failed")
        with self._lock:
            rows = self.conn.execute(
                f"SELECT DISTINCT digest_from FROM deliveries WHERE day = ? AND kind = 'digest' "
                f"AND status IN ({','.join('?' * len(statuses))}) ORDER BY digest_from",
                (day.isoformat(), *statuses),
            ).fetchall()
        return [date.fromisoformat(row[0]) for row in rows]
