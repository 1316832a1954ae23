from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from policies.billing import (
    DEFAULT_GRACE,
    AuditEntry,
    BillingChange,
    BillingState,
    SuspensionDecision,
    manual_unsuspend,
    suspension_change,
    suspension_decision,
)
from tests.policies.billing.samples import NOW, apply, autumn_event, event

OVERDUE = BillingState(payment_status="past_due", overdue_since=NOW)


@pytest.mark.parametrize(
    ("elapsed", "action"),
    [
        pytest.param(timedelta(days=2, hours=23, minutes=59), "none", id="2d23h59m"),
        pytest.param(timedelta(days=3), "suspend", id="exactly-3d"),
        pytest.param(timedelta(days=30), "suspend", id="30d"),
    ],
)
def test_suspension_boundaries(elapsed: timedelta, action: str) -> None:
    decision = suspension_decision(OVERDUE, NOW + elapsed)
    assert decision.action == action
    if action == "suspend":
        assert decision.reason == f"overdue since {NOW.isoformat()}"


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(replace(OVERDUE, never_paid=False), id="paid-before"),
        pytest.param(replace(OVERDUE, payment_status="blocked"), id="blocked"),
        pytest.param(replace(OVERDUE, overdue_since=None), id="no-clock"),
        pytest.param(replace(OVERDUE, suspended_at=NOW), id="already-suspended"),
        pytest.param(BillingState(), id="ok"),
    ],
)
def test_no_suspension(state: BillingState) -> None:
    assert suspension_decision(state, NOW + timedelta(days=10)) == SuspensionDecision("none")


def test_suspension_grace_is_an_argument() -> None:
    assert suspension_decision(OVERDUE, NOW + timedelta(hours=1), timedelta(hours=1)).action == (
        "suspend"
    )
    assert DEFAULT_GRACE == timedelta(days=3)


def test_suspension_cleared_once_paid() -> None:
    suspended = replace(OVERDUE, suspended_at=NOW + timedelta(days=3), suspension_reason="x")
    paid = apply(suspended, event("payment_succeeded", NOW + timedelta(days=4))).state
    assert paid.suspended_at is None
    # Settled some other way (Autumn past_due false): the reconciler lifts it.
    settled = apply(suspended, autumn_event(NOW + timedelta(days=4), past_due=False)).state
    assert suspension_decision(settled, NOW + timedelta(days=4)).action == "clear"
    assert suspension_decision(replace(suspended, never_paid=False), NOW).action == "clear"


def test_suspension_change_suspends_with_its_audit_entry() -> None:
    later = NOW + DEFAULT_GRACE
    change = suspension_change(OVERDUE, later)
    reason = f"overdue since {NOW.isoformat()}"
    assert change.state == replace(OVERDUE, suspended_at=later, suspension_reason=reason)
    assert change.audit == (AuditEntry("suspended_at", None, later.isoformat(), reason),)


def test_suspension_change_lifts_a_suspension_once_paid() -> None:
    suspended = replace(OVERDUE, never_paid=False, suspended_at=NOW, suspension_reason="x")
    change = suspension_change(suspended, NOW + timedelta(days=1))
    assert change.state == replace(suspended, suspended_at=None, suspension_reason=None)
    assert change.audit == (AuditEntry("suspended_at", NOW.isoformat(), None, "payment settled"),)


def test_suspension_change_without_a_decision_writes_nothing() -> None:
    assert suspension_change(OVERDUE, NOW) == BillingChange(OVERDUE)


def test_manual_unsuspend_restarts_the_overdue_clock() -> None:
    suspended = replace(OVERDUE, suspended_at=NOW + DEFAULT_GRACE, suspension_reason="x")
    later = NOW + timedelta(days=5)
    change = manual_unsuspend(suspended, later, "support ticket")
    assert change.state == replace(
        suspended, suspended_at=None, suspension_reason=None, overdue_since=later
    )
    assert [(a.field, a.new, a.reason) for a in change.audit] == [
        ("suspended_at", None, "support ticket"),
        ("overdue_since", later.isoformat(), "support ticket"),
    ]
    assert suspension_decision(change.state, later + DEFAULT_GRACE).action == "suspend"


def test_manual_unsuspend_of_an_org_not_suspended_writes_nothing() -> None:
    assert manual_unsuspend(OVERDUE, NOW, "why") == BillingChange(OVERDUE)
