"""The values that cross the store Protocols, and the constants every backend shares.

Reservations: each (org, period, meter) has ``used`` plus the live reservations of every
holder (one holder per gateway process); a reservation is granted only while
``used + reserved + grant <= limit``, so what is admitted from reservations never exceeds a
limit. Expired reservations count for nothing. The ``credit`` meter's limit is not stored:
it is the prepaid balance, which the caller's routing carries (``ReserveRequest.limits``).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from gateway.errors import CustomerTaken as CustomerTaken  # defined in the one error tree
from policies.billing import MAX_MINOR, BillingChange, BillingEvent, BillingState
from policies.entitlements import effective_limits
from policies.model import (
    MICROS_PER_MINOR,
    LimitChange,
    Limits,
    OrgRouting,
    PaymentStatus,
    Period,
    Prices,
)
from policies.reservations import ChunkPolicy

#: A live gateway process is a lease on its own name, ``holder:<holder>`` (LeaseStore.live_holders).
HOLDER_LEASE = "holder:"
# The reason kept with an event applied with its plan refused: a redelivery may apply it.
PLAN_REFUSED = "plan_refused"
BALANCE_OUT_OF_RANGE = "balance out of range"
# Applied batch ids are kept 14 days: longer than any spool replay we expect, and as long
# as the Redis batch markers (RedisQuotaStore) live, which are written from these rows.
BATCH_RETENTION_SECONDS = 14 * 86400
PRUNE_INTERVAL_SECONDS = 3600.0
# Rows deleted per prune, so that a heartbeat stays short; a full prune runs again soon.
PRUNE_LIMIT = 10_000


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


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
    prices: Prices = field(default_factory=Prices)
    billing_customers: dict[str, str] = field(default_factory=dict)  # provider -> customer id
    # From the billing state: ``suspended`` above is the admin's suspension alone.
    billing_suspended: bool = False
    period: Period | None = None
    balance_minor: int = 0
    #: The org's plan (from its billing state) and, when the catalog has it, the plan's limits
    #: and rates: the org's own ``limits`` override them meter by meter.
    plan: str = "free"  # as a billing state without one says
    plan_limits: Limits | None = None
    #: Where the org's notifications go (None: GATEWAY_NOTIFY_URL).
    notify_url: str | None = None
    #: Cut batches over an items limit to what fits (None: GATEWAY_PARTIAL_ADMISSION).
    partial_admission: bool | None = None

    @property
    def effective_limits(self) -> Limits:
        """The plan's limits with the org's own on top (without ``credit``)."""
        return effective_limits(self.plan_limits, self.limits)

    @classmethod
    def new(cls, name: str, limits: Limits, upstream: str | None, shadow: bool) -> OrgRecord:
        """A new org as created: its own id, no suspension, limits without ``credit``."""
        return cls(
            id=new_id("org"),
            name=name,
            limits=replace(limits, credit=None),
            upstream=upstream,
            suspended=False,
            suspension_reason=None,
            payment_status="ok",
            shadow=shadow,
            created_at=datetime.now(UTC),
        )

    def routing(self) -> OrgRouting:
        return OrgRouting(
            org_id=self.id,
            upstream=self.upstream,
            limits=_routing_limits(self.plan_limits, self.limits, self.credit_limit()),
            suspended=self.suspended or self.billing_suspended,
            payment_status=self.payment_status,
            shadow=self.shadow,
            prices=self.prices,
            period=self.period,
            plan=self.plan,
            notify_url=self.notify_url,
            partial_admission=self.partial_admission,
        )

    def credit_limit(self) -> int | None:
        """The credit meter's limit: the balance, when it blocks priced usage."""
        if not (self.prices.block_over_balance and self.prices.priced):
            return None
        # A negative balance (a refund after spending) blocks like an empty one; in micros,
        # a balance the ledger holds may exceed the counters' range, which then caps it.
        return min(MAX_MINOR, max(0, self.balance_minor) * MICROS_PER_MINOR)


