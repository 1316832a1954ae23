"""Billing suspensions as state changes: what the reconciler and a manual unsuspend write."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from policies.billing import (
    DEFAULT_GRACE,
    AuditEntry,
    BillingChange,
    BillingState,
    suspension_decision,
)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def suspension_change(
    state: BillingState, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> BillingChange:
    """Suspend an org overdue past the grace and never paid; lift it once the org pays."""
    decision = suspension_decision(state, now, grace)
    if decision.action == "suspend":
        new = replace(state, suspended_at=now, suspension_reason=decision.reason)
    elif decision.action == "clear":
        new = replace(state, suspended_at=None, suspension_reason=None)
    else:
        return BillingChange(state)
    audit = AuditEntry(
        "suspended_at", _iso(state.suspended_at), _iso(new.suspended_at), decision.reason
    )
    return BillingChange(new, audit=(audit,))


def manual_unsuspend(state: BillingState, now: datetime, reason: str) -> BillingChange:
    """An operator lifts a billing suspension; the overdue clock restarts, granting a new grace."""
    if state.suspended_at is None:
        return BillingChange(state)
    restarted = now if state.overdue_since is not None else None
    new = replace(state, suspended_at=None, suspension_reason=None, overdue_since=restarted)
    audit = [AuditEntry("suspended_at", _iso(state.suspended_at), None, reason)]
    if restarted is not None:
        audit.append(
            AuditEntry("overdue_since", _iso(state.overdue_since), _iso(restarted), reason)
        )
    return BillingChange(new, audit=tuple(audit))
