"""Ingest key hash -> OrgRouting, cached in process.

A fresh TTL cache (1 s) refreshed ahead of expiry for keys in use, a last-known map used
when the store fails, a short negative cache for unknown keys, and one store read per key
in flight. Each holds at most ``maxsize`` keys (``GATEWAY_CACHE_MAX_KEYS``): past it the
least recently used go first, so memory stays bounded however many keys are seen (a key
forgotten from the last-known map is only unknown while the store is down). cachetools is
not async-aware, so no await stands between a get and its set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cachetools import LRUCache, TTLCache

from gateway.errors import StoreError
from gateway.limits.guard import StoreGuard
from gateway.store.base import (
    OrgStore,
)
from policies.model import OrgRouting


class RoutingCache:
    def __init__(
        self,
        store: OrgStore,
        guard: StoreGuard,
        *,
        ttl: float = 1.0,
        negative_ttl: float = 1.0,
        maxsize: int = 1_000_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._guard = guard
        # Each fresh routing with the time past which a hit refreshes it ahead of expiry.
        self._fresh: TTLCache[bytes, tuple[OrgRouting, float]] = TTLCache(maxsize, ttl, timer)
        self._negative: TTLCache[bytes, bool] = TTLCache(maxsize, negative_ttl, timer)
        self._known: LRUCache[bytes, OrgRouting] = LRUCache(maxsize)
        self._inflight: dict[bytes, asyncio.Future[OrgRouting | None]] = {}
        self._timer = timer
        # Past 80% of its TTL, a hit also refreshes the entry in the background, so a key in
        # steady use never waits for the store (a slow store would stall its requests).
        self._refresh_after = 0.8 * ttl
        self.store_reads = 0
        self.stale_served = 0

    async def lookup(self, key_hash: bytes) -> OrgRouting | None:
        """The routing for a key hash, ``None`` for an unknown key.

        Raises StoreError only for a key never seen while the store is failing.
        """
        fresh = self._fresh.get(key_hash)
        if fresh is not None:
            routing, refresh_at = fresh
            if self._timer() >= refresh_at and key_hash not in self._inflight:
                self._start_read(key_hash)  # refresh ahead: nobody waits for it
            return routing
        if key_hash in self._negative:
            return None
        pending = self._inflight.get(key_hash) or self._start_read(key_hash)
        return await asyncio.shield(pending)

    def _start_read(self, key_hash: bytes) -> asyncio.Future[OrgRouting | None]:
        # The read is a task of its own: a cancelled caller must not cancel its waiters.
        pending = asyncio.ensure_future(self._read(key_hash))
        self._inflight[key_hash] = pending
        pending.add_done_callback(self._read_done(key_hash))
        return pending

    def _read_done(self, key_hash: bytes) -> Callable[[asyncio.Future[OrgRouting | None]], None]:
        def done(future: asyncio.Future[OrgRouting | None]) -> None:
            self._inflight.pop(key_hash, None)
            if not future.cancelled():
                future.exception()  # a refresh nobody waited for must not warn at exit

        return done

    async def _read(self, key_hash: bytes) -> OrgRouting | None:
        self.store_reads += 1
        try:
            routing = await self._guard.call(lambda: self._store.routing_for_key(key_hash))
        except StoreError:
            known = self._known.get(key_hash)
            if known is None:
                raise
            self.stale_served += 1
            return known
        if routing is None:
            self._fresh.pop(key_hash, None)  # a refresh found the key revoked: not served again
            self._known.pop(key_hash, None)
            self._negative[key_hash] = True
        else:
            self._fresh[key_hash] = (routing, self._timer() + self._refresh_after)
            self._known[key_hash] = routing
        return routing

    async def settled(self) -> None:
        """Wait for the reads in flight (refreshes ahead included); their errors stay theirs."""
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def invalidate_all(self) -> None:
        """Every cached routing is read again (last-known ones stay for fail-open)."""
        self._fresh.clear()
        self._negative.clear()

    def invalidate_org(self, org_id: str) -> None:
        """Drop every cached routing of one org, so the next request reads the store."""
        for key_hash in [k for k, (r, _) in self._fresh.items() if r.org_id == org_id]:
            self._fresh.pop(key_hash, None)
        for key_hash in [k for k, r in self._known.items() if r.org_id == org_id]:
            self._known.pop(key_hash, None)
        self._negative.clear()

    def __len__(self) -> int:
        return len(self._known)
