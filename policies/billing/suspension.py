"""Billing suspensions: when the reconciler suspends or lifts one, and a manual unsuspend."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from policies.billing.model import AuditEntry, BillingChange, BillingState, SuspensionDecision

DEFAULT_GRACE = timedelta(days=3)


def suspension_decision(
    state: BillingState, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> SuspensionDecision:
    """Suspend a never-paid org overdue for ``grace``; lift it once it pays or is settled."""
    if state.suspended_at is not None:
        if state.payment_status == "ok" or not state.never_paid:
            return SuspensionDecision("clear", "payment settled")
        return SuspensionDecision("none")
    overdue = state.overdue_since
    if (
        state.payment_status == "past_due"
        and state.never_paid
        and overdue is not None
        and now - overdue >= grace
    ):
        return SuspensionDecision("suspend", f"overdue since {overdue.isoformat()}")
    return SuspensionDecision("none")


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
