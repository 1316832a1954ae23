"""The usage gate: exact per-period limits spent from reservations held in memory.

Each (org, period) has a local budget per limited meter, reserved from the store in
chunks (``policies.reservations``). A request spends all of its meters from the
budget or none; when a meter runs short, one refill per org goes to the store while
the org's other requests wait for it. Spent quantities are flushed as idempotent
batches through the spool. When the store fails, known orgs are admitted (fail-open)
and their usage is spooled like any other; local budgets are forfeited, never trusted
past their reservations' expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial

from gateway.errors import StoreError
from gateway.limits.budgets import (
    CREDIT_PERIOD,
    Account,
    Admission,
    Budget,
    Known,
    Spent,
    UsageStats,
    lanes_of,
    split_limits,
    zero_limit_refusal,
)
from gateway.limits.guard import StoreGuard
from gateway.limits.spool import Spool
from gateway.store.base import QuotaStore
from gateway.store.records import Exhausted, ReserveRequest, UsageBatch
from policies.decisions import Refusal, quota_held_elsewhere, usage_exceeded
from policies.model import OrgRouting, Period, Quantities, key_meter
from policies.periods import period_at
from policies.reservations import ChunkPolicy, worth_waiting_for

log = logging.getLogger("gateway.limits.usage")

#: Batches committed in one store call (one transaction) by a flush.
FLUSH_GROUP = 500


class UsageGate:
    def __init__(
        self,
        store: QuotaStore,
        guard: StoreGuard,
        spool: Spool,
        *,
        holder: str | None = None,
        policy: ChunkPolicy | None = None,
        reservation_ttl: float = 60.0,
        known_ttl: float = 1.0,
        flush_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_new_period: Callable[[str, Period], None] | None = None,
        idle_after: float | None = None,
        on_contention: Callable[[str], None] | None = None,
    ) -> None:
        self._on_new_period = on_new_period
        # A budget nobody spent from for this long goes back to the store at the next flush.
        self._idle_after = idle_after
        # Called when the store refused while other holders still held unspent quota.
        self._on_contention = on_contention
        self._contention_asked: dict[str, float] = {}
        self._committing: dict[str, Budget] = {}
        self.holder = holder or uuid.uuid4().hex
        self._store = store
        self._guard = guard
        self._spool = spool
        self._policy = policy or ChunkPolicy()
        self._ttl = reservation_ttl
        self._known_ttl = known_ttl
        self._flush_timeout = flush_timeout
        self._clock = clock
        self._budgets: dict[tuple[str, str], Budget] = {}
        self._period = period_at(clock())
        self._period_bounds = (self._period.start.timestamp(), self._period.end.timestamp())
        self._last_heartbeat = clock()
        self._flush_lock = asyncio.Lock()
        self._orphans: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.stats = UsageStats()

    def period_of(self, routing: OrgRouting, now: float) -> Period:
        """The org's billing period (rolled forward past its end), else the calendar month."""
        if routing.period is None:
            return self.current_period(now)
        return period_at(now, routing.period)

    def budget_of(self, org_id: str, period: Period) -> Budget | None:
        return self._budgets.get((org_id, period.key))

    def refills_in_flight(self) -> int:  # for /metrics
        return sum(budget.refill is not None for budget in self._budgets.values())

    def current_period(self, now: float) -> Period:
        # Cached: building a calendar month costs about 4 µs, this check under 0.1 µs.
        start, end = self._period_bounds
        if not start <= now < end:
            self._period = period_at(now)
            self._period_bounds = (self._period.start.timestamp(), self._period.end.timestamp())
        return self._period

    def _budget(self, org_id: str, period: Period) -> Budget:
        key = (org_id, period.key)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = Budget(period)
            if self._on_new_period is not None and period is not CREDIT_PERIOD:
                self._on_new_period(org_id, period)
        return budget

    def _accounts(self, routing: OrgRouting, q: Quantities, now: float) -> list[Account]:
        limits = routing.limits
        main = self._budget(routing.org_id, self.period_of(routing, now))
        limited, capped = split_limits(limits)
        accounts: list[Account] = [(main, limited, q.sent(routing.key_id))]
        if q.credit or capped:
            credit = self._budget(routing.org_id, CREDIT_PERIOD)
            accounts.append((credit, capped, {"credit": q.credit}))
        return accounts

    async def admit(self, routing: OrgRouting, q: Quantities) -> Admission | Refusal:
        now = self._clock()
        accounts = self._accounts(routing, q, now)
        for budget, limited, _ in accounts:
            if budget.limits_seen is not limited and budget.limits_changed(limited, routing.key_id):
                budget.forfeit()  # what was reserved under the old limits goes back first
                await self.flush()
        while True:
            for budget, limited, counted in accounts:
                if deficit := budget.deficit(limited, counted):
                    break
            else:
                admission = self._spend(routing, q, accounts)
                self._refill_ahead(routing, accounts)
                return admission
            refusal = zero_limit_refusal(budget, limited, deficit) or self._known_refusal(
                budget, deficit, now
            )
            if refusal is not None:
                return refusal
            if budget.refill is not None:
                await asyncio.shield(budget.refill)
                continue
            try:
                refusal = await self._refill(routing, budget, deficit)
            except StoreError:
                # Fail open, but not for an org the store last said was over its limit.
                refusal = self._known_refusal(budget, deficit, now=float("-inf"))
                if refusal is not None:
                    return refusal
                self.stats.fail_open += 1
                return self._spend(routing, q, accounts, reserved=False, fail_open=True)
            if refusal is not None:
                return refusal

    def known_refusal(self, routing: OrgRouting, floor: Quantities) -> Refusal | None:
        """The refusal of a request counting at least ``floor``, if the store's last word on
        an exhausted meter settles it; never asks the store."""
        now, org = self._clock(), routing.org_id
        # The common case (nothing exhausted) without building the request's accounts.
        periods = (self.period_of(routing, now).key, CREDIT_PERIOD.key)
        if not any((b := self._budgets.get((org, p))) and b.exhausted for p in periods):
            return None
        for budget, limited, counted in self._accounts(routing, floor, now):
            refusal = budget.exhausted and self._known_refusal(
                budget, budget.deficit(limited, counted), now
            )
            if refusal:
                return refusal
        return None

    def available(self, routing: OrgRouting, meter: str) -> int:
        """What this process could spend of a meter the store said is exhausted: its own
        reservation plus what the store had left (0 when the store has not said so lately)."""
        now = self._clock()
        budget = self.budget_of(routing.org_id, self.period_of(routing, now))
        known = None if budget is None else budget.exhausted.get(meter)
        if budget is None or known is None or known.until <= now:
            return 0
        return budget.remaining.get(meter, 0) + max(0, known.left)

    def _refill_ahead(self, routing: OrgRouting, accounts: list[Account]) -> None:
        """Below a quarter of the last grant, refill in the background: requests keep
        spending what is left instead of all waiting for the store when it runs out."""
        if self._policy.strict:
            return  # strict mode asks the store for exactly what each request needs
        for budget, limited, _ in accounts:
            if budget.refill is not None:
                continue
            left, low_water, exhausted = budget.remaining, budget.low_water, budget.exhausted
            low = {m: 1 for m, _ in limited
                   if left.get(m, 0) < low_water.get(m, 0) and m not in exhausted}  # fmt: skip
            if low:
                task = asyncio.create_task(self._refill_quietly(routing, budget, low))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _refill_quietly(
        self, routing: OrgRouting, budget: Budget, needs: dict[str, int]
    ) -> None:
        if budget.refill is not None:
            return  # a request's own refill started meanwhile: one refill per budget at a time
        with contextlib.suppress(StoreError):
            await self._refill(routing, budget, needs)

    def _known_refusal(self, budget: Budget, deficit: dict[str, int], now: float) -> Refusal | None:
        for meter, need in deficit.items():
            known = budget.exhausted.get(meter)
            if known is not None and known.until > now and need > known.left:
                if known.held_elsewhere:
                    return quota_held_elsewhere(meter)
                return known.refusal(meter, budget.period.end)
        return None

    async def _refill(
        self, routing: OrgRouting, budget: Budget, deficit: dict[str, int]
    ) -> Refusal | None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        budget.refill = future
        generation = budget.generation
        # What this process holds of each meter before asking (our commits during the call
        # move quota from reservation to usage): only this compares with the store's answer.
        held = {m: budget.remaining.get(m, 0) + budget.local_used(m) for m in deficit}
        try:
            self.stats.refills += 1
            request = ReserveRequest(
                holder=self.holder,
                org_id=routing.org_id,
                period_start=budget.period.key,
                needs=deficit,
                policy=self._policy,
                now=self._clock(),
                ttl=self._ttl,
                limits=routing.limits,
                period_end=budget.period.end.timestamp(),
            )
            result = await self._guard.call(lambda: self._store.reserve(request))
            if isinstance(result, Exhausted):
                left = result.limit - result.taken
                committed = result.taken if result.committed is None else result.committed
                until = self._clock() + self._known_ttl
                meter = result.meter
                elsewhere = worth_waiting_for(
                    result.taken - committed - held.get(meter, 0),
                    deficit[meter],
                    result.limit - committed,
                )
                # Usage: what is taken less what we still hold unspent (commits keep the sum).
                used = max(committed, result.taken - budget.remaining.get(meter, 0))
                cap = routing.limits.overage_cap(meter) or 0  # the store's bound: limit + cap
                limit = result.limit - cap
                budget.exhausted[meter] = Known(left, limit, used, until, elsewhere, cap)
                if elsewhere:
                    # The org is not at its limit: others hold its quota. Ask for it, and tell
                    # the client to retry (429) rather than drop the batch (402 is final).
                    self._ask_others(routing.org_id)
                    return quota_held_elsewhere(meter)
                return usage_exceeded(meter, limit, used, budget.period.end, cap)
            if budget.generation != generation:
                return None  # forfeited meanwhile; the grant stays unused until it expires
            budget.active = self._clock()
            for meter, amount in result.amounts.items():
                budget.remaining[meter] = budget.remaining.get(meter, 0) + amount
                budget.low_water[meter] = amount // 4
                budget.exhausted.pop(meter, None)
            return None
        finally:
            budget.refill = None
            future.set_result(None)

    def _ask_others(self, org_id: str) -> None:
        """Ask the other holders to give the org's unspent quota back now (once a second)."""
        now = self._clock()
        if self._on_contention is None or now - self._contention_asked.get(org_id, -1e18) < 1.0:
            return
        self._contention_asked[org_id] = now
        self._on_contention(org_id)

    def give_back(self, org_id: str, idle_for: float = 0.1) -> bool:
        """Return the org's unspent reservations at the next flush (another holder needs them),
        unless this process is spending them right now; True when there was something to return."""
        returned = False
        now = self._clock()
        for (org, _), budget in self._budgets.items():
            if (
                org == org_id
                and budget.refill is None
                and now - budget.active >= idle_for
                and any(budget.remaining.values())
            ):
                budget.forfeit()
                returned = True
        return returned

    def _spend(
        self,
        routing: OrgRouting,
        q: Quantities,
        accounts: list[Account],
        *,
        reserved: bool = True,
        fail_open: bool = False,
    ) -> Admission:
        parts = []
        for budget, limited, counted in accounts:
            taken = []
            if reserved:
                budget.active = self._clock()
                for meter, _ in limited:
                    n = counted.get(meter, 0)
                    if n:
                        budget.remaining[meter] -= n
                        budget.reserved[meter] = budget.reserved.get(meter, 0) - n
                        taken.append((meter, n))
            usage = {m: n for m, n in counted.items() if n}
            self._count(routing.org_id, budget, usage)
            parts.append(
                Spent(budget.period.key, budget.generation, tuple(usage.items()), tuple(taken))
            )
        return Admission(routing, q, tuple(parts), fail_open=fail_open)

    def _count(self, org_id: str, budget: Budget, used: dict[str, int]) -> None:
        """Usage to commit: in memory for the next flush, and in the spool at once."""
        for meter, delta in used.items():
            budget.used[meter] = budget.used.get(meter, 0) + delta
        self._spool.record_spend(org_id, budget.period.key, used)

    def admit_unmetered(self, routing: OrgRouting, q: Quantities) -> Admission:
        """Count a request that passes regardless of limits (shadow mode)."""
        return self._spend(routing, q, self._accounts(routing, q, self._clock()), reserved=False)

    def record(self, routing: OrgRouting, counts: dict[str, int]) -> None:
        """Count meters no limit reads (shadow refusals, refusals by code) with the next flush."""
        budget = self._budget(routing.org_id, self.period_of(routing, self._clock()))
        self._count(routing.org_id, budget, counts)

    def refund(self, admission: Admission) -> None:
        """The upstream did not accept the batch: the org pays nothing for it."""
        for part in admission.parts:
            self._give_back_part(admission.routing.org_id, part, dict(part.counted))

    def refund_items(self, admission: Admission, items: int) -> int:
        """The upstream rejected ``items`` of an accepted batch: those (and their price) are
        not charged. Returns the items refunded (never more than were counted)."""
        items = min(items, admission.quantities.items)
        if items <= 0:
            return 0
        credit = items * (admission.routing.prices.items or 0)
        refunded = [("items", items), ("credit", credit)]
        if admission.quantities.signal is not None:
            refunded.append((f"{admission.quantities.signal}.items", items))
        key_id = admission.routing.key_id
        if key_id is not None:
            refunded += [(key_meter(key_id, m), n) for m, n in refunded if m != "credit"]
        for part in admission.parts:
            counted = dict(part.counted)
            deltas = {m: min(n, counted[m]) for m, n in refunded if n and counted.get(m)}
            if deltas:
                self._give_back_part(admission.routing.org_id, part, deltas)
        return items

    def _give_back_part(self, org_id: str, part: Spent, deltas: dict[str, int]) -> None:
        budget = self._budgets.get((org_id, part.period_key))
        if budget is None:
            budget = Budget(self.current_period(self._clock()), generation=-1)
            self._budgets[(org_id, part.period_key)] = budget
        self._count(org_id, budget, {m: -n for m, n in deltas.items()})
        if part.generation != budget.generation:
            return  # its reservation was forfeited: no longer ours to reuse
        for meter, n in part.reserved:
            n = min(n, deltas.get(meter, 0))
            if n:
                budget.remaining[meter] = budget.remaining.get(meter, 0) + n
                budget.reserved[meter] = budget.reserved.get(meter, 0) + n

    def forfeit(self) -> None:
        """Give up every local budget (its reservation may have expired in the store)."""
        for budget in self._budgets.values():
            budget.forfeit()

    def _take_batches(self, *, release: bool) -> list[UsageBatch]:
        now = self._clock()
        batches = []
        idle_after = self._idle_after
        for (org_id, period_key), budget in list(self._budgets.items()):
            over = budget.period.end.timestamp() <= now
            if (
                idle_after is not None
                and not (release or over)
                and budget.refill is None
                and now - budget.active >= idle_after
                and any(budget.remaining.values())
            ):
                budget.forfeit()  # idle: the unspent part goes back with this batch
            if release or over:
                budget.release_remaining()
            if budget.pending():
                batch = UsageBatch(
                    batch_id=uuid.uuid4().hex,
                    holder=self.holder,
                    org_id=org_id,
                    period_start=period_key,
                    used={m: v for m, v in budget.used.items() if v},
                    reserved={m: v for m, v in budget.reserved.items() if v},
                    at=now,
                )
                batches.append(batch)
                for meter, n in batch.used.items():
                    budget.committing[meter] = budget.committing.get(meter, 0) + n
                self._committing[batch.batch_id] = budget
                budget.used = {}
                budget.reserved = {}
            if over and budget.refill is None:
                del self._budgets[(org_id, period_key)]
        return batches

    async def flush(self, *, release: bool = False) -> int:
        """Spool what was spent, adopt dead holders' spools, commit everything pending.

        Returns how many batches are still pending.
        """
        async with self._flush_lock:
            batches = self._take_batches(release=release)
            self._spool.append(batches)
            for orphan in self._spool.adopt():
                log.info("adopted the spool of dead holder %s", orphan.holder)
                self._orphans.add(orphan.holder)
            await asyncio.to_thread(self._spool.sync)
            done: list[str] = []
            try:
                # An org's batches stay in one lane, in their order.
                lanes = [self._commit_lane(lane, done) for lane in lanes_of(self._spool.pending())]
                failed = [e for e in await asyncio.gather(*lanes, return_exceptions=True) if e]
                if failed:
                    raise failed[0]
                # Renewed a quarter of ``ttl`` apart, not each flush: a write of every row.
                if release or self._clock() - self._last_heartbeat >= self._ttl / 4:
                    await self._guard.call(
                        lambda: self._store.heartbeat(self.holder, self._clock(), self._ttl),
                        budget=self._flush_timeout,
                    )
                    self._last_heartbeat = self._clock()
                # A dead holder's usage is committed: its reservations can go back now.
                for holder in list(self._orphans):
                    await self._guard.call(
                        partial(self._store.release, holder), budget=self._flush_timeout
                    )
                    self._orphans.discard(holder)
            except StoreError:
                self.stats.flush_failures += 1
                if self._clock() - self._last_heartbeat > self._ttl / 2:
                    self.forfeit()
            finally:
                if done:
                    await asyncio.to_thread(self._spool.done, done)
            return len(self._spool.pending())

    async def _commit_lane(self, lane: list[UsageBatch], done: list[str]) -> None:
        for group in (lane[i : i + FLUSH_GROUP] for i in range(0, len(lane), FLUSH_GROUP)):
            commit = partial(self._store.commit_many, group)
            await self._guard.call(commit, budget=self._flush_timeout)
            done += [batch.batch_id for batch in group]
            for batch in group:
                if (budget := self._committing.pop(batch.batch_id, None)) is not None:
                    budget.committed(batch.used)

    async def close(self) -> int:
        """Flush everything and hand unspent reservations back; returns batches still pending."""
        left = await self.flush(release=True)
        try:
            await self._guard.call(partial(self._store.release, self.holder), budget=5.0)
        except StoreError:
            log.warning("could not release reservations; they expire in %.0f s", self._ttl)
        return left

    async def settled(self) -> None:
        """Wait for the refills running behind requests."""
        await asyncio.gather(*self._background, return_exceptions=True)

    def invalidate_all(self) -> None:
        for budget in self._budgets.values():
            budget.exhausted.clear()

    def invalidate_org(self, org_id: str) -> None:
        """Forget cached exhaustion for an org whose limits changed."""
        for (org, _), budget in self._budgets.items():
            if org == org_id:
                budget.exhausted.clear()
