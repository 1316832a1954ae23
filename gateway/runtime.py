"""The runtime of one gateway process: its stores, caches, usage gate, rate limiter, spool,
upstream client and background tasks, shared by the ingest app and the admin app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from gateway.billing import reconciler
from gateway.billing.export import UsageExporter
from gateway.billing.notify import Notifier
from gateway.errors import StoreError
from gateway.ingest.body import BodyDeadlines
from gateway.ingest.keys import KeyHasher
from gateway.ingest.metering import MeteringMiddleware
from gateway.ingest.payload import BodyLimits, PayloadInspector
from gateway.ingest.upstream import HttpUpstream, LocalSink, Upstream
from gateway.limits.admission import AdmissionControl
from gateway.limits.guard import StoreGuard
from gateway.limits.invalidation import Invalidation, open_invalidation
from gateway.limits.rates import RateLimiter
from gateway.limits.readiness import Readiness
from gateway.limits.routing import RoutingCache
from gateway.limits.spool import Spool
from gateway.limits.usage import UsageGate
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import QuotaStore, Store, open_store
from gateway.types import ASGIApp
from policies.entitlements import Plan
from policies.model import Period
from policies.reservations import ChunkPolicy

HISTORY_PRUNE_SECONDS = 3600.0
log = logging.getLogger("gateway")
# Invalidation messages are org ids; this prefix asks holders to return an org's quota.
GIVE_BACK = "giveback:"
# An invalidation of this name drops every org's cached routing (a plan's limits changed).
EVERY_ORG = "*"


def build_store(settings: Settings) -> tuple[Store, QuotaStore]:
    """The durable store named by the settings, and the quota store the usage gate spends
    from: with a Redis URL, Redis counters in front of the durable store; else that store."""
    store = open_store(settings.store_url)
    if settings.redis_url:
        from gateway.store.redis_quota import RedisQuotaStore

        # A third of the gate's budget: a Redis that hangs leaves time to reserve in the truth.
        timeout = min(1.0, max(0.05, settings.gate_timeout / 3))
        return store, RedisQuotaStore(
            store, settings.redis_url, timeout=timeout, cluster=settings.redis_cluster
        )
    return store, store


class Runtime:
    """Owns the stores, caches, usage gate and upstream client of one process.

    ``store`` is the durable store (orgs, billing, leases, usage); ``quota`` the counters the
    usage gate reserves from, which is ``store`` itself unless Redis is in front of it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        quota: QuotaStore | None = None,
        upstream: Upstream | None = None,
        spool_dir: Path | bool | None = True,
        invalidation: Invalidation | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
        notify_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        # The wall clock (periods, leases) and the monotonic timer (TTLs, breakers, buckets),
        # injected so that tests can put them where a boundary is.
        self.clock = clock
        self.timer = timer
        if store is None:
            store, built = build_store(settings)
            quota = quota or built
        self.store: Store = store
        self.quota: QuotaStore = quota if quota is not None else store
        self.invalidation = (
            invalidation
            if invalidation is not None
            else open_invalidation(settings.store_url, settings.redis_url)
        )
        self.metrics = Metrics()
        metrics = self.metrics
        self.guard = StoreGuard(settings.gate_timeout, timer, metrics.store_call("quota"))
        self.hasher = KeyHasher(settings.key_secret_bytes())
        # Key lookups have a breaker and a budget of their own: a burst of never-seen keys
        # queueing on the store must not open the circuit for reservations, or get 503s.
        lookups = StoreGuard(settings.lookup_timeout, timer, metrics.store_call("lookups"))
        self.routing = RoutingCache(
            self.store,
            lookups,
            ttl=settings.cache_ttl,
            maxsize=settings.cache_max_keys,
            timer=timer,
        )
        spool_path = settings.data_dir / "spool" if spool_dir is True else spool_dir or None
        holder = uuid.uuid4().hex
        self.spool = Spool(spool_path, holder=holder)
        self.usage = UsageGate(
            self.quota,
            self.guard,
            self.spool,
            holder=holder,
            policy=ChunkPolicy(strict=settings.strict_limits),
            reservation_ttl=settings.reservation_ttl,
            on_new_period=self._claim_period,
            idle_after=2 * settings.flush_interval,
            on_contention=self._ask_give_back,
            clock=clock,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.exporter: UsageExporter | None = None
        # Rates are shared among the holders live in the store, counted once a flush tick. A
        # holder stays live for 5 ticks (at least 2 s): late ticks never make the others
        # over-admit, and a dead holder stops counting within seconds, not a reservation TTL.
        self.rates = RateLimiter(clock=timer)
        self._presence_ttl = max(2.0, 5 * settings.flush_interval)
        # A guard of its own: a slow count must not open the circuit for reservations.
        presence_budget = max(settings.gate_timeout, settings.flush_interval)
        self._presence = StoreGuard(presence_budget, timer, metrics.store_call("presence"))
        metrics.watch_breaker("quota", lambda: self.guard.is_open)
        metrics.watch_breaker("lookups", lambda: lookups.is_open)
        metrics.watch_breaker("presence", lambda: self._presence.is_open)
        metrics.reservations_in_flight.set_function(self.usage.refills_in_flight)
        self.notifier = Notifier(
            self.store, self.usage.period_of, settings, self.metrics, clock, notify_transport
        )
        self.admission = AdmissionControl(
            self.hasher,
            self.routing,
            self.usage,
            self.rates,
            self.metrics,
            (self.guard, lookups),
            shadow=settings.shadow,
            observe=self.notifier.observe if self.notifier.enabled else None,
        )
        self.upstream = (
            upstream if upstream is not None else HttpUpstream(timeout=settings.upstream_timeout)
        )
        self.sink = LocalSink(settings.data_dir / "sink")
        self.limits = BodyLimits(
            settings.max_body,
            settings.max_decompressed,
            settings.max_items,
            settings.count_inline_below,
        )
        self.inspector = PayloadInspector(self.limits)
        # Webhook and admin bodies: the same deadline as ingest, so no client holds a worker.
        self.bodies = BodyDeadlines(settings.body_timeout)
        self._flusher: asyncio.Task[None] | None = None
        self.readiness = Readiness(self._ping, self.guard, settings.gate_timeout, clock=timer)

    async def _ping(self) -> None:
        await self.store.ping()
        if self.quota is not self.store:
            await self.quota.ping()

    async def start(self) -> None:
        await self.store.open()
        if self.quota is not self.store:
            await self.quota.open()
        await self._seed_plans()
        await self.invalidation.start(self._on_message)
        self.spool.open()
        await self.upstream.start()
        await self.usage.flush()
        await self._share_rates(self._presence_ttl)
        self._flusher = asyncio.create_task(self._flush_forever())
        self._background(
            reconciler.run_forever(
                self.store,
                self.usage.holder,
                self.settings.reconcile_interval,
                timedelta(seconds=self.settings.suspension_grace),
                self.invalidate_org,
            )
        )
        self._background(self._prune_history_forever())
        if self.notifier.enabled:
            self._background(self.notifier.run_forever())
        self.exporter = UsageExporter(self.store, self.settings, holder=self.usage.holder)
        if self.exporter.enabled:
            self._background(self.exporter.run_forever())

    async def _seed_plans(self) -> None:
        """GATEWAY_PLANS and GATEWAY_PLAN_GRANTS (the old way) seed the catalog: a plan they
        name that it lacks is added with its grant and no limits; the catalog's stay."""
        names = self.settings.plan_names() | {self.settings.free_plan}
        grants = self.settings.grants()
        try:
            known = {plan.name for plan in await self.store.list_plans()}
            for name in sorted(names - known):
                await self.store.put_plan(Plan(name, grant_minor=grants.get(name, 0)))
        except StoreError:
            log.warning("plan catalog not seeded: store unavailable; it is seeded at next start")

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prune_history_forever(self) -> None:
        """Forget usage history older than GATEWAY_HISTORY_DAYS, hourly (any replica may)."""
        while True:
            try:
                await self.store.prune_history(self.clock() - self.settings.history_days * 86400)
            except StoreError as exc:
                log.warning("usage history not pruned: %s", exc)
            await asyncio.sleep(HISTORY_PRUNE_SECONDS)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                pending = await self.usage.flush()
            except Exception:
                log.exception("usage flush failed")
                continue
            await self._share_rates(self._presence_ttl)
            self.metrics.spool_pending.set(pending)
            self.metrics.store_reads.set(self.routing.store_reads)

    async def _share_rates(self, ttl: float) -> None:
        """Divide every org's rate among the live holders; keep the last count if none comes."""
        holder, now = self.usage.holder, self.clock()
        try:
            holders = await self._presence.call(lambda: self.store.live_holders(holder, now, ttl))
        except StoreError:
            return
        self.rates.share_among(holders)
        self.metrics.live_holders.set(holders)

    async def close(self) -> None:
        if self._flusher is not None:
            await _cancelled({self._flusher})
            self._flusher = None
        left = await self.usage.close()
        await self._share_rates(0.0)  # leave: the others' share grows at their next tick
        if left:
            log.warning("%d usage batches stay spooled until the store answers again", left)
        await asyncio.to_thread(self.spool.close)
        await self.upstream.close()
        self.inspector.close()
        await self.invalidation.close()
        await _cancelled(set(self._tasks))
        if self.exporter is not None:
            await self.exporter.close()
        if self.quota is not self.store:
            await self.quota.close()
        await self.store.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.close()

    def middleware(self, app: ASGIApp) -> MeteringMiddleware:
        """The gates in front of any ASGI app (the proxy, or an ingest service's own)."""
        return MeteringMiddleware(
            app,
            self.admission,
            self.metrics,
            limits=self.limits,
            body_timeout=self.settings.body_timeout,
            inspector=self.inspector,
            partial_admission=self.settings.partial_admission,
        )

    async def invalidate_org(self, org_id: str) -> None:
        """Drop the org's cached routing here at once, and on every other replica."""
        await self._drop_org(org_id)
        try:
            await self.invalidation.publish(org_id)
        except StoreError:
            log.warning("could not tell other replicas; they refresh within the cache TTL")

    async def _on_message(self, message: str) -> None:
        """An org id to drop, or ``giveback:<org>:<holder>`` from a holder the store refused."""
        kind, _, rest = message.partition(GIVE_BACK)
        if kind:
            await self._drop_org(message)
            return
        org_id, _, holder = rest.rpartition(":")
        if holder != self.usage.holder and self.usage.give_back(org_id):
            self._background(self._flush_quietly())

    def _ask_give_back(self, org_id: str) -> None:
        async def ask() -> None:
            try:
                await self.invalidation.publish(f"{GIVE_BACK}{org_id}:{self.usage.holder}")
            except StoreError:
                log.debug("could not ask other replicas to give back quota of %s", org_id)

        self._background(ask())

    async def _flush_quietly(self) -> None:
        try:
            await self.usage.flush()
        except Exception:
            log.exception("usage flush failed")

    async def _drop_org(self, org_id: str) -> None:
        if org_id == EVERY_ORG:  # a plan changed: every org on it, whichever they are
            self.routing.invalidate_all()
            self.usage.invalidate_all()
            return
        self.routing.invalidate_org(org_id)
        self.usage.invalidate_org(org_id)

    def _claim_period(self, org_id: str, period: Period) -> None:
        """The first replica to see an org's new period claims its reset; counting never waits."""

        async def claim() -> None:
            try:
                if await self.guard.call(lambda: self.store.claim_period(org_id, period.key)):
                    self.metrics.period_resets.inc()
                    org = {"org_id": org_id}
                    log.info("claimed the period reset of %s for %s", org_id, period.key, extra=org)
            except StoreError:
                log.warning(
                    "period reset claim for %s deferred: store unavailable",
                    org_id,
                    extra={"org_id": org_id},
                )

        self._background(claim())

    async def ready(self) -> bool:
        """The reservation breaker is closed and the store answered a ping in the last second;
        never a store call of its own through ``self.guard`` (see gateway/limits/readiness.py)."""
        return await self.readiness.ready()


async def _cancelled(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` until they end. Once was not always enough: a flush loop was seen
    cancelling yet going round again (a close that never returned), most likely a store call's
    ``asyncio.wait_for`` finishing as the cancel arrived, which swallows it on Python 3.11."""
    pending = tasks
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
