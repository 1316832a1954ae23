"""The gates in order: key -> routing -> suspension -> rate -> usage, with shadow mode.

Shadow mode (global, or per org) runs every gate, counts what it would have refused,
and admits anyway, so that limits can be rolled out safely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import StoreError
from gateway.limits.budgets import REFUSED_PREFIX, SHADOW_PREFIX, Admission
from gateway.limits.guard import StoreGuard
from gateway.limits.rates import RateLimiter
from gateway.limits.routing import RoutingCache
from gateway.limits.usage import UsageGate
from gateway.metrics import Metrics
from policies.decisions import INVALID_INGEST_KEY, Refusal, store_unavailable, suspension_refusal
from policies.model import SENT_METERS, OrgRouting, Quantities, key_meter


@dataclass(frozen=True, slots=True)
class Authorized:
    routing: OrgRouting
    shadowed: Refusal | None = None


class AdmissionControl:
    def __init__(
        self,
        hasher: Callable[[str], bytes],
        routing: RoutingCache,
        usage: UsageGate,
        rates: RateLimiter,
        metrics: Metrics,
        guards: tuple[StoreGuard, ...],
        *,
        shadow: bool = False,
        observe: Callable[[OrgRouting, Refusal | None], None] | None = None,
    ) -> None:
        self._observe = observe  # notifications: which orgs, keys and refusals to look at
        self._guards = guards
        self._hasher = hasher
        self._routing = routing
        self._usage = usage
        self._rates = rates
        self._metrics = metrics
        self._shadow = shadow

    async def authorize(self, key: str | None) -> Authorized | Refusal:
        """Who is sending, and may they send at all (before the body is read)."""
        found = await self.identify(key)
        return found if isinstance(found, Refusal) else self.admits(found)

    async def identify(self, key: str | None) -> OrgRouting | Refusal:
        """The routing of the org behind ``key``, or why there is none."""
        if key is None:
            return INVALID_INGEST_KEY
        try:
            routing = await self._routing.lookup(self._hasher(key))
        except StoreError:
            return store_unavailable()
        return INVALID_INGEST_KEY if routing is None else routing

    def admits(self, routing: OrgRouting) -> Authorized | Refusal:
        """Whether the org may send at all: suspended, it is refused (noted in shadow mode)."""
        refusal = suspension_refusal(routing)
        if refusal is None:
            return Authorized(routing)
        if self._shadow or routing.shadow:
            return Authorized(routing, shadowed=refusal)
        return refusal

    def refused(self, routing: OrgRouting, code: str) -> None:
        """A request of a known org refused with ``code``: counted in its usage history
        (``refused:<code>``), what the console shows for the last 24 hours."""
        self._usage.record(routing, {REFUSED_PREFIX + code: 1})

    def precheck(self, auth: Authorized, floor: Quantities) -> Refusal | None:
        """A refusal already certain from what this process knows, before the body is read:
        the store said a meter is exhausted and even the least this request counts is over."""
        if auth.shadowed is not None or self._shadow or auth.routing.shadow:
            return None
        routing = auth.routing
        if routing.prices.priced:
            floor = floor.priced(routing.prices)
        return self._usage.known_refusal(routing, floor)

    async def admit(self, auth: Authorized, q: Quantities) -> Admission | Refusal:
        """Rate and usage for one request's quantities: admitted and counted, or refused."""
        routing = auth.routing
        if routing.prices.priced:
            q = q.priced(routing.prices)
        refusal = auth.shadowed or self._rates.check(routing, q)
        if refusal is None:
            outcome = await self._metered(routing, q)
            if isinstance(outcome, Admission):
                return outcome
            refusal = outcome
        if not (self._shadow or routing.shadow):
            return refusal
        self._metrics.shadow_refusals.labels(refusal.code).inc()
        self._usage.stats.shadow_refused += 1
        self._usage.record(routing, {SHADOW_PREFIX + m: q.of(m) for m in SENT_METERS})
        return self._usage.admit_unmetered(routing, q)

    async def admit_part(self, auth: Authorized, q: Quantities) -> Admission | Refusal:
        """The part of a refused batch that fits (partial admission): its usage only, as
        the whole batch already passed the rates."""
        prices = auth.routing.prices
        return await self._metered(auth.routing, q.priced(prices) if prices.priced else q)

    async def _metered(self, routing: OrgRouting, q: Quantities) -> Admission | Refusal:
        outcome = await self._usage.admit(routing, q)
        if self._observe is not None:
            self._observe(routing, outcome if isinstance(outcome, Refusal) else None)
        # Admitted while the store is failing: on last-known routing or unreserved quota.
        if isinstance(outcome, Admission) and (
            outcome.fail_open or any(guard.is_open for guard in self._guards)
        ):
            self._metrics.fail_open.inc()
        return outcome

    def items_fit(self, auth: Authorized, refusal: Refusal, signal: str) -> int:
        """How many items of ``signal`` would fit where ``refusal`` is a limit of an items
        meter (the org's or the key's); 0 for any other refusal, or when nothing fits."""
        detail = refusal.detail
        meter = detail.get("meter")
        if refusal.code != "usage_limit_exceeded" or meter not in ("items", f"{signal}.items"):
            return 0
        if detail.get("scope") == "key":
            meter = key_meter(str(detail.get("key_id")), str(meter))
        return self._usage.available(auth.routing, str(meter))

    def refund(self, admission: Admission) -> None:
        self._metrics.refunds.inc()
        self._usage.refund(admission)

    def refund_items(self, admission: Admission, items: int) -> None:
        """The upstream accepted the batch but rejected ``items`` of it (partial success)."""
        self._metrics.refunded_items.inc(self._usage.refund_items(admission, items))
