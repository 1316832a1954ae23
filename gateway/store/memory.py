"""An in-memory store: the reference semantics of the Protocol, for tests and demos."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from gateway.store.base import (
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
)
from policies.model import METERS, Limits, OrgRouting


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(slots=True)
class _Reservation:
    amount: int
    expires_at: float


class MemoryStore:
    def __init__(self) -> None:
        self.orgs: dict[str, OrgRecord] = {}
        self.keys: dict[bytes, tuple[KeyRecord, bool]] = {}
        self.key_ids: dict[str, bytes] = {}
        self.counters: dict[tuple[str, str, str], int] = {}
        self.reservations: dict[tuple[str, str, str, str], _Reservation] = {}
        # batch id -> the (org, period) it was applied to
        self.applied: dict[str, tuple[str, str]] = {}
        self.periods: dict[str, str] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def routing_for_key(self, key_hash: bytes) -> OrgRouting | None:
        entry = self.keys.get(key_hash)
        if entry is None or entry[1]:
            return None
        org = self.orgs.get(entry[0].org_id)
        return org.routing() if org else None

    def _reserved(self, org_id: str, period: str, meter: str, now: float) -> int:
        return sum(
            r.amount
            for (_, o, p, m), r in self.reservations.items()
            if o == org_id and p == period and m == meter and r.expires_at > now
        )

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        org = self.orgs.get(request.org_id)
        limits = org.limits if org else Limits()
        grants: dict[str, int] = {}
        for meter in METERS:
            need = request.needs.get(meter)
            if need is None:
                continue
            limit = limits.usage_limit(meter)
            if limit is None:
                grants[meter] = need
                continue
            used = self.counters.get((request.org_id, request.period_start, meter), 0)
            taken = used + self._reserved(request.org_id, request.period_start, meter, request.now)
            remaining = limit - taken
            if remaining < need:
                return Exhausted(meter, limit, taken)
            grants[meter] = request.policy.want(meter, need, remaining)
        for meter, amount in grants.items():
            if limits.usage_limit(meter) is None:
                continue
            key = (request.holder, request.org_id, request.period_start, meter)
            current = self.reservations.get(key)
            live = current.amount if current and current.expires_at > request.now else 0
            self.reservations[key] = _Reservation(live + amount, request.now + request.ttl)
        return Granted(grants)

    async def commit(self, batch: UsageBatch) -> bool:
        if batch.batch_id in self.applied:
            return False
        self.applied[batch.batch_id] = (batch.org_id, batch.period_start)
        for meter, delta in batch.used.items():
            key = (batch.org_id, batch.period_start, meter)
            self.counters[key] = self.counters.get(key, 0) + delta
        for meter, delta in batch.reserved.items():
            rkey = (batch.holder, batch.org_id, batch.period_start, meter)
            if (current := self.reservations.get(rkey)) is not None:
                current.amount = max(0, current.amount + delta)
        return True

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None:
        for (h, *_), reservation in list(self.reservations.items()):
            if h == holder and reservation.expires_at > now:
                reservation.expires_at = now + ttl

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
            used={meter: usage[meter] for meter in METERS if meter in usage},
            reservations=await self.live_reservations(org_id, period_start, now),
            batch_ids=[
                batch_id
                for batch_id, counter in self.applied.items()
                if counter == (org_id, period_start)
            ],
        )

    async def add_reservation(
        self,
        holder: str,
        org_id: str,
        period_start: str,
        amounts: Mapping[str, int],
        now: float,
        ttl: float,
    ) -> None:
        for meter, amount in amounts.items():
            key = (holder, org_id, period_start, meter)
            current = self.reservations.get(key)
            live = current.amount if current and current.expires_at > now else 0
            self.reservations[key] = _Reservation(live + amount, now + ttl)

    async def claim_period(self, org_id: str, period_start: str) -> bool:
        last = self.periods.get(org_id)
        if last is not None and last >= period_start:
            return False
        self.periods[org_id] = period_start
        return True

    async def create_org(
        self, name: str, limits: Limits, upstream: str | None, shadow: bool = False
    ) -> OrgRecord:
        org = OrgRecord(
            id=new_id("org"),
            name=name,
            limits=limits,
            upstream=upstream,
            suspended=False,
            suspension_reason=None,
            payment_status="ok",
            shadow=shadow,
            created_at=datetime.now(UTC),
        )
        self.orgs[org.id] = org
        return org

    async def update_org(self, org_id: str, changes: OrgChanges) -> OrgRecord | None:
        org = self.orgs.get(org_id)
        if org is None:
            return None
        org = replace(
            org,
            name=changes.name if changes.name is not None else org.name,
            limits=changes.limits if changes.limits is not None else org.limits,
            upstream=changes.upstream if changes.set_upstream else org.upstream,
            shadow=changes.shadow if changes.shadow is not None else org.shadow,
        )
        self.orgs[org_id] = org
        return org

    async def get_org(self, org_id: str) -> OrgRecord | None:
        return self.orgs.get(org_id)

    async def create_key(self, org_id: str, key_hash: bytes) -> KeyRecord | None:
        if org_id not in self.orgs:
            return None
        record = KeyRecord(id=new_id("key"), org_id=org_id, created_at=datetime.now(UTC))
        self.keys[key_hash] = (record, False)
        self.key_ids[record.id] = key_hash
        return record

    async def revoke_key(self, key_id: str) -> str | None:
        key_hash = self.key_ids.get(key_id)
        if key_hash is None:
            return None
        record, revoked = self.keys[key_hash]
        if revoked:
            return None
        self.keys[key_hash] = (record, True)
        return record.org_id

    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None
    ) -> OrgRecord | None:
        org = self.orgs.get(org_id)
        if org is None:
            return None
        org = replace(org, suspended=suspended, suspension_reason=reason if suspended else None)
        self.orgs[org_id] = org
        return org
