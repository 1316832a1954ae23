from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from policies.billing import DEFAULT_GRACE, BillingState, SuspensionDecision, suspension_decision
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
