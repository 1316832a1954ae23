from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from policies.billing import (
    AuditEntry,
    BillingChange,
    BillingEvent,
    BillingState,
    CreditEntry,
    apply_event,
    parse_stripe,
)
from policies.model import PaymentStatus
from tests.policies.billing.samples import (
    GRANTS,
    JUNE,
    MAY,
    NOW,
    PLANS,
    apply,
    event,
    stripe_event,
    stripe_invoice,
    stripe_subscription,
    sub_event,
)

# --- apply_event: subscriptions ---------------------------------------------------------------


def test_unknown_plan_refuses_the_plan_alone() -> None:
    """Regression: past_due with an unknown plan left payment_status ok (all was refused)."""
    state = BillingState(plan="pro", period=MAY, subscription_id="sub_1")
    late = sub_event(plan="enterprise", subscription_status="past_due", cancel_at_period_end=True)
    change = apply(state, late)
    assert change.state == replace(
        state,
        payment_status="past_due",
        overdue_since=NOW,
        status_at=NOW,
        period=JUNE,
        cancel_at_period_end=True,
        subscription_at=NOW,
    )
    assert (change.refused, change.plan_refused) == (None, "enterprise")
    # The new period starts (usage resets); its grant waits for the plan.
    assert (change.new_period, change.period_grants) == (JUNE, ())
    assert (
        AuditEntry(
            "plan_refused",
            "pro",
            "enterprise",
            "stripe test.subscription_updated obj_1: unknown plan",
        )
        in change.audit
    )


def test_redelivery_applies_a_refused_plan_once_it_is_known() -> None:
    state = BillingState(plan="pro", period=MAY, subscription_id="sub_1")
    late = sub_event(plan="enterprise", subscription_status="past_due")
    first = apply(state, late)
    # Paid meanwhile: the redelivery decides the plan alone, not the status again.
    paid = apply(first.state, event("payment_succeeded", NOW, amount_minor=100)).state
    plans, grants = PLANS | {"enterprise"}, {**GRANTS, "enterprise": 90_000}
    again = apply_event(paid, late, plans=plans, plan_grants=grants, now=NOW, redelivered=True)
    assert again.refused is None and again.plan_refused is None
    assert again.state == replace(paid, plan="enterprise")
    assert again.period_grants == (CreditEntry(90_000, "grant:enterprise", f"grant:{JUNE.key}"),)
    assert again.new_period is None
    assert [a.field for a in again.audit] == ["plan"]


def test_redelivery_with_the_plan_still_unknown_or_superseded_changes_nothing() -> None:
    state = BillingState(plan="pro", period=MAY, subscription_id="sub_1")
    late = sub_event(plan="enterprise")
    first = apply(state, late).state
    still = apply_event(first, late, plans=PLANS, now=NOW, redelivered=True)
    assert (still.refused, still.state) == ("unknown plan", first)
    assert [a.field for a in still.audit] == ["plan_refused"]
    newer = apply(first, sub_event(NOW + timedelta(hours=1), plan="team")).state
    plans = PLANS | {"enterprise"}
    stale = apply_event(newer, late, plans=plans, now=NOW, redelivered=True)
    assert (stale.refused, stale.state, stale.audit) == ("stale", newer, ())


def test_an_ending_subscription_of_an_unknown_plan_still_ends() -> None:
    state = BillingState(plan="pro", subscription_id="sub_1")
    change = apply(state, sub_event(plan="enterprise", subscription_status="canceled"))
    assert (change.state.plan, change.plan_refused, change.refused) == ("free", None, None)


def test_subscription_update_syncs_plan_cancel_and_period_and_claims_the_period() -> None:
    state = BillingState(plan="pro", period=MAY, subscription_id="sub_1")
    change = apply(state, sub_event(plan="team", cancel_at_period_end=True))
    assert change.state == replace(
        state, plan="team", period=JUNE, cancel_at_period_end=True, subscription_at=NOW
    )
    assert change.new_period == JUNE
    assert change.period_grants == (CreditEntry(20_000, "grant:team", f"grant:{JUNE.key}"),)
    assert {a.field for a in change.audit} == {
        "plan",
        "period",
        "cancel_at_period_end",
        "subscription_at",
    }


def test_subscription_update_in_the_same_period_is_not_a_new_period() -> None:
    state = BillingState(plan="pro", period=JUNE, subscription_id="sub_1")
    change = apply(state, sub_event(cancel_at_period_end=True))
    assert (change.new_period, change.period_grants) == (None, ())
    assert change.state.cancel_at_period_end is True


def test_first_subscription_sets_the_subscription_id() -> None:
    change = apply(BillingState(), sub_event())
    assert (change.state.subscription_id, change.state.plan) == ("sub_1", "pro")


def test_subscription_past_due_starts_the_clock_once() -> None:
    state = BillingState(
        plan="pro", overdue_since=NOW - timedelta(days=1), overdue_invoice_id="in_0"
    )
    change = apply(state, sub_event(subscription_status="past_due"))
    assert change.state.payment_status == "past_due"
    assert (change.state.overdue_since, change.state.overdue_invoice_id) == (
        NOW - timedelta(days=1),
        "in_0",
    )


def test_subscription_unpaid_blocks() -> None:
    change = apply(BillingState(plan="pro"), sub_event(subscription_status="unpaid"))
    assert (change.state.payment_status, change.state.overdue_since) == ("blocked", NOW)


