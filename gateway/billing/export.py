"""Usage export: each org's metered usage pushed to its billing provider's meter API.

One replica at a time exports (the ``usage-export`` lease, kept between runs). For every
(org, provider, period, meter) the store holds a cursor: the usage total the provider has
confirmed. A run sends ``usage - cursor`` in one request whose idempotency key names the
total it confirms (``org:period:meter:total``), and moves the cursor only after a 2xx.

A request without a 2xx may still have been processed (the answer was lost), so it is kept
as pending and re-sent unchanged (key, value and timestamp) before any new delta of that
meter; the provider dedupes it. Usage is never lost: the cursor only moves on success.
Pending attempts live in memory: a restart or a lease handover while one is unanswered
can count its delta twice under a different key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp

from gateway.settings import Settings
from policies.billing import BillingState
from policies.model import Period
from policies.periods import calendar_month, month_before, period_for

log = logging.getLogger(__name__)

LEASE = "usage-export"


class ExportStore(Protocol):
    """The part of the Store the exporter uses."""

    async def billing_orgs(self) -> list[tuple[str, dict[str, str]]]: ...
    async def billing_state(self, org_id: str) -> BillingState | None: ...
    async def usage(self, org_id: str, period_start: str) -> dict[str, int]: ...
    async def exported(self, org_id: str, provider: str, period_start: str) -> dict[str, int]: ...
    async def record_export(
        self, org_id: str, provider: str, period_start: str, meter: str, value: int
    ) -> None: ...
    async def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool: ...
    async def release_lease(self, name: str, holder: str) -> None: ...


@dataclass(frozen=True)
class ExportReport:
    sent: int
    failed: int
    skipped_lease: bool


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """One request to a provider; after a lost answer it is re-sent exactly as it was."""

    org_id: str
    provider: str
    period_start: str
    meter: str
    customer_id: str
    event_name: str  # the provider's meter (Stripe) or feature (Autumn)
    total: int  # the usage total this request confirms
    delta: int
    timestamp: int

    @property
    def key(self) -> str:
        return f"{self.org_id}:{self.period_start}:{self.meter}:{self.total}"

    @property
    def slot(self) -> tuple[str, str, str, str]:
        return (self.org_id, self.provider, self.period_start, self.meter)


@dataclass(frozen=True, slots=True)
class _Provider:
    name: str
    url: str
    api_key: str = field(repr=False)
    meters: dict[str, str]  # our meter -> the provider's name for it

    def request(self, event: MeterEvent) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError


class _Stripe(_Provider):
    def request(self, event: MeterEvent) -> tuple[str, dict[str, Any]]:
        form = {
            "event_name": event.event_name,
            "payload[stripe_customer_id]": event.customer_id,
            "payload[value]": str(event.delta),
            "identifier": event.key,
            "timestamp": str(event.timestamp),
        }
        headers = {"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": event.key}
        return f"{self.url}/v1/billing/meter_events", {"data": form, "headers": headers}


class _Autumn(_Provider):
    def request(self, event: MeterEvent) -> tuple[str, dict[str, Any]]:
        body = {
            "customer_id": event.customer_id,
            "feature_id": event.event_name,
            "value": event.delta,
            "idempotency_key": event.key,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return f"{self.url}/v1/track", {"json": body, "headers": headers}


def _providers(settings: Settings) -> list[_Provider]:
    found: list[_Provider] = []
    stripe = settings.meter_names(settings.stripe_meters, "GATEWAY_STRIPE_METERS")
    if settings.stripe_api_key and stripe:
        url = settings.stripe_api_url.rstrip("/")
        found.append(_Stripe("stripe", url, settings.stripe_api_key, stripe))
    autumn = settings.meter_names(settings.autumn_features, "GATEWAY_AUTUMN_FEATURES")
    if settings.autumn_api_key and autumn:
        url = settings.autumn_api_url.rstrip("/")
        found.append(_Autumn("autumn", url, settings.autumn_api_key, autumn))
    return found


def export_periods(
    now: datetime, billing: Period | None, before: Period | None = None
) -> list[Period]:
    """The org's current period, then those whose tail may still be unsent.

    ``billing`` is the period the store knows; ``before`` the one this process saw before
    it (the period a renewal closed). When nothing before a billing period is known, a monthly
    one is assumed: a wrong guess only reads counters that do not exist.
    """
    current = period_for(now, billing)
    candidates = [current, calendar_month(current.start - timedelta(microseconds=1))]
    for period in (billing, before):
        if period is not None and period.end <= now:
            candidates.append(period)
    if current == billing:
        candidates.append(Period(month_before(current.start), current.start))
    unique: dict[str, Period] = {}
    for period in candidates:
        unique.setdefault(period.key, period)
    return list(unique.values())


@dataclass(slots=True)
class _Run:
    now: float
    sent: int = 0
    failed: int = 0
    down: set[str] = field(default_factory=set)  # providers unreachable during this run
    lost_lease: bool = False


class UsageExporter:
    def __init__(
        self,
        store: ExportStore,
        settings: Settings,
        *,
        holder: str,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        request_timeout: float = 5.0,
        max_connections: int = 8,
    ) -> None:
        self._store = store
        self._holder = holder
        self._clock = clock
        self._interval = settings.export_interval
        self._ttl = 3 * settings.export_interval
        self._providers = {p.name: p for p in _providers(settings)}
        self._secrets = [p.api_key for p in self._providers.values()]
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_connections = max_connections
        self._pending: dict[tuple[str, str, str, str], MeterEvent] = {}
        self._billing: dict[str, Period] = {}  # org -> its billing period at the last run
        self._before: dict[str, Period] = {}  # org -> the billing period before that one
        self._lease_at: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._providers)

    @property
    def pending(self) -> list[MeterEvent]:
        return list(self._pending.values())

    async def run_once(self) -> ExportReport:
        run = _Run(now=self._clock())
        if not self.enabled:
            return ExportReport(0, 0, skipped_lease=False)
        if not await self._store.acquire_lease(LEASE, self._holder, run.now, self._ttl):
            self._lease_at = None
            return ExportReport(0, 0, skipped_lease=True)
        self._lease_at = run.now
        # A lost answer is settled before any new delta of the same meter is computed.
        for event in list(self._pending.values()):
            await self._retry(run, event)
        orgs = await self._store.billing_orgs()
        gate = asyncio.Semaphore(self._max_connections)

        async def export(org_id: str, customers: dict[str, str]) -> None:
            async with gate:
                if run.lost_lease or not await self._keep_lease(run):
                    return
                try:
                    await self._export_org(run, org_id, customers)
                except Exception:
                    run.failed += 1
                    log.exception("usage export of %s failed", org_id)

        await asyncio.gather(*(export(org_id, customers) for org_id, customers in orgs))
        return ExportReport(run.sent, run.failed, skipped_lease=False)

    async def run_forever(self) -> None:
        while True:
            try:
                report = await self.run_once()
                if report.sent or report.failed:
                    log.info("usage export: %d sent, %d failed", report.sent, report.failed)
            except Exception:
                log.exception("usage export run failed; retrying next interval")
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        if self._lease_at is not None:
            self._lease_at = None
            try:
                await self._store.release_lease(LEASE, self._holder)
            except Exception:
                log.warning("could not release the usage export lease; it expires on its own")
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _keep_lease(self, run: _Run) -> bool:
        """Renew the lease during a long run, well before it would expire."""
        now = self._clock()
        if self._lease_at is not None and now - self._lease_at < self._ttl / 3:
            return True
        if await self._store.acquire_lease(LEASE, self._holder, now, self._ttl):
            self._lease_at = now
            return True
        log.warning("lost the usage export lease mid-run; another replica continues")
        self._lease_at = None
        run.lost_lease = True
        return False

    async def _retry(self, run: _Run, event: MeterEvent) -> None:
        try:
            done = await self._store.exported(event.org_id, event.provider, event.period_start)
        except Exception:
            run.failed += 1
            log.exception("could not read the export cursor of %s", event.org_id)
            return
        if done.get(event.meter, 0) >= event.total:
            del self._pending[event.slot]  # confirmed since, by this or another replica
            return
        await self._deliver(run, self._providers[event.provider], event)

    async def _export_org(self, run: _Run, org_id: str, customers: dict[str, str]) -> None:
        providers = [p for p in self._providers.values() if customers.get(p.name)]
        if not providers:
            return
        state = await self._store.billing_state(org_id)
        billing = state.period if state is not None else None
        now = datetime.fromtimestamp(run.now, UTC)
        if billing is not None:
            last = self._billing.setdefault(org_id, billing)
            if last != billing:
                self._before[org_id], self._billing[org_id] = last, billing
        periods = export_periods(now, billing, self._before.get(org_id))
        for period in periods:
            usage = await self._store.usage(org_id, period.key)
            if not any(usage.values()):
                continue
            # The usage happened inside the period; a closed period's tail is dated to its end.
            stamp = min(int(run.now), int(period.end.timestamp()) - 1)
            for provider in providers:
                if provider.name in run.down:
                    continue
                done = await self._store.exported(org_id, provider.name, period.key)
                for meter, event_name in provider.meters.items():
                    if (org_id, provider.name, period.key, meter) in self._pending:
                        continue  # its earlier attempt is still unanswered
                    total = usage.get(meter, 0)
                    if total - done.get(meter, 0) <= 0:
                        continue
                    event = MeterEvent(
                        org_id=org_id,
                        provider=provider.name,
                        period_start=period.key,
                        meter=meter,
                        customer_id=customers[provider.name],
                        event_name=event_name,
                        total=total,
                        delta=total - done.get(meter, 0),
                        timestamp=stamp,
                    )
                    await self._deliver(run, provider, event)

    async def _deliver(self, run: _Run, provider: _Provider, event: MeterEvent) -> None:
        """Send one event and move the cursor; anything short of that leaves it pending."""
        if provider.name in run.down:
            return
        self._pending[event.slot] = event
        url, kwargs = provider.request(event)
        try:
            async with self._http().post(url, timeout=self._timeout, **kwargs) as resp:
                if not 200 <= resp.status < 300:
                    body = (await resp.content.read(300)).decode("utf-8", "replace")
                    run.failed += 1
                    log.warning(
                        "%s refused usage %s (%d): %s",
                        provider.name,
                        event.key,
                        resp.status,
                        self._redact(body),
                    )
                    return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            run.failed += 1
            run.down.add(provider.name)
            log.warning(
                "%s unreachable sending usage %s (%s); the rest waits for the next run",
                provider.name,
                event.key,
                self._redact(f"{type(exc).__name__}: {exc}"),
            )
            return
        try:
            await self._store.record_export(
                event.org_id, event.provider, event.period_start, event.meter, event.total
            )
        except Exception:
            run.failed += 1
            log.exception("%s accepted usage %s but recording it failed", provider.name, event.key)
            return
        del self._pending[event.slot]
        run.sent += 1

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text
