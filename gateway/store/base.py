"""The storage Protocol every backend implements, and the values that cross it.

A backend only counts and remembers; what to ask for is decided by the caller and
``policies``. Reservations: each (org, period, meter) has ``used`` plus the live
reservations of every holder (one holder per gateway process); a reservation is
granted only while ``used + reserved + grant <= limit``, so what is admitted from
reservations never exceeds a limit. Expired reservations count for nothing. The
``credit`` meter's limit is not stored: it is the prepaid balance, which the caller's
routing carries (``ReserveRequest.limits.credit``).

Billing: a webhook event is claimed, its org's ``BillingState`` locked, a pure ``decide``
called on it and the resulting ``BillingChange`` written, all in one transaction
(``apply_billing_event``); any exception undoes everything, the claim included. An event
whose customer is linked to no org yet is claimed and kept, parsed, as ``unlinked``; once
the customer is linked, ``apply_unlinked_events`` applies each such event exactly as above
(the claim row's status moving from ``unlinked`` is what makes it once). The helpers at
the bottom are shared by every backend so that they store and report the same values.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from gateway.errors import CustomerTaken as CustomerTaken  # defined in the one error tree
from policies.billing import (
    MAX_MINOR,
    MIN_MINOR,
    OUT_OF_RANGE,
    AuditEntry,
    BillingChange,
    BillingEvent,
    BillingState,
    CreditEntry,
)
from policies.model import MICROS_PER_MINOR, Limits, OrgRouting, PaymentStatus, Period, Prices
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
    prices: Prices = field(default_factory=Prices)
    billing_customers: dict[str, str] = field(default_factory=dict)  # provider -> customer id
    # From the billing state: ``suspended`` above is the admin's suspension alone.
    billing_suspended: bool = False
    period: Period | None = None
    balance_minor: int = 0

    def routing(self) -> OrgRouting:
        return OrgRouting(
            org_id=self.id,
            upstream=self.upstream,
            limits=replace(self.limits, credit=self.credit_limit()),
            suspended=self.suspended or self.billing_suspended,
            payment_status=self.payment_status,
            shadow=self.shadow,
            prices=self.prices,
            period=self.period,
        )

    def credit_limit(self) -> int | None:
        """The credit meter's limit: the balance, when it blocks priced usage."""
        if not (self.prices.block_over_balance and self.prices.priced):
            return None
        # A negative balance (a refund after spending) blocks like an empty one; in micros,
        # a balance the ledger holds may exceed the counters' range, which then caps it.
        return min(MAX_MINOR, max(0, self.balance_minor) * MICROS_PER_MINOR)


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
    prices: Prices | None = None


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """Ask for quota: for each meter at least ``needs[meter]``, more as ``policy`` allows.

    ``limits`` are the caller's routing (at most a cache TTL old): backends that hold the
    org tables read their own instead, except ``credit`` (the balance, never stored as a
    limit), which every backend takes from here; a counter-only backend (Redis) uses all.
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
    """One meter did not fit, so nothing was granted: ``taken`` is committed usage plus every
    live reservation; ``committed`` the usage alone, where the store knows it cheaply."""

    meter: str
    limit: int
    taken: int
    committed: int | None = field(default=None, compare=False)


ReserveResult = Granted | Exhausted

#: A live gateway process is a lease on its own name, ``holder:<holder>`` (Store.live_holders).
HOLDER_LEASE = "holder:"


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
    async def live_holders(self, holder: str, now: float, ttl: float) -> int:
        """Keep ``holder`` live until ``now + ttl`` (a lease named ``holder:<holder>``) and
        count the live holders: 1 + the others live at ``now``. ``ttl=0`` leaves."""

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
    async def update_org(
        self,
        org_id: str,
        changes: OrgChanges,
        *,
        actor: str = "admin",
        reason: str | None = None,
    ) -> OrgRecord | None:
        """Apply ``changes``; one audit row per field that changed, in the same transaction."""

    async def get_org(self, org_id: str) -> OrgRecord | None: ...
    async def create_key(
        self, org_id: str, key_hash: bytes, *, actor: str = "admin", reason: str | None = None
    ) -> KeyRecord | None: ...
    async def revoke_key(
        self, key_id: str, *, actor: str = "admin", reason: str | None = None
    ) -> str | None: ...
    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None, *, actor: str = "admin"
    ) -> OrgRecord | None:
        """The admin's suspension (a billing one is separate); ``reason`` is audited too."""

    async def set_billing_customers(
        self, org_id: str, customers: Mapping[str, str], *, actor: str = "admin"
    ) -> OrgRecord | None:
        """Link the org to a customer per provider (merged); raises ``CustomerTaken``
        when an id is another org's, changing nothing."""

    # billing

    async def billing_state(self, org_id: str) -> BillingState | None:
        """None for an unknown org; an org never billed has the default state."""

    async def balance(self, org_id: str) -> int:
        """The sum of the org's credit ledger, in minor units."""

    async def apply_billing_event(
        self,
        event: BillingEvent,
        decide: Decide,
        now: datetime,
        redelivered: Decide | None = None,
    ) -> WebhookOutcome:
        """Claim the event, run ``decide`` on the org's locked state and write its change,
        in one transaction. Any exception rolls everything back (the claim too) and is
        raised, so a retry of the event is processed. An event applied before with its
        plan refused (reason ``PLAN_REFUSED``) is no duplicate when ``redelivered`` is
        given: that runs instead on the same org, and once it applies the reason is cleared.
        A change whose ledger entries leave the integer range is refused (``ledger_refusal``).
        """

    async def apply_unlinked_events(
        self, provider: str, customer_id: str, decide: DecideEvent, now: datetime
    ) -> list[WebhookOutcome]:
        """Apply the events kept ``unlinked`` for this customer to the org it is linked to
        now, in the order the provider sent them (event time, then arrival): each in a
        transaction of its own, as ``apply_billing_event`` would have, that moves it from
        ``unlinked`` to ``applied`` or ``refused``. An event another caller has taken is
        skipped, so a second link applies nothing twice; an exception stops there and
        leaves that event and the later ones unlinked. [] when the customer has no org."""

    async def update_billing(
        self, org_id: str, decide: Decide, *, actor: str, now: datetime
    ) -> BillingChange | None:
        """As ``apply_billing_event`` without an event; None for an unknown org."""

    async def orgs_to_reconcile(self) -> list[str]:
        """Orgs past due or under a billing suspension."""

    async def webhook_events(self, limit: int = 100) -> list[dict[str, object]]: ...
    async def audit_log(
        self, org_id: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]: ...

    # one-leader work and usage export

    async def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """True when the lease was free, expired or already ``holder``'s; it then runs
        until ``now + ttl``."""

    async def release_lease(self, name: str, holder: str) -> None: ...
    async def exported(self, org_id: str, provider: str, period_start: str) -> dict[str, int]: ...
    async def record_export(
        self, org_id: str, provider: str, period_start: str, meter: str, value: int
    ) -> None:
        """Keep the largest value recorded for (org, provider, period, meter)."""

    async def billing_orgs(self) -> list[tuple[str, dict[str, str]]]:
        """Orgs linked to billing customers, with their provider -> customer id, by org id."""


