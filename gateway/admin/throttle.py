"""Wrong admin tokens per client address: after ``limit`` in a second, 429 until it stops.

Shared by the API's header check and the console's sign-in form, so guesses through either
count together.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Throttled:
    """An address over its failures: ``wait`` seconds until it may fail again with a 401."""

    wait: float
    started: bool  # this failure is the address's first one over


class AuthFailures:
    """Failed admin authentications per client address within the last ``window`` seconds.

    Only failures are kept (the last ``limit`` times per address, for ``max_addresses``
    addresses, the least recently failing dropped first), so an address that sends the right
    token is never slowed and a flood of addresses cannot grow the table.
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 1.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._seen: dict[str, tuple[deque[float], bool]] = {}

    def fail(self, address: str) -> Throttled | None:
        """Records a failure; what to answer if the address is over its failures."""
        now = self._clock()
        entry = self._seen.pop(address, None)
        times, was_over = entry if entry is not None else (deque(maxlen=self.limit), False)
        while len(self._seen) >= self.max_addresses:
            del self._seen[next(iter(self._seen))]
        over = len(times) == self.limit and now - times[0] < self.window
        times.append(now)
        self._seen[address] = (times, over)  # at the end: the most recently failing
        if not over:
            return None
        return Throttled(self.window - (now - times[0]), started=not was_over)

    def over(self, address: str) -> Throttled | None:
        """Whether the address is over its failures now, without recording one."""
        entry = self._seen.get(address)
        if entry is None:
            return None
        times, _ = entry
        now = self._clock()
        if len(times) == times.maxlen and now - times[0] < self.window:
            return Throttled(self.window - (now - times[0]), started=False)
        return None
