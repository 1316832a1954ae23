"""The store, split by capability: each Protocol has one job, each backend takes the ones
it can do well.

- ``QuotaStore``: the counters the usage gate spends from (reserve, commit, heartbeat,
  release). ``RedisQuotaStore`` is one, in front of a ``DurableQuotaStore``.
- ``DurableQuotaStore``: a ``QuotaStore`` that is the truth of usage: it reports usage and
  live reservations, records grants decided elsewhere and snapshots what a cache rebuilds.
- ``OrgStore``: orgs, ingest keys and the routing of a key.
- ``BillingStore``: billing state, the credit ledger, webhook events and the audit log.
- ``LeaseStore``: one-leader leases, holder presence and the usage export cursors.

``Store`` is their union, for backends that are all of them (memory, SQLite, PostgreSQL).
Every method is atomic on its own. The values that cross them are in ``records``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from gateway.store.normal import iso, stored_state, utc
from gateway.store.records import (
    BALANCE_OUT_OF_RANGE,
    HOLDER_LEASE,
    PLAN_REFUSED,
    AuditRow,
    CustomerTaken,
    Decide,
    DecideEvent,
    Exhausted,
    Granted,
    KeyRecord,
    Notification,
    OrgChanges,
    OrgRecord,
    QuotaSnapshot,
    ReservationRow,
    ReserveRequest,
    ReserveResult,
    UsageBatch,
    WebhookOutcome,
    WebhookStatus,
    new_id,
)
from policies.billing import BillingChange, BillingEvent, BillingState
from policies.entitlements import Plan
from policies.model import NO_LIMITS, Limits, OrgRouting

# Re-exported for callers that import the values with the Protocols.
__all__ = [
    "BALANCE_OUT_OF_RANGE",
    "HOLDER_LEASE",
    "PLAN_REFUSED",
    "AuditRow",
    "BillingStore",
    "CustomerTaken",
    "Decide",
    "DecideEvent",
    "DurableQuotaStore",
    "Exhausted",
    "Granted",
    "HistoryStore",
    "KeyRecord",
    "LeaseStore",
    "Lifecycle",
    "Notification",
    "NotificationStore",
    "OrgChanges",
    "OrgRecord",
    "OrgStore",
    "QuotaSnapshot",
    "QuotaStore",
    "ReservationRow",
    "ReserveRequest",
    "ReserveResult",
    "Store",
    "UsageBatch",
    "WebhookOutcome",
    "WebhookStatus",
    "iso",
    "new_id",
    "stored_state",
    "utc",
]


class Lifecycle(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...


class QuotaStore(Lifecycle, Protocol):
    """Counters the usage gate spends from: granted only while used + reserved fits."""

    async def reserve(self, request: ReserveRequest) -> ReserveResult: ...
    async def commit(self, batch: UsageBatch) -> bool: ...
    async def commit_many(self, batches: Sequence[UsageBatch]) -> list[bool]:
        """Commit a group at once, each batch as ``commit`` would (True: applied now)."""

    async def heartbeat(self, holder: str, now: float, ttl: float) -> None: ...
    async def release(self, holder: str) -> None: ...


class DurableQuotaStore(QuotaStore, Protocol):
    """The truth of usage, which a cache in front of it (Redis) writes through to."""

    async def usage(self, org_id: str, period_start: str) -> dict[str, int]: ...
    async def live_reservations(
        self, org_id: str, period_start: str, now: float
    ) -> list[ReservationRow]: ...
    async def quota_snapshot(self, org_id: str, period_start: str, now: float) -> QuotaSnapshot:
        """Usage, live reservations and applied batch ids of one (org, period), read at once."""

    async def add_reservation(
        self, request: ReserveRequest, amounts: Mapping[str, int], generation: int | None = None
    ) -> bool:
        """Record a grant decided elsewhere (by Redis counters built from a snapshot of this
        ``generation`` of stale marks), without a limit check; unless the (org, period) was
        marked since: then True, and nothing is recorded. ``None``: recorded whatever."""

    async def mark_stale(self, keys: Sequence[tuple[str, str]]) -> None:
        """The Redis counters missed a write of these (org, period): a new generation of
        their marks (a fallback grant marks its own, with ``ReserveRequest.mark_stale``)."""

    async def claim_period(self, org_id: str, period_start: str) -> bool:
        """True for exactly one caller per (org, period) newer than the org's last one."""