@functools.lru_cache(maxsize=4096)
def _routing_limits(plan: Limits | None, own: Limits, credit: int | None) -> Limits:
    """One Limits value for every routing of equal limits: 100,000 cached keys of 100 orgs
    hold 100 of them, not 100,000."""
    return replace(effective_limits(plan, own), credit=credit)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    org_id: str
    created_at: datetime
    name: str = ""
    #: The key's own limits (meters only), on top of its org's.
    limits: Limits = field(default_factory=Limits)
    revoked: bool = False

    def routing(self, org: OrgRecord) -> OrgRouting:
        """The org's routing for a request with this key: the key's limits folded in."""
        routing = org.routing()
        if self.limits == Limits():
            return replace(routing, key_id=self.id)
        limits = routing.limits.with_key(self.id, self.limits)
        return replace(routing, key_id=self.id, limits=limits)


@dataclass(frozen=True, slots=True)
class OrgChanges:
    """A partial update; fields left as ``None`` stay as they are (``upstream`` uses a flag)."""

    name: str | None = None
    limits: Limits | None = None
    upstream: str | None = None
    set_upstream: bool = False
    shadow: bool | None = None
    prices: Prices | None = None
    notify_url: str | None = None
    set_notify_url: bool = False
    partial_admission: bool | None = None
    set_partial_admission: bool = False
    #: Limits changed meter by meter (``Limits.overridden``: a number, ``None`` for unlimited,
    #: ``"plan"`` for the plan's value), applied to the stored ones in the same transaction,
    #: so that two admins changing different meters both stay.
    limit_changes: Mapping[str, LimitChange] | None = None

    def resolved(self, current: Limits) -> OrgChanges:
        """These changes with ``limit_changes`` applied to ``current`` as whole ``limits``."""
        if self.limit_changes is None:
            return self
        return replace(self, limits=current.overridden(self.limit_changes), limit_changes=None)


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """Ask for quota: for each meter at least ``needs[meter]``, more as ``policy`` allows.

    ``limits`` are the caller's routing (at most a cache TTL old, or dropped at once by an
    invalidation): every backend checks against these, the ``credit`` limit (the balance)
    included, so limits computed from plans and keys need no tables of their own here.
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
    #: Granted by the truth because the Redis counters in front failed: the truth marks
    #: the (org, period) stale in the same transaction, so Redis rebuilds before it grants.
    mark_stale: bool = False


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
    #: The generation of the (org, period)'s stale marks (0: never marked): a hash built
    #: from this snapshot grants only while no later mark exists.
    stale: int = 0


@dataclass(frozen=True, slots=True)
class Granted:
    """All meters fit: how much each was granted (each at least what was needed)."""

    amounts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Exhausted:
    """One meter did not fit, so nothing was granted: ``taken`` is committed usage plus every
    live reservation; ``committed`` the usage alone, where the store knows it cheaply."""

    meter: str
    limit: int
    taken: int
    committed: int | None = field(default=None, compare=False)


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
    #: When its usage was taken (epoch seconds): the hour of the usage history it goes to
    #: (0: when it is applied).
    at: float = 0.0

    def is_empty(self) -> bool:
        return not any(self.used.values()) and not any(self.reserved.values())


def rounds(batches: Sequence[UsageBatch]) -> list[list[UsageBatch]]:
    """``batches`` in order, cut where one holder's (org, period) comes again: a round
    changes each reservation row once, and batches of one row apply in their order."""
    groups: list[list[UsageBatch]] = []
    seen: set[tuple[str, str, str]] = set()
    for batch in batches:
        key = (batch.holder, batch.org_id, batch.period_start)
        if not groups or key in seen:
            groups.append([])
            seen = set()
        groups[-1].append(batch)
        seen.add(key)
    return groups


@dataclass(frozen=True, slots=True)
class Notification:
    """An event in the outbox, due for an attempt: its id is its ``webhook-id`` every time."""

    id: str
    org_id: str
    type: str
    url: str
    body: str
    created_at: float
    attempts: int


# unlinked: kept until its customer is linked to an org; unknown_customer: it names none.
WebhookStatus = Literal["applied", "duplicate", "unlinked", "unknown_customer", "refused"]


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """What ``apply_billing_event`` did; ``change`` is the change as written (see there)."""

    status: WebhookStatus
    org_id: str | None
    change: BillingChange | None


Decide = Callable[[BillingState], BillingChange]
# The decision of one event: the same for a webhook and for an event applied on linking.
DecideEvent = Callable[[BillingEvent], Decide]

AuditRow = tuple[str, str | None, str | None]  # field, old, new
