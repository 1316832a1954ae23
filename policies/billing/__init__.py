"""Billing decisions: provider events normalised, their effects on an org's billing state,
and the suspension policy. Pure: no I/O, no clock reads (``now`` is an argument), money in
integer minor units.

Flow: a verified webhook body is parsed into a ``BillingEvent`` (``parse_stripe``,
``parse_autumn``, ``parse_paddle``); the store claims the event id, loads the org's
``BillingState`` under a lock, calls ``apply_event`` and persists the ``BillingChange`` in the
same transaction. The reconciler calls ``suspension_change`` the same way.
"""

from policies.billing.model import (
    ALREADY_PAID,
    MAX_MINOR,
    MIN_MINOR,
    OTHER_CURRENCY,
    OUT_OF_RANGE,
    UNKNOWN_PLAN,
    AuditEntry,
    BillingChange,
    BillingEvent,
    BillingState,
    CreditEntry,
    EventKind,
    MalformedEvent,
    SuspensionAction,
    SuspensionDecision,
)
from policies.billing.providers.autumn import parse_autumn
from policies.billing.providers.paddle import parse_paddle
from policies.billing.providers.stripe import parse_stripe
from policies.billing.suspension import (
    DEFAULT_GRACE,
    manual_unsuspend,
    suspension_change,
    suspension_decision,
)
from policies.billing.transitions import apply_event

__all__ = [
    "ALREADY_PAID",
    "DEFAULT_GRACE",
    "MAX_MINOR",
    "MIN_MINOR",
    "OTHER_CURRENCY",
    "OUT_OF_RANGE",
    "UNKNOWN_PLAN",
    "AuditEntry",
    "BillingChange",
    "BillingEvent",
    "BillingState",
    "CreditEntry",
    "EventKind",
    "MalformedEvent",
    "SuspensionAction",
    "SuspensionDecision",
    "apply_event",
    "manual_unsuspend",
    "parse_autumn",
    "parse_paddle",
    "parse_stripe",
    "suspension_change",
    "suspension_decision",
]
