"""``/readyz``: the reservation breaker's state and a shared store ping, at most one a second.

Readiness never calls the store through the reservations' guard: a flood of probes against a
slow store would open that breaker and turn every request fail-open. It pings on a guard of
its own, one ping in flight for all callers, its answer kept for ``interval`` seconds. An
open reservation breaker is not ready; the usage flusher probes it every flush interval, so
it closes again without traffic once the store answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.errors import StoreError
from gateway.limits.guard import StoreGuard


class Readiness:
    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        reservations: StoreGuard,
        timeout: float,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._reservations = reservations
        self._guard = StoreGuard(timeout, clock=clock)
        self._interval = interval
        self._clock = clock
        self._answered_at: float | None = None
        self._answer = False
        self._pending: asyncio.Future[bool] | None = None

    async def ready(self) -> bool:
        if self._reservations.is_open:
            return False
        if self._answered_at is not None and self._clock() - self._answered_at < self._interval:
            return self._answer
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._probe())
        # Shielded: a caller that goes away does not cancel the ping the others wait for.
        return await asyncio.shield(self._pending)

    async def _probe(self) -> bool:
        try:
            await self._guard.call(self._ping)
            answer = True
        except StoreError:
            answer = False
        finally:
            self._pending = None
        self._answer, self._answered_at = answer, self._clock()
        return answer
