"""The storage Protocol every backend implements, and the values that cross it.

A backend only counts and remembers; what to ask for is decided by the caller and
``policies``. Reservations: each (org, period, meter) has ``used`` plus the live
reservations of every holder (one holder per gateway process); a reservation is
granted only while ``used + reserved + grant <= limit``, so what is admitted from
reservations never exceeds a limit. Expired reservations count for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from policies.model import Limits, OrgRouting, PaymentStatus
from policies.reservations import ChunkPolicy


@dataclass(frozen=True, slots=True)
class OrgRecord:
    id: str
    name: str
    limits: Limits
    upstream: str | None
    suspended: bool
    suspension_reason: str | None
    payment_status: PaymentStatus
    shadow: bool
    created_at: datetime

    def routing(self) -> OrgRouting:
        return OrgRouting(
            org_id=self.id,
            upstream=self.upstream,
            limits=self.limits,
            suspended=self.suspended,
            payment_status=self.payment_status,
            shadow=self.shadow,
        )


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    org_id: str
    created_at: datetime


_UNSET: object = object()


@dataclass(frozen=True, slots=True)
class OrgChanges:
    """A partial update; fields left as ``None`` stay as they are (``upstream`` uses a flag)."""

    name: str | None = None
    limits: Limits | None = None
    upstream: str | None = None
    set_upstream: bool = False
    shadow: bool | None = None


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """Ask for quota: for each meter at least ``needs[meter]``, more as ``policy`` allows.

    ``limits`` are the caller's routing (at most a cache TTL old): backends that hold the
    org tables read their own instead; a counter-only backend (Redis) uses these.
    ``period_end`` (epoch seconds) lets counters expire after the period.
    """

    holder: str
    org_id: str
    period_start: str
    needs: Mapping[str, int]
    policy: ChunkPolicy
    now: float
    ttl: float
    limits: Limits = field(default_factory=Limits)
    period_end: float = 0.0


@dataclass(frozen=True, slots=True)
class ReservationRow:
    """One holder's live reservation on one meter."""

    holder: str
    meter: str
    amount: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class QuotaSnapshot:
    """One consistent read of an (org, period): what a Redis rebuild loads.

    ``used`` per meter of ``METERS``; the live reservations holding something; and the
    ids of the batches already counted in ``used``, so that a batch applied again on top
    of this snapshot is recognised as counted.
    """

    used: dict[str, int]
    reservations: list[ReservationRow]
    batch_ids: list[str]


@dataclass(frozen=True, slots=True)
class Granted:
    """All meters fit: how much each was granted (each at least what was needed)."""

    amounts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Exhausted:
    """One meter did not fit, so nothing was granted."""

    meter: str
    limit: int
    used: int


ReserveResult = Granted | Exhausted


@dataclass(frozen=True, slots=True)
class UsageBatch:
    """Deltas a holder applies once: ``used`` per meter, and its own reservation per meter.

    Spending reserved quota moves it: used +n, reserved -n. Applying a batch id a
    second time does nothing, so a batch can be replayed after any failure.
    """

    batch_id: str
    holder: str
    org_id: str
    period_start: str
    used: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not any(self.used.values()) and not any(self.reserved.values())


class Store(Protocol):
    """One storage backend. Every method is atomic on its own."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    # data plane
    async def routing_for_key(self, key_hash: bytes) -> OrgRouting | None: ...
    async def reserve(self, request: ReserveRequest) -> ReserveResult: ...
    async def commit(self, batch: UsageBatch) -> bool: ...
    async def heartbeat(self, holder: str, now: float, ttl: float) -> None: ...
    async def release(self, holder: str) -> None: ...
    async def usage(self, org_id: str, period_start: str) -> dict[str, int]: ...
    async def live_reservations(
        self, org_id: str, period_start: str, now: float
    ) -> list[ReservationRow]: ...
    async def quota_snapshot(self, org_id: str, period_start: str, now: float) -> QuotaSnapshot:
        """Usage, live reservations and applied batch ids of one (org, period), read at once."""

    async def add_reservation(
        self,
        holder: str,
        org_id: str,
        period_start: str,
        amounts: Mapping[str, int],
        now: float,
        ttl: float,
    ) -> None:
        """Record a grant decided elsewhere (by the Redis counters), without a limit check."""

    async def claim_period(self, org_id: str, period_start: str) -> bool:
        """True for exactly one caller per (org, period) newer than the org's last one."""

    # control plane
    async def create_org(
        self, name: str, limits: Limits, upstream: str | None, shadow: bool = False
    ) -> OrgRecord: ...
    async def update_org(self, org_id: str, changes: OrgChanges) -> OrgRecord | None: ...
    async def get_org(self, org_id: str) -> OrgRecord | None: ...
    async def create_key(self, org_id: str, key_hash: bytes) -> KeyRecord | None: ...
    async def revoke_key(self, key_id: str) -> str | None: ...
    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None
    ) -> OrgRecord | None: ...
