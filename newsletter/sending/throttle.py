"""The throttle: smtp.rate_limit per second and smtp.max_per_hour per rolling hour, shared by all connections."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


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
