"""Every store call from the data plane goes through one guard: a time budget and a breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.errors import StoreError, StoreUnavailable
from policies.breaker import Breaker

T = TypeVar("T")
# Mistakes in our own code, not failures of the store: they end the request as internal_error
# (a loud 500) rather than trip the breaker and admit everyone unlimited (fail-open).
_PROGRAMMING_ERRORS = (AttributeError, TypeError, NameError, LookupError, AssertionError)


class StoreGuard:
    """Fails fast while the store is known to be down, so a dead store adds no latency."""

    def __init__(
        self,
        timeout: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._breaker = Breaker()
        self._observe = observe  # (result, seconds) of each call the store was asked

    @property
    def is_open(self) -> bool:
        return self._breaker.state != "closed"

    async def call(self, make: Callable[[], Awaitable[T]], budget: float | None = None) -> T:
        now = self._clock()
        if not self._breaker.allows(now):
            raise StoreUnavailable("store circuit is open")
        self._breaker = self._breaker.attempt(now)
        try:
            result = await self._timed(make, budget)
        except asyncio.CancelledError:
            # Cancellation says nothing about the store; only a probe must not stay in flight.
            if self._breaker.state == "half_open":
                self._breaker = self._breaker.failure(self._clock())
            raise
        except _PROGRAMMING_ERRORS:
            if self._breaker.state == "half_open":
                self._breaker = self._breaker.failure(self._clock())
            raise
        except StoreError:
            # A backend's own StoreError already says what failed: re-raised as it is.
            self._breaker = self._breaker.failure(self._clock())
            raise
        except Exception as exc:
            # A timeout, or a driver error a backend has not mapped: the store failed us too.
            self._breaker = self._breaker.failure(self._clock())
            raise StoreError(f"store call failed: {type(exc).__name__}") from exc
        self._breaker = self._breaker.success()
        return result

    async def _timed(self, make: Callable[[], Awaitable[T]], budget: float | None) -> T:
        """The call under its budget, reported as ok or error (a cancelled caller, not an
        Exception, is neither)."""
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(make(), budget or self.timeout)
        except Exception:
            if self._observe is not None:
                self._observe("error", time.perf_counter() - t0)
            raise
        if self._observe is not None:
            self._observe("ok", time.perf_counter() - t0)
        return result
