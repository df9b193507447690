"""The throttle: smtp.rate_limit per second and smtp.max_per_hour per rolling hour, for every sender of one relay account.

Providers' quotas are per account, so the budget is kept in the state database, not in a
process: each send reserves a slot (a Unix time) in one statement or transaction, and
waits for it outside. ``send_budget`` holds the next free slot of the per-second budget,
``send_slots`` the slots of the last hour for the hourly one (migration ``0081-send-budget``).
Every connection of every sender process, on any machine, reserves from the same rows.
A sender that dies leaves only unused slots behind: the budget is never exceeded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from newsletter.config import SmtpSettings
from newsletter.storage import Database

HOUR = 3600.0

# The next slot of the per-second budget: max(next free slot, now), then the one after it is free.
RESERVE_SLOT = (
    "INSERT INTO send_budget (scope, next_slot) VALUES (?, ?) ON CONFLICT (scope) DO UPDATE SET "
    "next_slot = (CASE WHEN send_budget.next_slot > ? THEN send_budget.next_slot ELSE ? END) + ? "
    "RETURNING next_slot"
)
NTH_LATEST_SLOT = "SELECT at FROM send_slots WHERE scope = ? ORDER BY at DESC LIMIT 1 OFFSET ?"
ADD_SLOT = "INSERT INTO send_slots (scope, at) VALUES (?, ?)"
FORGET_SLOTS = "DELETE FROM send_slots WHERE scope = ? AND at < ?"


def account(smtp: SmtpSettings) -> str:
    """The relay account a budget belongs to: host, port and user name."""
    return f"{smtp.host}:{smtp.port}/{smtp.username}"


class Throttle:
    """Space sends to ``per_second`` and at most ``per_hour`` per rolling hour, across every sender of a scope."""

    def __init__(
        self, db: Database, scope: str, per_second: float, per_hour: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.db, self.scope = db, scope
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.per_hour = per_hour
        self.clock = clock
        self._lock = threading.Lock()  # one reservation at a time from this sender's connections

    @property
    def limited(self) -> bool:
        return bool(self.interval or self.per_hour)

    def wait(self, stop: threading.Event) -> bool:
        """Block until the next send is allowed; return False if asked to stop meanwhile."""
        if not self.limited:
            return not stop.is_set()
        delay = self.reserve() - self.clock()
        return not stop.wait(delay) if delay > 0 else not stop.is_set()

    def reserve(self) -> float:
        """Take the next slot of the shared budget (a Unix time) and return it."""
        if self.interval and not self.per_hour and self.db.backend == "postgresql":  # one statement: one round trip
            with self._lock:
                return self._next_slot(self.clock())
        with self._lock, self.db.transaction():
            now = self.clock()
            slot = now
            if self.interval:  # the upsert also locks the scope's row until the end of the transaction
                slot = self._next_slot(now)
            if self.per_hour:
                slot = self._hourly(slot)
            return slot

    def _next_slot(self, now: float) -> float:
        """The per-second budget's next slot from ``now`` on (the upsert moves the scope's next free one past it)."""
        after = self.db.execute(RESERVE_SLOT, (self.scope, now + self.interval, now, now, self.interval)).fetchone()[0]
        return float(after) - self.interval

    def _hourly(self, slot: float) -> float:
        """Move a slot so that no rolling hour holds more than ``per_hour``; record it."""
        if not self.interval:  # serialize reservations of this scope on the budget row, as the upsert does
            self.db.execute(RESERVE_SLOT, (self.scope, 0.0, 0.0, 0.0, 0.0))
        row = self.db.execute(NTH_LATEST_SLOT, (self.scope, self.per_hour - 1)).fetchone()
        if row is not None:
            slot = max(slot, float(row[0]) + HOUR)
        self.db.execute(ADD_SLOT, (self.scope, slot))
        self.db.execute(FORGET_SLOTS, (self.scope, slot - 2 * HOUR))
        return slot