@pytest.mark.parametrize(
    ("never_paid", "expected"), [(False, "ok"), (True, "past_due")], ids=["paid-before", "never"]
)
def test_subscription_active_settles_past_due_only_for_an_org_that_paid(
    never_paid: bool, expected: PaymentStatus
) -> None:
    state = BillingState(payment_status="past_due", never_paid=never_paid, overdue_since=NOW)
    change = apply(state, sub_event(NOW + timedelta(hours=1)))
    assert change.state.payment_status == expected
    assert (change.state.overdue_since is None) == (expected == "ok")


def test_subscription_active_does_not_lift_a_block() -> None:
    state = BillingState(payment_status="blocked", never_paid=False)
    assert apply(state, sub_event()).state.payment_status == "blocked"


@pytest.mark.parametrize("status", ["canceled", "incomplete_expired"])
def test_subscription_ending_status_moves_to_the_free_plan(status: str) -> None:
    state = BillingState(plan="pro", subscription_id="sub_1", cancel_at_period_end=True)
    change = apply(state, sub_event(subscription_status=status))
    assert (change.state.plan, change.state.subscription_id) == ("free", None)
    assert change.state.cancel_at_period_end is False


def test_subscription_deleted_moves_to_the_free_plan() -> None:
    state = BillingState(plan="team", subscription_id="sub_1", cancel_at_period_end=True)
    change = apply(state, event("subscription_deleted", subscription_id="sub_1"))
    assert change.state == replace(
        state, plan="free", subscription_id=None, cancel_at_period_end=False, subscription_at=NOW
    )


def test_deletion_of_a_replaced_subscription_is_refused() -> None:
    # Upgrading by creating sub_2 and then deleting sub_1 must not drop the org to free.
    state = BillingState(plan="team", subscription_id="sub_2")
    for ended in (
        event("subscription_deleted", subscription_id="sub_1"),
        sub_event(subscription_id="sub_1", subscription_status="canceled"),
    ):
        change = apply(state, ended)
        assert (change.state, change.refused) == (state, "not the current subscription")


def test_stale_subscription_deletion_is_refused() -> None:
    state = BillingState(plan="pro", subscription_id="sub_1", subscription_at=NOW)
    deleted = event("subscription_deleted", NOW - timedelta(seconds=1), subscription_id="sub_1")
    change = apply(state, deleted)
    assert (change.state, change.refused) == (state, "stale")


def test_renewal_race_both_events_name_the_same_new_period() -> None:
    """invoice.paid and subscription.updated for one renewal: the store claims the period once."""
    state = BillingState(plan="pro", period=MAY, subscription_id="sub_1", never_paid=False)
    paid = parse_stripe(stripe_event("invoice.paid", stripe_invoice()))
    updated = parse_stripe(stripe_event("customer.subscription.updated", stripe_subscription()))
    by_invoice, by_subscription = apply(state, paid), apply(state, updated)
    assert by_invoice.new_period == by_subscription.new_period == JUNE
    assert by_invoice.period_grants == by_subscription.period_grants
    assert {g.idempotency_key for g in by_invoice.period_grants} == {f"grant:{JUNE.key}"}
    # Applied one after the other (under the org lock) the state agrees too.
    assert apply(by_invoice.state, updated).state.period == JUNE
    assert apply(by_subscription.state, paid).state.period == JUNE


# --- regressions: plan grants -----------------------------------------------------------------


def written(changes: list[BillingChange]) -> dict[str, int]:
    """The ledger a store keeps from ``changes`` applied in order: one claim per period, one
    entry per key."""
    claimed: set[datetime] = set()
    ledger: dict[str, int] = {}
    for change in changes:
        grants = change.period_grants
        if change.new_period is not None:
            grants = () if change.new_period.start in claimed else grants
            claimed.add(change.new_period.start)
        for entry in (*change.credits, *grants):
            ledger.setdefault(entry.idempotency_key, entry.amount_minor)
    return ledger


def in_order(state: BillingState, events: list[BillingEvent]) -> list[BillingChange]:
    changes = []
    for one in events:
        changes.append(apply(state, one))
        state = changes[-1].state
    return changes


@pytest.mark.parametrize("invoice_first", [True, False], ids=["invoice-first", "update-first"])
def test_first_subscription_grants_the_new_plan_once_whichever_event_lands_first(
    invoice_first: bool,
) -> None:
    """Regression: with invoice.paid first, it claimed the period on the free plan (no grant)
    and the subscription update, finding the period claimed, granted nothing: 0."""
    paid = parse_stripe(stripe_event("invoice.paid", stripe_invoice()))
    updated = parse_stripe(stripe_event("customer.subscription.updated", stripe_subscription()))
    events = [paid, updated] if invoice_first else [updated, paid]
    changes = in_order(BillingState(), events)
    assert written(changes) == {f"grant:{JUNE.key}": 5_000}
    assert (changes[-1].state.plan, changes[-1].state.period) == ("pro", JUNE)


def test_a_plan_changed_within_a_granted_period_grants_nothing_more() -> None:
    state = BillingState(plan="pro", period=MAY, subscription_id="sub_1")
    changes = in_order(state, [sub_event(plan="pro"), sub_event(plan="team"), sub_event()])
    assert written(changes) == {f"grant:{JUNE.key}": 5_000}
