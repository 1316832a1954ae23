"""Usage notifications: threshold crossings and first refusals become events in the store's
outbox, claimed once across replicas, and one task per replica delivers them, signed per the
Standard Webhooks specification, retried with backoff for up to 24 hours.

Nothing here runs on the request path: the gates tell ``observe`` which routings were used
and which meters refused (a dict write), and ``run_forever`` reads usage and claims events
every ``GATEWAY_NOTIFY_INTERVAL`` seconds, then delivers what is due.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx

from gateway.errors import ConfigError, StoreError
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.base import DurableQuotaStore, HistoryStore, NotificationStore
from gateway.store.records import Notification, new_id
from policies.decisions import Refusal
from policies.forecast import WINDOW_HOURS, forecast
from policies.model import OrgRouting, Period, scope_of
from policies.notifications import (
    FORECAST,
    GIVE_UP_SECONDS,
    LIMIT_REACHED,
    THRESHOLD,
    Crossing,
    NotificationError,
    crossed,
    event_body,
    parse_thresholds,
    retry_delay,
    signature,
    signing_key,
)

log = logging.getLogger("gateway.billing.notify")

LEASE_SECONDS = 60.0  # an attempt holds its event this long before another replica may
TIMEOUT_SECONDS = 10.0  # a receiver's answer
BATCH = 5  # 5 attempts at the timeout take 50 s, inside the lease
CLAIMED_KEPT = 100_000  # claims this process remembers taking, so as not to ask again
FORECAST_EVERY = 60.0  # seconds between forecasts of one org and key


class NotifyStore(DurableQuotaStore, NotificationStore, HistoryStore, Protocol):
    """What the notifier reads and writes: usage counters and the outbox."""


class Notifier:
    def __init__(
        self,
        store: NotifyStore,
        period_of: Callable[[OrgRouting, float], Period],
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._period_of = period_of
        self._metrics = metrics
        self._clock = clock
        self._url = settings.notify_url
        if self._url is not None:
            _check_url(self._url)
        if settings.notify_interval < 0.01:
            raise ConfigError("GATEWAY_NOTIFY_INTERVAL must be at least 0.01 seconds")
        try:
            self._key = signing_key(settings.notify_secret) if settings.notify_secret else None
            self._thresholds = parse_thresholds(settings.notify_thresholds)
        except NotificationError as exc:
            raise ConfigError(str(exc)) from None
        self._interval = settings.notify_interval
        self._transport = transport
        self._active: dict[tuple[str, str | None], OrgRouting] = {}
        self._refused: dict[tuple[str, str | None, str], OrgRouting] = {}
        self._claimed: set[str] = set()
        self._seen: dict[tuple[str, str | None], float] = {}  # scope -> when last observed
        self._linger = 3 * max(settings.flush_interval, settings.notify_interval)
        self._forecast_at: dict[tuple[str, str], float] = {}  # (org, meter) -> last forecast

    @property
    def enabled(self) -> bool:
        return self._url is not None and self._key is not None

    def observe(self, routing: OrgRouting, refusal: Refusal | None) -> None:
        """From the gates, for every admission or refusal: remember what to look at next."""
        self._active[routing.org_id, routing.key_id] = routing
        self._seen[routing.org_id, routing.key_id] = self._clock()
        if refusal is not None and refusal.code == "usage_limit_exceeded":
            meter = str(refusal.detail.get("meter", ""))
            if refusal.detail.get("scope") == "key":
                meter = f"key/{routing.key_id}/{meter}"
            self._refused[routing.org_id, routing.key_id, meter] = routing

    async def run_forever(self) -> None:
        """Two loops: a slow receiver holds up deliveries, never the looking for events."""
        async with httpx.AsyncClient(transport=self._transport, timeout=TIMEOUT_SECONDS) as client:
            await asyncio.gather(
                self._every(self.detect), self._every(lambda: self.deliver(client))
            )

    async def _every(self, work: Callable[[], Awaitable[int]]) -> None:
        while True:
            try:
                await work()
            except StoreError as exc:
                log.warning("notifications wait for the store: %s", exc)
            except Exception:
                log.exception("notifications failed; trying again")
            await asyncio.sleep(self._interval)

    # events

    async def detect(self) -> int:
        """Claim the events of what was used since the last call; how many were new. What a
        store failure interrupts is looked at again on the next call."""
        active, self._active = self._active, {}
        refused, self._refused = self._refused, {}
        # Usage reaches the store at the next flush: an org seen lately is looked at again,
        # or a crossing made by its last batch before it went quiet would never be seen.
        now = self._clock()
        for scope, routing in active.items():
            if now - self._seen.get(scope, now) < self._linger:
                self._active.setdefault(scope, routing)
            else:
                self._seen.pop(scope, None)
        try:
            return await self._detect(active, refused)
        except BaseException:
            for scope, routing in active.items():
                self._active.setdefault(scope, routing)
            for found, routing in refused.items():
                self._refused.setdefault(found, routing)
            raise

    async def _detect(
        self,
        active: dict[tuple[str, str | None], OrgRouting],
        refused: dict[tuple[str, str | None, str], OrgRouting],
    ) -> int:
        now = self._clock()
        new = 0
        for routing in active.values():
            period = self._period_of(routing, now)
            counters = await self._store.usage(routing.org_id, period.key)
            for meter, limit in self._limited(routing):
                used = counters.get(meter, 0)
                for threshold in crossed(used, limit, self._thresholds):
                    new += await self._claim(THRESHOLD, routing, meter, period, threshold, used)
        for routing in active.values():
            new += await self._forecasts(routing, now)
        for (_, _, meter), routing in refused.items():
            period = self._period_of(routing, now)
            if routing.limits.base_limit(meter) is not None:
                used = (await self._store.usage(routing.org_id, period.key)).get(meter, 0)
                new += await self._claim(LIMIT_REACHED, routing, meter, period, 100, used)
        return new

    async def _forecasts(self, routing: OrgRouting, now: float) -> int:
        """``usage.forecast`` once a period per meter whose recent rate reaches its limit before
        the period ends (``policies.forecast``); looked at once a minute per org and key, from
        its first look with usage to count."""
        period = self._period_of(routing, now)
        start, end = period.start.timestamp(), period.end.timestamp()
        counters = await self._store.usage(routing.org_id, period.key)
        if len(self._forecast_at) > CLAIMED_KEPT:
            self._forecast_at.clear()
        new = 0
        for meter, limit in self._limited(routing):
            scope = (routing.org_id, meter)
            used = counters.get(meter, 0)
            if not used or now - self._forecast_at.get(scope, -1e18) < FORECAST_EVERY:
                continue
            self._forecast_at[scope] = now
            if used >= limit:
                continue  # reached already: usage.threshold and usage.limit_reached say so
            since = max(start, now - (WINDOW_HOURS + 1) * 3600)
            hours = dict(await self._store.usage_history(routing.org_id, meter, since, now + 1))
            reached = forecast(used, limit, hours, now, start, end).exhausted_at
            if reached is not None:
                at = reached.isoformat()
                new += await self._claim(FORECAST, routing, meter, period, 100, used, at)
        return new

    def _limited(self, routing: OrgRouting) -> list[tuple[str, int]]:
        """The org's limited meters and this key's (rates and credit are not usage)."""
        found = []
        for meter, limit in routing.limits.as_dict().items():
            key_id, _ = scope_of(meter)
            if not meter.startswith("rate_") and key_id in (None, routing.key_id):
                found.append((meter, limit))
        return found

    async def _claim(
        self,
        kind: str,
        routing: OrgRouting,
        meter: str,
        period: Period,
        threshold: int,
        used: int,
        exhausted_at: str | None = None,
    ) -> int:
        key_id, inner = scope_of(meter)
        limit = routing.limits.base_limit(meter) or 0
        crossing = Crossing(
            kind,
            routing.org_id,
            key_id,
            inner,
            period.start.isoformat(),
            period.end.isoformat(),
            threshold,
            used,
            limit,
            exhausted_at,
        )
        url = routing.notify_url or self._url
        if crossing.claim in self._claimed or url is None:
            return 0
        if len(self._claimed) > CLAIMED_KEPT:
            self._claimed.clear()  # a claim asked again is refused by the store: no repeat
        now = self._clock()
        event_id = new_id("evt")
        body = event_body(kind, event_id, now, crossing.data())
        added = await self._store.claim_notification(
            event_id, crossing.claim, routing.org_id, kind, url, body, now
        )
        self._claimed.add(crossing.claim)
        return int(added)

    # delivery

    async def deliver(self, client: httpx.AsyncClient) -> int:
        """Attempt every event due; how many were delivered."""
        if self._key is None:
            return 0
        now = self._clock()
        # One at a time, a batch small enough that even a receiver at the client timeout on
        # every attempt is done inside the lease: no other replica takes an event in flight.
        delivered = 0
        for event in await self._store.due_notifications(now, LEASE_SECONDS, BATCH):
            delivered += await self._deliver(client, event)
        return delivered

    async def _deliver(self, client: httpx.AsyncClient, event: Notification) -> int:
        error = await self._attempt(client, event)
        now = self._clock()
        if error is None:
            self._metrics.notifications.labels("delivered").inc()
            await self._store.notification_attempted(event.id, now, None, None)
            return 1
        if now - event.created_at >= GIVE_UP_SECONDS:
            self._metrics.notifications.labels("failed").inc()
            await self._store.notification_attempted(event.id, now, error, None)
        else:
            self._metrics.notifications.labels("retried").inc()
            next_at = now + retry_delay(event.attempts + 1)
            await self._store.notification_attempted(event.id, now, error, next_at)
        return 0

    async def _attempt(self, client: httpx.AsyncClient, event: Notification) -> str | None:
        assert self._key is not None
        timestamp = int(self._clock())
        body = event.body.encode()
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self._key, event.id, timestamp, body),
        }
        try:
            # An event written by the store itself (a billing suspension) goes to the URL set now.
            url = event.url or self._url
            assert url is not None
            response = await client.post(url, content=body, headers=headers)
        except Exception as exc:
            return type(exc).__name__  # never the URL or the body
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


def listed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The admin view of outbox rows: the event as sent, and its delivery state."""
    return [
        {**{k: v for k, v in row.items() if k != "body"}, "event": json.loads(row["body"])}
        for row in rows
    ]


def _check_url(url: str) -> None:
    """GATEWAY_NOTIFY_URL as an http(s) URL with a host and a valid port, or a ConfigError."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ConfigError("GATEWAY_NOTIFY_URL must be an http:// or https:// URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("GATEWAY_NOTIFY_URL must be an http:// or https:// URL with a host")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError("GATEWAY_NOTIFY_URL must have a port from 1 to 65535")