# Shared by the backends: one normal form of what they store and report.


def utc(moment: datetime) -> datetime:
    """Aware UTC: what every backend stores and returns (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    return utc(moment).isoformat()


def utc_period(period: Period | None) -> Period | None:
    return None if period is None else Period(utc(period.start), utc(period.end))


def stored_state(state: BillingState) -> BillingState:
    """``state`` as a backend reads it back: times in UTC, ``refunded`` a plain dict."""

    def at(moment: datetime | None) -> datetime | None:
        return None if moment is None else utc(moment)

    return replace(
        state,
        period=utc_period(state.period),
        overdue_since=at(state.overdue_since),
        suspended_at=at(state.suspended_at),
        status_at=at(state.status_at),
        subscription_at=at(state.subscription_at),
        refunded=dict(state.refunded),
        paid_at=at(state.paid_at),
    )


def applied_change(change: BillingChange, claimed: bool, org_id: str) -> BillingChange:
    """The change to write: only the claimant of ``new_period`` sets it and writes its
    grants; anyone else keeps the state's period and drops both. Grant keys get the org:
    two orgs' periods that start at the same second are two grants."""
    grants = tuple(
        replace(entry, idempotency_key=f"{org_id}:{entry.idempotency_key}")
        for entry in change.period_grants
    )
    change = replace(change, period_grants=grants)
    if change.new_period is None:
        return replace(change, state=stored_state(change.state))
    if claimed:
        period = utc_period(change.new_period)
        return replace(change, state=stored_state(replace(change.state, period=period)))
    return replace(change, state=stored_state(change.state), new_period=None, period_grants=())


