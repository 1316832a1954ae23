"""``GET /v1/usage``: the key holder's own budget, authenticated by its ingest key.

It answers the org's plan and period and, for each limited meter of the org and of this key,
``used``, ``limit``, ``remaining``, ``overage_used``, ``resets_at`` and
``forecast_exhausted_at``. A call asks the store nothing of its own: routing comes from the
routing cache, usage from a snapshot of the org's counters taken at most once a second (one
read however many keys and calls) plus what this process has spent and not yet flushed, and
forecasts from the history at most once a minute. Other replicas' spending since their last
flush (``GATEWAY_FLUSH_INTERVAL``) is not in it. Each key may ask ``RATE_PER_KEY`` times a
second; nothing of another key or org is ever shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from cachetools import TTLCache

from gateway.errors import BadRequest, StoreError
from gateway.ingest.keys import extract_key
from gateway.limits.admission import AdmissionControl, Authorized
from gateway.limits.usage import UsageGate
from gateway.responses import send_json, send_refusal
from gateway.store.base import DurableQuotaStore, HistoryStore
from gateway.types import Receive, Scope, Send
from policies.decisions import Refusal, rate_limited, store_unavailable
from policies.forecast import HOUR, WINDOW_HOURS, forecast
from policies.model import Limits, OrgRouting, Period, scope_of
from policies.rate import Bucket, take

RATE_PER_KEY = 5  # calls a second, and the burst
USAGE_TTL = 1.0
FORECAST_TTL = 60.0
METHOD_NOT_ALLOWED = Refusal(405, "method_not_allowed")
T = TypeVar("T")


class UsageQueries(DurableQuotaStore, HistoryStore, Protocol):
    """What the endpoint reads: the org's counters and their history."""


class KeyUsageEndpoint:
    def __init__(
        self,
        admission: AdmissionControl,
        store: UsageQueries,
        usage: UsageGate,
        clock: Callable[[], float],
        timer: Callable[[], float],
    ) -> None:
        self._admission = admission
        self._store = store
        self._usage = usage
        self._clock = clock
        self._timer = timer
        self._buckets: TTLCache[str, Bucket] = TTLCache(maxsize=100_000, ttl=60, timer=timer)
        self._counters: _Shared[dict[str, int]] = _Shared(USAGE_TTL, timer)
        self._forecasts: _Shared[dict[str, float | None]] = _Shared(FORECAST_TTL, timer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            await send_refusal(send, METHOD_NOT_ALLOWED, "json")
            return
        try:
            key = extract_key(scope["headers"], scope["query_string"], False)
        except BadRequest as exc:
            await send_refusal(send, exc.refusal(), "json")
            return
        auth = await self._admission.authorize(key)
        if isinstance(auth, Refusal):
            await send_refusal(send, auth, "json")
            return
        refusal = self._rate(auth)
        if refusal is None:
            try:
                await send_json(send, 200, await self.view(auth.routing))
                return
            except StoreError:
                refusal = store_unavailable()
        await send_refusal(send, refusal, "json")

    def _rate(self, auth: Authorized) -> Refusal | None:
        holder = auth.routing.key_id or auth.routing.org_id
        result = take(self._buckets.get(holder), RATE_PER_KEY, 1, self._timer())
        self._buckets[holder] = result.bucket
        return None if result.admitted else rate_limited("usage_calls", result.wait)

    async def view(self, routing: OrgRouting) -> dict[str, Any]:
        now = self._clock()
        period = self._usage.period_of(routing, now)
        counters = await self._counters.get(
            (routing.org_id, period.key), lambda: self._store.usage(routing.org_id, period.key)
        )
        budget = self._usage.budget_of(routing.org_id, period)
        org: dict[str, tuple[str, int]] = {}
        own: dict[str, tuple[str, int]] = {}
        for meter in routing.limits.as_dict():
            key_id, inner = scope_of(meter)
            if meter.startswith("rate_") or (key_id is not None and key_id != routing.key_id):
                continue  # rates are not usage; another key's meters are not this key's
            used = counters.get(meter, 0) + (budget.local_used(meter) if budget else 0)
            (own if key_id is not None else org)[inner] = (meter, used)
        meters = {**org, **{f"key:{m}": v for m, v in own.items()}}
        exhausted = await self._forecasts.get(
            (routing.org_id, routing.key_id or "", period.key),
            lambda: self._forecast(routing, period, meters, now),
        )
        limits = routing.limits

        def entries(shown: dict[str, tuple[str, int]]) -> dict[str, Any]:
            return {
                m: _entry(limits, stored, used, period, exhausted)
                for m, (stored, used) in shown.items()
            }

        return {
            "org_id": routing.org_id,
            "key_id": routing.key_id,
            "plan": routing.plan,
            "period_start": period.start.isoformat(),
            "period_end": period.end.isoformat(),
            "meters": entries(org),
            "key": {"meters": entries(own)},
        }

    async def _forecast(
        self, routing: OrgRouting, period: Period, meters: dict[str, tuple[str, int]], now: float
    ) -> dict[str, float | None]:
        """When each limited meter's recent rate reaches its limit (epoch seconds, or None)."""
        start, end = period.start.timestamp(), period.end.timestamp()
        since = max(start, now - (WINDOW_HOURS + 1) * HOUR)
        found: dict[str, float | None] = {}
        for meter, used in meters.values():
            limit = routing.limits.base_limit(meter)
            if limit is None:
                continue
            hours = dict(await self._store.usage_history(routing.org_id, meter, since, now + 1))
            reached = forecast(used, limit, hours, now, start, end).exhausted_at
            found[meter] = None if reached is None else reached.timestamp()
        return found


def _entry(
    limits: Limits, meter: str, used: int, period: Period, exhausted: dict[str, float | None]
) -> dict[str, Any]:
    limit = limits.base_limit(meter)
    assert limit is not None  # only limited meters are shown
    cap = limits.overage_cap(meter)
    bound = None if cap is None else limit + cap
    reached = exhausted.get(meter)
    return {
        "used": used,
        "limit": limit,
        "remaining": None if bound is None else max(0, bound - used),
        "overage_used": max(0, used - limit),
        "resets_at": period.end.isoformat(),
        "forecast_exhausted_at": None
        if reached is None
        else datetime.fromtimestamp(reached, UTC).isoformat(),
    }


class _Shared(Generic[T]):
    """One read per key per ``ttl`` seconds, shared by every caller meanwhile."""

    def __init__(self, ttl: float, timer: Callable[[], float]) -> None:
        self._cache: TTLCache[tuple[str, ...], T] = TTLCache(maxsize=10_000, ttl=ttl, timer=timer)
        self._reads: dict[tuple[str, ...], asyncio.Future[T]] = {}

    async def get(self, key: tuple[str, ...], read: Callable[[], Awaitable[T]]) -> T:
        if (found := self._cache.get(key)) is not None:
            return found
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = asyncio.ensure_future(read())
            pending.add_done_callback(lambda done: self._store(key, done))
        return await asyncio.shield(pending)

    def _store(self, key: tuple[str, ...], done: asyncio.Future[T]) -> None:
        self._reads.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            self._cache[key] = done.result()
