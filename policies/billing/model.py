"""Billing values: provider events normalised, an org's billing state, and what changes it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from policies.model import PaymentStatus, Period

EventKind = Literal[
    "payment_failed",  # an invoice could not be charged
    "payment_succeeded",  # an invoice was paid
    "subscription_updated",  # plan, status, period or cancellation changed
    "subscription_deleted",  # the subscription ended
    "credit_purchased",  # a one-off prepaid top-up was paid
    "charge_refunded",  # money went back to the customer
    "past_due_changed",  # Autumn: a subscription's past_due flag as it stands now
    "ignored",  # anything else: recorded, no effect
]

# The stores' integer range (signed 64-bit): ledger amounts and balances stay inside it.
MAX_MINOR = 2**63 - 1
MIN_MINOR = -(2**63)

# Refusal reasons, as recorded with the event.
UNKNOWN_PLAN = "unknown plan"
OTHER_CURRENCY = "other currency"
OUT_OF_RANGE = "amount out of range"
ALREADY_PAID = "invoice already paid"


class MalformedEvent(ValueError):
    """A verified body that is not a well-formed event of its provider (400 bad_request)."""


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """One provider event, normalised. Timestamps are aware UTC datetimes."""

    provider: str  # "stripe" | "autumn" | "paddle"
    event_id: str
    type: str  # the provider's own type string
    kind: EventKind
    customer_id: str | None
    occurred_at: datetime  # when the provider created the event (orders deliveries)
    object_id: str | None = None  # invoice, subscription, session, charge or transaction id
    invoice_id: str | None = None
    metered: bool = False  # every line is metered usage (payment failure blocks at once)
    billing_reason: str | None = None  # e.g. "subscription_cycle"
    subscription_id: str | None = None
    subscription_status: str | None = None  # the provider's status string
    plan: str | None = None
    period: Period | None = None
    cancel_at_period_end: bool | None = None
    amount_minor: int | None = None  # top-up, or refunded so far (Stripe's amount_refunded)
    currency: str | None = None
    past_due: bool | None = None


@dataclass(frozen=True, slots=True)
class BillingState:
    """What we know of an org's billing; ``*_at`` fields order out-of-order deliveries."""

    payment_status: PaymentStatus = "ok"
    plan: str = "free"
    period: Period | None = None
    subscription_id: str | None = None
    never_paid: bool = True
    cancel_at_period_end: bool = False
    overdue_since: datetime | None = None
    overdue_invoice_id: str | None = None
    suspended_at: datetime | None = None  # a billing suspension (an admin one is separate)
    suspension_reason: str | None = None
    status_at: datetime | None = None  # the newest event that set payment_status
    subscription_at: datetime | None = None  # the newest event that set plan/period/cancel
    refunded: Mapping[str, int] = field(default_factory=dict)  # charge id -> refunded so far
    paid_invoice_id: str | None = None  # the newest invoice paid: a late failure of it is void
    paid_at: datetime | None = None  # when it was paid: a failure stamped then loses the tie


@dataclass(frozen=True, slots=True)
class CreditEntry:
    """One line of the prepaid ledger; ``idempotency_key`` is unique across the ledger."""

    amount_minor: int
    source: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    field: str
    old: str | None
    new: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class BillingChange:
    """The new state and what else to write, in the same transaction as the event claim.

    ``new_period``: claim (org, period) once; only the claimant sets the period (resetting
    usage, which is counted per period) and writes ``period_grants``. Without ``new_period``,
    ``period_grants`` are the grant of the state's own period, written if not written yet.
    A grant's key names its period; the store adds the org. ``plan_refused``: the plan the
    event named, not applied (not a known plan) while the rest was; a redelivery of the
    event may apply it (``apply_event(..., redelivered=True)``).
    """

    state: BillingState
    credits: tuple[CreditEntry, ...] = ()
    new_period: Period | None = None
    period_grants: tuple[CreditEntry, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    refused: str | None = None  # the event was understood but not applied, and why
    plan_refused: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.audit or self.credits or self.new_period)


SuspensionAction = Literal["suspend", "clear", "none"]


@dataclass(frozen=True, slots=True)
class SuspensionDecision:
    action: SuspensionAction
    reason: str = ""
