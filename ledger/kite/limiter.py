"""A client-side rate limiter that keeps within Kite's limits, and backs off on 429.

Kite allows 10 requests a second per endpoint family; order placement, modification and
cancellation also 400 a minute and 5,000 a day per user. Windows are sliding (every span
of that length, not calendar seconds), and a small margin absorbs network jitter between
when the client sends and when Kite counts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

Window = tuple[float, int]  # (seconds, most calls in any such span)

KITE_LIMITS: Final[Mapping[str, Sequence[Window]]] = {
    "orders": ((1.0, 10), (60.0, 400), (86400.0, 5000)),
    "other": ((1.0, 10),),
}
ORDER_ROUTES: Final = frozenset({"place_order", "modify_order", "cancel_order"})


class RateLimiter:
    """Blocks callers until a call fits in every window of its family."""

    def __init__(
        self,
        limits: Mapping[str, Sequence[Window]] = KITE_LIMITS,
        *,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits = {family: tuple(windows) for family, windows in limits.items()}
        self.margin = margin
        self.clock = clock
        self.sleep = sleep
        self._calls: dict[str, deque[float]] = {family: deque() for family in self.limits}
        self._blocked_until: dict[str, float] = dict.fromkeys(self.limits, 0.0)
        self._lock = threading.Lock()

    def family_of(self, method: str) -> str:
        return "orders" if method in ORDER_ROUTES else "other"

    def acquire(self, family: str) -> None:
        """Wait until one more call of `family` keeps within every limit, and count it."""
        while True:
            with self._lock:
                wait = self._wait_needed(family)
                if wait <= 0:
                    self._calls[family].append(self.clock())
                    return
            self.sleep(wait)

    def _wait_needed(self, family: str) -> float:
        now = self.clock()
        wait = self._blocked_until[family] - now
        calls = self._calls[family]
        longest = max(span for span, _ in self.limits[family])
        while calls and calls[0] <= now - longest - self.margin:
            calls.popleft()
        for span, most in self.limits[family]:
            span += self.margin
            recent = [t for t in calls if t > now - span] if len(calls) >= most else []
            if len(recent) >= most:
                wait = max(wait, recent[-most] + span - now)
        return wait

    def back_off(self, family: str, seconds: float) -> None:
        """Kite said 429: send nothing of this family for `seconds`."""
        with self._lock:
            self._blocked_until[family] = max(self._blocked_until[family], self.clock() + seconds)
