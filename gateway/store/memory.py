"""An in-memory store: the reference semantics of the Protocols, for tests and demos.

Accuracy and durability: exact within one process, durable not at all: everything is lost
with the process, and no other process sees it. Never a production store.

Every method runs without awaiting anything, so each is atomic on the event loop; the
billing half (state, ledger, webhook events, audit) is ``memory_billing.MemoryBilling``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from gateway.errors import Conflict
from gateway.store import sql_history
from gateway.store.memory_billing import MemoryBilling
from gateway.store.memory_notify import MemoryNotifications
from gateway.store.normal import (
    org_audit,
    suspension_audit,
)
from gateway.store.records import (
    HOLDER_LEASE,
    AuditRow,
    CustomerTaken,
    Exhausted,
    Granted,
    KeyRecord,
    OrgChanges,
    OrgRecord,
    QuotaSnapshot,
    ReservationRow,
    ReserveRequest,
    ReserveResult,
    UsageBatch,
    new_id,
)
from policies.billing import BillingState
from policies.entitlements import Plan, plan_limits
from policies.model import NO_LIMITS, Limits, OrgRouting, is_quota_meter, lock_order


@dataclass(slots=True)
class _Reservation:
    amount: int
    expires_at: float


class MemoryStore(MemoryBilling, MemoryNotifications):
    def __init__(self) -> None:
        super().__init__()
        MemoryNotifications.__init__(self)
        self.orgs: dict[str, OrgRecord] = {}
        self.keys: dict[bytes, tuple[KeyRecord, bool]] = {}
        self.key_ids: dict[str, bytes] = {}
        self.plans: dict[str, Plan] = {}
        self.counters: dict[tuple[str, str, str], int] = {}
        self.reservations: dict[tuple[str, str, str, str], _Reservation] = {}
        # batch id -> the (org, period) it was applied to
        self.applied: dict[str, tuple[str, str]] = {}
        self.stale: dict[tuple[str, str], int] = {}
        self.periods: dict[str, str] = {}
        # (provider, customer id) -> org
        self.customers: dict[tuple[str, str], str] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self.exports: dict[tuple[str, str, str, str], int] = {}
        self.history: dict[tuple[str, str, int], int] = {}  # (org, meter, hour) -> usage

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def put_plan(self, plan: Plan) -> None:
        self.plans[plan.name] = plan

    async def get_plan(self, name: str) -> Plan | None:
        return self.plans.get(name)

    async def list_plans(self) -> list[Plan]:
        return [self.plans[name] for name in sorted(self.plans)]

    async def delete_plan(self, name: str) -> bool:
        if any(state.plan == name for state in self.billing.values()):
            raise Conflict(f"an org is on plan {name!r}")
        return self.plans.pop(name, None) is not None

    async def routing_for_key(self, key_hash: bytes) -> OrgRouting | None:
        entry = self.keys.get(key_hash)
        if entry is None or entry[1]:
            return None
        org = self._record(entry[0].org_id)
        return entry[0].routing(org) if org else None

    def _record(self, org_id: str) -> OrgRecord | None:
        """The stored org with what its billing state and customers say."""
        org = self.orgs.get(org_id)
        if org is None:
            return None
        state = self.billing.get(org_id, BillingState())
        return replace(
            org,
            payment_status=state.payment_status,
            billing_suspended=state.suspended_at is not None,
            period=state.period,
            balance_minor=self.balances.get(org_id, 0),
            billing_customers={p: c for (p, c), owner in self.customers.items() if owner == org_id},
            plan=state.plan,
            plan_limits=plan_limits(plan) if (plan := self.plans.get(state.plan)) else None,
        )

    def _reserved(self, org_id: str, period: str, meter: str, now: float) -> int:
        return sum(
            r.amount
            for (_, o, p, m), r in self.reservations.items()
            if o == org_id and p == period and m == meter and r.expires_at > now
        )

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        grants: dict[str, int] = {}
        for meter in lock_order(request.needs):
            need = request.needs.get(meter)
            if need is None:
                continue
            limit = request.limits.usage_limit(meter)
            if limit is None:
                grants[meter] = need
                continue
            used = self.counters.get((request.org_id, request.period_start, meter), 0)
            taken = used + self._reserved(request.org_id, request.period_start, meter, request.now)
            remaining = limit - taken
            if remaining < need:
                return Exhausted(meter, limit, taken, used)
            grants[meter] = request.policy.want(meter, need, remaining)
        for meter, amount in grants.items():
            if request.limits.usage_limit(meter) is None:
                continue
            key = (request.holder, request.org_id, request.period_start, meter)
            current = self.reservations.get(key)
            live = current.amount if current and current.expires_at > request.now else 0
            self.reservations[key] = _Reservation(live + amount, request.now + request.ttl)
        if request.mark_stale:
            await self.mark_stale([(request.org_id, request.period_start)])
        return Granted(grants)

    async def commit_many(self, batches: Sequence[UsageBatch]) -> list[bool]:
        return [await self.commit(batch) for batch in batches]

    async def commit(self, batch: UsageBatch) -> bool:
        if batch.batch_id in self.applied:
            return False
        self.applied[batch.batch_id] = (batch.org_id, batch.period_start)
        for org_id, meter, hour, delta in sql_history.history_rows(batch):
            self.history[org_id, meter, hour] = self.history.get((org_id, meter, hour), 0) + delta
        for meter, delta in batch.used.items():
            key = (batch.org_id, batch.period_start, meter)
            self.counters[key] = self.counters.get(key, 0) + delta
        for meter, delta in batch.reserved.items():
            rkey = (batch.holder, batch.org_id, batch.period_start, meter)
            if (current := self.reservations.get(rkey)) is not None:
                current.amount = max(0, current.amount + delta)
        return True

    async def usage_history(
        self, org_id: str, meter: str, start: float, end: float
    ) -> list[tuple[int, int]]:
        first = sql_history.bucket_of(start)
        return sorted(
            (hour, n)
            for (org, name, hour), n in self.history.items()
            if org == org_id and name == meter and first <= hour < end
        )

    async def prune_history(self, before: float) -> None:
        first = sql_history.bucket_of(before)
        for key in [k for k in self.history if k[2] < first]:
            del self.history[key]

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None:
        for (h, *_), reservation in list(self.reservations.items()):
            if h == holder and reservation.expires_at > now:
                reservation.expires_at = now + ttl

    async def live_holders(self, holder: str, now: float, ttl: float) -> int:
        name = HOLDER_LEASE + holder
        # A presence no longer live is forgotten, so that restarts don't pile up rows.
        for lease, (_, expires_at) in list(self.leases.items()):
            if lease.startswith(HOLDER_LEASE) and expires_at <= now:
                del self.leases[lease]
        others = sum(1 for n in self.leases if n.startswith(HOLDER_LEASE) and n != name)
        self.leases[name] = (holder, now + ttl)
        return 1 + others

    async def release(self, holder: str) -> None:
        for key in [k for k in self.reservations if k[0] == holder]:
            del self.reservations[key]

    async def usage(self, org_id: str, period_start: str) -> dict[str, int]:
        return {
            meter: value
            for (o, p, meter), value in self.counters.items()
            if o == org_id and p == period_start
        }

    async def live_reservations(
        self, org_id: str, period_start: str, now: float
    ) -> list[ReservationRow]:
        return [
            ReservationRow(h, m, r.amount, r.expires_at)
            for (h, o, p, m), r in self.reservations.items()
            if o == org_id and p == period_start and r.expires_at > now and r.amount > 0
        ]

    async def quota_snapshot(self, org_id: str, period_start: str, now: float) -> QuotaSnapshot:
        usage = await self.usage(org_id, period_start)
        return QuotaSnapshot(
            used={m: usage[m] for m in lock_order(usage) if is_quota_meter(m)},
            reservations=await self.live_reservations(org_id, period_start, now),
            batch_ids=[
                batch_id
                for batch_id, counter in self.applied.items()
                if counter == (org_id, period_start)
            ],
            stale=self.stale.get((org_id, period_start), 0),
        )

    async def add_reservation(
        self, request: ReserveRequest, amounts: Mapping[str, int], generation: int | None = None
    ) -> bool:
        holder, org_id, period_start = request.holder, request.org_id, request.period_start
        if generation is not None and self.stale.get((org_id, period_start), 0) > generation:
            return True
        now, ttl = request.now, request.ttl
        for meter, amount in amounts.items():
            key = (holder, org_id, period_start, meter)
            current = self.reservations.get(key)
            live = current.amount if current and current.expires_at > now else 0
            self.reservations[key] = _Reservation(live + amount, now + ttl)
        return False

    async def mark_stale(self, keys: Sequence[tuple[str, str]]) -> None:
        for key in keys:
            self.stale[key] = self.stale.get(key, 0) + 1

    async def claim_period(self, org_id: str, period_start: str) -> bool:
        last = self.periods.get(org_id)
        if last is not None and last >= period_start:
            return False
        self.periods[org_id] = period_start
        return True

    async def create_org(
        self, name: str, limits: Limits, upstream: str | None, shadow: bool = False
    ) -> OrgRecord:
        org = OrgRecord.new(name, limits, upstream, shadow)
        self.orgs[org.id] = org
        return org

    async def update_org(
        self,
        org_id: str,
        changes: OrgChanges,
        *,
        actor: str = "admin",
        reason: str | None = None,
    ) -> OrgRecord | None:
        current = self._record(org_id)
        if current is None:
            return None
        changes = changes.resolved(current.limits)
        org = self.orgs[org_id]
        self.orgs[org_id] = replace(
            org,
            name=changes.name if changes.name is not None else org.name,
            limits=org.limits if changes.limits is None else replace(changes.limits, credit=None),
            upstream=changes.upstream if changes.set_upstream else org.upstream,
            shadow=changes.shadow if changes.shadow is not None else org.shadow,
            prices=changes.prices if changes.prices is not None else org.prices,
            notify_url=changes.notify_url if changes.set_notify_url else org.notify_url,
            partial_admission=(
                changes.partial_admission
                if changes.set_partial_admission
                else org.partial_admission
            ),
        )
        self._audit(org_id, org_audit(current, changes), reason, actor, datetime.now(UTC))
        return self._record(org_id)

    async def get_org(self, org_id: str) -> OrgRecord | None:
        return self._record(org_id)

    async def list_orgs(self, query: str | None = None, limit: int = 100) -> list[OrgRecord]:
        found = [
            org
            for org_id in self.orgs
            if (org := self._record(org_id)) is not None
            and (not query or query.lower() in org.name.lower() or org.id == query)
        ]
        return sorted(found, key=lambda o: (o.name, o.id))[:limit]

    async def create_key(
        self,
        org_id: str,
        key_hash: bytes,
        *,
        name: str = "",
        limits: Limits = NO_LIMITS,
        actor: str = "admin",
        reason: str | None = None,
    ) -> KeyRecord | None:
        if org_id not in self.orgs:
            return None
        record = KeyRecord(new_id("key"), org_id, datetime.now(UTC), name, limits)
        self.keys[key_hash] = (record, False)
        self.key_ids[record.id] = key_hash
        self._audit(org_id, [("key", None, record.id)], reason, actor, record.created_at)
        return record

    async def update_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        limit_changes: Mapping[str, int | None] | None = None,
        actor: str = "admin",
    ) -> KeyRecord | None:
        key_hash = self.key_ids.get(key_id)
        if key_hash is None:
            return None
        current, revoked = self.keys[key_hash]
        changed = replace(
            current,
            name=current.name if name is None else name,
            limits=current.limits.patched(limit_changes or {}),
        )
        entries: list[tuple[str, str | None, str | None]] = []
        if changed.name != current.name:
            entries.append((f"key {key_id} name", current.name, changed.name))
        if changed.limits != current.limits:
            old, new = current.limits.as_dict(), changed.limits.as_dict()
            entries.append((f"key {key_id} limits", _json(old), _json(new)))
        self.keys[key_hash] = (changed, revoked)
        self._audit(current.org_id, entries, None, actor, datetime.now(UTC))
        return replace(changed, revoked=revoked)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        key_hash = self.key_ids.get(key_id)
        if key_hash is None:
            return None
        record, revoked = self.keys[key_hash]
        return replace(record, revoked=revoked)

    async def list_keys(self, org_id: str) -> list[KeyRecord]:
        found = [replace(r, revoked=gone) for r, gone in self.keys.values() if r.org_id == org_id]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    async def revoke_key(
        self, key_id: str, *, actor: str = "admin", reason: str | None = None
    ) -> str | None:
        key_hash = self.key_ids.get(key_id)
        if key_hash is None:
            return None
        record, revoked = self.keys[key_hash]
        if revoked:
            return None
        self.keys[key_hash] = (record, True)
        self._audit(record.org_id, [("key", key_id, None)], reason, actor, datetime.now(UTC))
        return record.org_id

    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None, *, actor: str = "admin"
    ) -> OrgRecord | None:
        current = self._record(org_id)
        if current is None:
            return None
        self.orgs[org_id] = replace(
            self.orgs[org_id],
            suspended=suspended,
            suspension_reason=reason if suspended else None,
        )
        rows = suspension_audit(current, suspended, reason)
        self._audit(org_id, rows, reason, actor, datetime.now(UTC))
        return self._record(org_id)

    async def set_billing_customers(
        self, org_id: str, customers: Mapping[str, str], *, actor: str = "admin"
    ) -> OrgRecord | None:
        current = self._record(org_id)
        if current is None:
            return None
        for provider, customer in customers.items():
            owner = self.customers.get((provider, customer))
            if owner is not None and owner != org_id:
                raise CustomerTaken(provider, customer)
        rows: list[AuditRow] = []
        for provider, customer in customers.items():
            old = current.billing_customers.get(provider)
            if old == customer:
                continue
            if old is not None:
                del self.customers[(provider, old)]
            self.customers[(provider, customer)] = org_id
            rows.append((f"billing_customers.{provider}", old, customer))
        self._audit(org_id, rows, None, actor, datetime.now(UTC))
        return self._record(org_id)

    # one-leader work and usage export

    async def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        current = self.leases.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self.leases[name] = (holder, now + ttl)
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        current = self.leases.get(name)
        if current is not None and current[0] == holder:
            del self.leases[name]

    async def exported(self, org_id: str, provider: str, period_start: str) -> dict[str, int]:
        return {
            meter: value
            for (o, p, start, meter), value in self.exports.items()
            if (o, p, start) == (org_id, provider, period_start)
        }

    async def record_export(
        self, org_id: str, provider: str, period_start: str, meter: str, value: int
    ) -> None:
        key = (org_id, provider, period_start, meter)
        self.exports[key] = max(value, self.exports.get(key, value))

    async def billing_orgs(self) -> list[tuple[str, dict[str, str]]]:
        linked: dict[str, dict[str, str]] = {}
        for (provider, customer), org_id in self.customers.items():
            linked.setdefault(org_id, {})[provider] = customer
        return sorted(linked.items())


def _json(value: dict[str, int]) -> str:
    return json.dumps(value, sort_keys=True)