# The reason kept with an event applied with its plan refused: a redelivery may apply it.
PLAN_REFUSED = "plan_refused"
BALANCE_OUT_OF_RANGE = "balance out of range"


def event_reason(change: BillingChange | None) -> str | None:
    """The reason an event's row keeps once ``change`` was written (or refused)."""
    if change is None:
        return None
    if change.refused is not None:
        return change.refused
    return PLAN_REFUSED if change.plan_refused is not None else None


def ledger_refusal(
    state: BillingState, change: BillingChange, balance: int, why: str
) -> BillingChange | None:
    """``change`` refused when an entry, or the balance after all of them, would leave the
    stores' integer range (signed 64-bit); None when they fit. Entries a claim would drop
    count too: the check comes before the claim."""
    entries: tuple[CreditEntry, ...] = (*change.credits, *change.period_grants)
    if not entries:
        return None
    if any(not MIN_MINOR <= entry.amount_minor <= MAX_MINOR for entry in entries):
        refused = OUT_OF_RANGE
    elif MIN_MINOR <= balance + sum(entry.amount_minor for entry in entries) <= MAX_MINOR:
        return None
    else:
        refused = BALANCE_OUT_OF_RANGE
    amounts = ",".join(str(entry.amount_minor) for entry in entries)
    audit = AuditEntry("credit_refused", str(balance), amounts, f"{why}: {refused}")
    return BillingChange(state, refused=refused, audit=(audit,))


def event_json(event: BillingEvent) -> str:
    """A parsed event as kept until its customer is linked (``event_from_json`` reads it)."""
    raw: dict[str, object] = {}
    for f in fields(BillingEvent):
        value = getattr(event, f.name)
        if isinstance(value, datetime):
            value = iso(value)
        elif isinstance(value, Period):
            value = [iso(value.start), iso(value.end)]
        raw[f.name] = value
    return json.dumps(raw, sort_keys=True)


def event_from_json(text: str) -> BillingEvent:
    raw = json.loads(text)
    values = {f.name: raw[f.name] for f in fields(BillingEvent) if f.name in raw}
    values["occurred_at"] = datetime.fromisoformat(values["occurred_at"])
    if values.get("period") is not None:
        start, end = values["period"]
        values["period"] = Period(datetime.fromisoformat(start), datetime.fromisoformat(end))
    return BillingEvent(**values)


def has_suspension_row(state: BillingState) -> bool:
    """Whether the state needs a ``billing_suspensions`` row."""
    return any(
        value is not None
        for value in (
            state.overdue_since,
            state.overdue_invoice_id,
            state.suspended_at,
            state.suspension_reason,
        )
    )


def prices_json(prices: Prices) -> str:
    return json.dumps(
        {**prices.as_dict(), "block_over_balance": prices.block_over_balance}, sort_keys=True
    )


AuditRow = tuple[str, str | None, str | None]  # field, old, new


def org_audit(org: OrgRecord, changes: OrgChanges) -> list[AuditRow]:
    """One row per field that ``changes`` really changes, in a fixed order."""
    rows: list[AuditRow] = []
    if changes.name is not None and changes.name != org.name:
        rows.append(("name", org.name, changes.name))
    if changes.limits is not None and changes.limits.as_dict() != org.limits.as_dict():
        old, new = org.limits.as_dict(), changes.limits.as_dict()
        rows.append(("limits", json.dumps(old, sort_keys=True), json.dumps(new, sort_keys=True)))
    if changes.set_upstream and changes.upstream != org.upstream:
        rows.append(("upstream", org.upstream, changes.upstream))
    if changes.prices is not None and changes.prices != org.prices:
        rows.append(("prices", prices_json(org.prices), prices_json(changes.prices)))
    if changes.shadow is not None and changes.shadow != org.shadow:
        rows.append(("shadow", _flag(org.shadow), _flag(changes.shadow)))
    return rows


def suspension_audit(org: OrgRecord, suspended: bool, reason: str | None) -> list[AuditRow]:
    new_reason = reason if suspended else None
    if suspended != org.suspended:
        return [("suspended", _flag(org.suspended), _flag(suspended))]
    if new_reason != org.suspension_reason:
        return [("suspension_reason", org.suspension_reason, new_reason)]
    return []


def _flag(value: bool) -> str:
    return "true" if value else "false"