class OrgStore(Lifecycle, Protocol):
    """Orgs, their ingest keys and billing customers; every change is audited with it."""

    async def routing_for_key(self, key_hash: bytes) -> OrgRouting | None: ...
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
    async def list_orgs(self, query: str | None = None, limit: int = 100) -> list[OrgRecord]:
        """Orgs whose name holds ``query`` (in any case) or whose id is it, by name then id."""

    async def create_key(
        self,
        org_id: str,
        key_hash: bytes,
        *,
        name: str = "",
        limits: Limits = NO_LIMITS,
        actor: str = "admin",
        reason: str | None = None,
    ) -> KeyRecord | None: ...
    async def update_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        limit_changes: Mapping[str, int | None] | None = None,
        actor: str = "admin",
    ) -> KeyRecord | None:
        """A key's name, or its limits changed meter by meter in the same transaction (``None``
        lifts one); audited on its org."""

    async def get_key(self, key_id: str) -> KeyRecord | None: ...
    async def list_keys(self, org_id: str) -> list[KeyRecord]:
        """Every key of the org, revoked ones too, oldest first."""

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

    async def billing_orgs(self) -> list[tuple[str, dict[str, str]]]:
        """Orgs linked to billing customers, with their provider -> customer id, by org id."""


class BillingStore(Lifecycle, Protocol):
    """Billing state and ledger; a webhook event is claimed in the transaction that applies
    its change, so that any exception undoes everything, the claim included."""

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
        self,
        org_id: str,
        decide: Decide,
        *,
        actor: str,
        now: datetime,
        known_plan: bool = False,
    ) -> BillingChange | None:
        """As ``apply_billing_event`` without an event; None for an unknown org. With
        ``known_plan``, a move to a plan the catalog does not hold is a ``Conflict`` (the plan
        row is held until the move commits, so a concurrent delete sees the org on it)."""

    async def orgs_to_reconcile(self) -> list[str]:
        """Orgs past due or under a billing suspension."""

    async def webhook_events(self, limit: int = 100) -> list[dict[str, object]]: ...
    async def audit_log(
        self, org_id: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]: ...


class LeaseStore(Lifecycle, Protocol):
    """Leases: one leader for background work, holder presence, usage export cursors."""

    async def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """True when the lease was free, expired or already ``holder``'s; it then runs
        until ``now + ttl``."""

    async def release_lease(self, name: str, holder: str) -> None: ...
    async def live_holders(self, holder: str, now: float, ttl: float) -> int:
        """Keep ``holder`` live until ``now + ttl`` (a lease named ``holder:<holder>``) and
        count the live holders: 1 + the others live at ``now``. ``ttl=0`` leaves."""

    async def exported(self, org_id: str, provider: str, period_start: str) -> dict[str, int]: ...
    async def record_export(
        self, org_id: str, provider: str, period_start: str, meter: str, value: int
    ) -> None:
        """Keep the largest value recorded for (org, provider, period, meter)."""


class HistoryStore(Lifecycle, Protocol):
    """Usage per (org, meter) per hour, written with the usage batches (never twice)."""

    async def usage_history(
        self, org_id: str, meter: str, start: float, end: float
    ) -> list[tuple[int, int]]:
        """(hour start, usage) of every hour with usage in [start, end), epoch seconds."""

    async def prune_history(self, before: float) -> None:
        """Forget the hours before ``before``."""


class NotificationStore(Lifecycle, Protocol):
    """The notifications outbox: each event claimed once, delivered at least once."""

    async def claim_notification(
        self, event_id: str, claim: str, org_id: str, kind: str, url: str, body: str, now: float
    ) -> bool:
        """Add the event unless its claim is taken (then False)."""

    async def due_notifications(self, now: float, lease: float, limit: int) -> list[Notification]:
        """Events due now, each leased to the caller for ``lease`` seconds."""

    async def notification_attempted(
        self, event_id: str, now: float, error: str | None, next_at: float | None
    ) -> None:
        """Delivered (``error`` None), to retry at ``next_at``, or given up."""

    async def notifications(self, org_id: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest events with their delivery state."""


class PlanStore(Lifecycle, Protocol):
    """The plan catalog: named limits, overage caps, rates and grants orgs are on."""

    async def put_plan(self, plan: Plan) -> None:
        """Create the plan, or replace it whole."""

    async def get_plan(self, name: str) -> Plan | None: ...
    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""

    async def delete_plan(self, name: str) -> bool:
        """False for an unknown plan; ``Conflict`` while an org is on it."""


class Store(
    DurableQuotaStore,
    OrgStore,
    BillingStore,
    LeaseStore,
    PlanStore,
    HistoryStore,
    NotificationStore,
    Protocol,
):
    """A backend that is every capability at once: the durable store of a gateway."""
