from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from policies.billing import (
    AuditEntry,
    BillingChange,
    BillingState,
    CreditEntry,
    EventKind,
    apply_event,
    parse_paddle,
    parse_stripe,
)
from policies.model import Period
from tests.policies.billing.samples import (
    JUNE,
    MAY,
    NOW,
    PLANS,
    apply,
    autumn_event,
    event,
    invoice_line,
    paddle_event,
    paddle_transaction,
    stripe_charge,
    stripe_checkout,
    stripe_event,
    stripe_invoice,
    sub_event,
)

# --- apply_event: payments --------------------------------------------------------------------


def test_licensed_payment_failure_is_past_due_with_the_overdue_clock() -> None:
    parsed = parse_stripe(stripe_event("invoice.payment_failed", stripe_invoice(), created=NOW))
    change = apply(BillingState(plan="pro"), parsed, now=NOW + timedelta(seconds=5))
    assert change.state == BillingState(
        payment_status="past_due",
        plan="pro",
        overdue_since=NOW + timedelta(seconds=5),
        overdue_invoice_id="in_123",
        status_at=NOW,
    )
    assert (
        AuditEntry("payment_status", "ok", "past_due", "stripe invoice.payment_failed in_123")
        in change.audit
    )
    assert {a.field for a in change.audit} == {
        "payment_status",
        "overdue_since",
        "overdue_invoice_id",
        "status_at",
    }
    assert (change.credits, change.new_period, change.refused) == ((), None, None)


def test_second_failure_does_not_move_the_overdue_clock() -> None:
    first = apply(BillingState(), event("payment_failed", invoice_id="in_1"), now=NOW)
    later = NOW + timedelta(days=2)
    second = apply(first.state, event("payment_failed", later, invoice_id="in_2"), now=later)
    assert (second.state.overdue_since, second.state.overdue_invoice_id) == (NOW, "in_1")
    assert second.state.status_at == later


def test_metered_payment_failure_blocks_and_starts_the_clock() -> None:
    change = apply(BillingState(), event("payment_failed", metered=True, invoice_id="in_9"))
    assert (change.state.payment_status, change.state.overdue_since) == ("blocked", NOW)
    assert change.state.overdue_invoice_id == "in_9"


def test_licensed_failure_does_not_soften_a_block() -> None:
    blocked = BillingState(payment_status="blocked", overdue_since=NOW)
    change = apply(blocked, event("payment_failed", NOW + timedelta(hours=1)))
    assert change.state.payment_status == "blocked"


def test_payment_clears_everything_overdue() -> None:
    state = BillingState(
        payment_status="past_due",
        overdue_since=NOW,
        overdue_invoice_id="in_1",
        suspended_at=NOW,
        suspension_reason="overdue since ...",
        status_at=NOW,
    )
    later = NOW + timedelta(days=4)
    paid = event("payment_succeeded", later, amount_minor=2900, invoice_id="in_1")
    change = apply(state, paid, now=later)
    assert change.state == BillingState(
        never_paid=False, status_at=later, paid_invoice_id="in_1", paid_at=later
    )


def test_zero_invoice_paid_is_not_a_payment() -> None:
    # A trial's first invoice is for 0: paying it does not make the org a paying one.
    change = apply(BillingState(), event("payment_succeeded", amount_minor=0))
    assert change.state.never_paid is True


def test_cycle_payment_claims_the_new_period_with_the_plan_grant() -> None:
    state = BillingState(plan="pro", period=MAY, never_paid=False)
    paid = event("payment_succeeded", billing_reason="subscription_cycle", period=JUNE)
    change = apply(state, paid)
    assert (change.new_period, change.state.period) == (JUNE, JUNE)
    assert change.period_grants == (
        CreditEntry(5_000, "grant:pro", f"grant:{JUNE.start.isoformat()}"),
    )


@pytest.mark.parametrize(
    ("plan", "reason", "period"),
    [
        pytest.param("free", "subscription_cycle", JUNE, id="plan-without-grant"),
        pytest.param("pro", "subscription_create", JUNE, id="not-a-cycle"),
        pytest.param("pro", "subscription_cycle", None, id="no-period"),
    ],
)
def test_payment_without_a_granted_period(plan: str, reason: str, period: Period | None) -> None:
    state = BillingState(plan=plan, period=MAY)
    change = apply(state, event("payment_succeeded", billing_reason=reason, period=period))
    assert change.period_grants == ()
    if plan == "free":
        assert change.new_period == JUNE
    else:
        assert (change.new_period, change.state.period) == (None, MAY)


def test_late_paid_invoice_for_an_earlier_period_does_not_rewind_the_period() -> None:
    state = BillingState(plan="pro", period=JUNE, payment_status="past_due", overdue_since=NOW)
    change = apply(
        state, event("payment_succeeded", billing_reason="subscription_cycle", period=MAY)
    )
    assert (change.new_period, change.state.period, change.period_grants) == (None, JUNE, ())
    assert change.state.payment_status == "ok"


# --- apply_event: ordering --------------------------------------------------------------------


def test_older_failure_after_newer_payment_changes_nothing() -> None:
    paid = apply(BillingState(), event("payment_succeeded", NOW))
    late = apply(paid.state, event("payment_failed", NOW - timedelta(minutes=1)))
    assert (late.state, late.refused, late.changed, late.audit) == (paid.state, "stale", False, ())


def test_older_payment_after_newer_failure_leaves_it_past_due() -> None:
    failed = apply(BillingState(), event("payment_failed", NOW))
    late = apply(failed.state, event("payment_succeeded", NOW - timedelta(hours=1)))
    assert late.state.payment_status == "past_due"
    assert late.refused == "stale"


def test_same_second_events_are_not_stale() -> None:
    failed = apply(BillingState(), event("payment_failed", NOW))
    paid = apply(failed.state, event("payment_succeeded", NOW))
    assert (paid.state.payment_status, paid.refused) == ("ok", None)


def test_older_subscription_update_changes_nothing() -> None:
    state = BillingState(plan="team", period=JUNE, subscription_id="sub_1", subscription_at=NOW)
    old = event(
        "subscription_updated",
        NOW - timedelta(days=1),
        subscription_id="sub_1",
        subscription_status="active",
        plan="pro",
        period=JUNE,
    )
    change = apply(state, old)
    assert (change.state, change.refused, change.changed) == (state, "stale", False)


def test_stale_payment_still_claims_its_period_and_is_not_refused() -> None:
    # Stores write nothing for a refused change: a partly stale event must not be refused.
    state = BillingState(plan="pro", period=MAY, payment_status="past_due", status_at=NOW)
    late = event(
        "payment_succeeded",
        NOW - timedelta(hours=1),
        billing_reason="subscription_cycle",
        period=JUNE,
    )
    change = apply(state, late)
    assert (change.refused, change.new_period, change.state.payment_status) == (
        None,
        JUNE,
        "past_due",
    )


def test_stale_status_part_of_a_subscription_update_keeps_the_rest() -> None:
    state = BillingState(plan="pro", period=JUNE, subscription_id="sub_1", status_at=NOW)
    late = sub_event(NOW - timedelta(minutes=5), subscription_status="past_due", plan="team")
    change = apply(state, late)
    assert (change.refused, change.state.plan, change.state.payment_status) == (None, "team", "ok")


def test_ledger_effects_are_never_stale() -> None:
    state = BillingState(status_at=NOW, subscription_at=NOW)
    old = NOW - timedelta(days=30)
    topup = apply(state, event("credit_purchased", old, object_id="cs_1", amount_minor=100))
    refund = apply(state, event("charge_refunded", old, object_id="ch_1", amount_minor=40))
    assert [c.amount_minor for c in (*topup.credits, *refund.credits)] == [100, -40]
    assert (topup.refused, refund.refused) == (None, None)


# --- apply_event: credits and refunds ---------------------------------------------------------


def test_credit_purchase_adds_a_keyed_credit() -> None:
    parsed = parse_stripe(stripe_event("checkout.session.completed", stripe_checkout()))
    change = apply(BillingState(), parsed)
    assert change.credits == (CreditEntry(5000, "stripe:cs_test_a1", "stripe:topup:cs_test_a1"),)
    assert (change.state, change.audit) == (BillingState(), ())


def test_zero_credit_purchase_writes_nothing() -> None:
    change = apply(BillingState(), event("credit_purchased", amount_minor=0))
    assert not change.changed


def test_refunds_are_cumulative() -> None:
    first = apply(BillingState(), parse_stripe(stripe_event("charge.refunded", stripe_charge(300))))
    second = apply(first.state, parse_stripe(stripe_event("charge.refunded", stripe_charge(500))))
    assert first.credits == (CreditEntry(-300, "stripe:ch_3PqRsT", "stripe:refund:ch_3PqRsT:300"),)
    assert second.credits == (CreditEntry(-200, "stripe:ch_3PqRsT", "stripe:refund:ch_3PqRsT:500"),)
    assert second.state.refunded == {"ch_3PqRsT": 500}
    assert second.audit == (
        AuditEntry("refunded.ch_3PqRsT", "300", "500", "stripe charge.refunded ch_3PqRsT"),
    )


def test_an_older_refund_delivered_late_writes_nothing() -> None:
    state = BillingState(refunded={"ch_1": 500})
    change = apply(state, event("charge_refunded", object_id="ch_1", amount_minor=300))
    assert not change.changed
    assert change.state.refunded == {"ch_1": 500}


# --- apply_event: Autumn past_due -------------------------------------------------------------


def test_autumn_past_due_starts_the_clock_once_then_clears() -> None:
    first = apply(BillingState(), autumn_event(past_due=True), now=NOW)
    later = NOW + timedelta(days=1)
    again = apply(first.state, autumn_event(later, past_due=True), now=later)
    assert (again.state.payment_status, again.state.overdue_since) == ("past_due", NOW)
    cleared = apply(again.state, autumn_event(later + timedelta(days=1), past_due=False))
    assert (cleared.state.payment_status, cleared.state.overdue_since) == ("ok", None)


def test_autumn_not_past_due_leaves_a_block() -> None:
    state = BillingState(payment_status="blocked", overdue_since=NOW)
    change = apply(state, autumn_event(past_due=False))
    assert (change.state.payment_status, change.state.overdue_since) == ("blocked", NOW)


def test_autumn_plan_and_period_are_adopted() -> None:
    state = BillingState(plan="pro", period=MAY)
    change = apply(state, autumn_event(past_due=False, plan="team", period=JUNE))
    assert (change.state.plan, change.new_period) == ("team", JUNE)
    assert change.period_grants == (CreditEntry(20_000, "grant:team", f"grant:{JUNE.key}"),)


def test_autumn_unknown_plan_refuses_the_plan_alone() -> None:
    state = BillingState(plan="pro")
    change = apply(state, autumn_event(past_due=True, plan="mystery"))
    assert (change.state.plan, change.state.payment_status) == ("pro", "past_due")
    assert (change.refused, change.plan_refused) == (None, "mystery")


@pytest.mark.parametrize(("current", "expected"), [("pro", "free"), ("team", "team")])
def test_autumn_expiry_frees_only_the_orgs_own_plan(current: str, expected: str) -> None:
    expiry = autumn_event(past_due=False, plan="pro", subscription_status="expired")
    assert apply(BillingState(plan=current), expiry).state.plan == expected


def test_autumn_undated_event_is_stale_after_a_dated_one() -> None:
    state = BillingState(payment_status="past_due", overdue_since=NOW, status_at=NOW)
    undated = autumn_event(datetime(1970, 1, 1, tzinfo=UTC), past_due=False)
    assert apply(state, undated).refused == "stale"


def test_ignored_event_changes_nothing() -> None:
    state = BillingState(plan="pro", payment_status="past_due")
    change = apply(state, event("ignored"))
    assert change == BillingChange(state)


def test_payment_event_from_parsed_paddle_recurring_transaction() -> None:
    parsed = parse_paddle(paddle_event("transaction.completed", paddle_transaction()))
    change = apply(BillingState(plan="pro", period=MAY), parsed)
    assert (change.new_period, change.state.never_paid) == (JUNE, False)
    assert change.audit[0].reason == "paddle transaction.completed txn_01hv8wptq8"


# --- regressions: paid invoices, currencies, amounts ------------------------------------------


def test_a_failure_of_an_invoice_already_paid_is_ignored() -> None:
    """Regression: invoice.paid, then a same-second invoice.payment_failed of the same
    (metered) invoice, left the org blocked."""
    lines = [invoice_line(MAY, metered=True)]
    paid = parse_stripe(stripe_event("invoice.paid", stripe_invoice(lines=lines)))
    failed = parse_stripe(stripe_event("invoice.payment_failed", stripe_invoice(lines=lines)))
    state = apply(BillingState(plan="pro"), paid).state
    for late in (failed, replace(failed, occurred_at=NOW + timedelta(hours=1))):
        change = apply(state, late)
        assert (change.refused, change.state, change.changed) == (
            "invoice already paid",
            state,
            False,
        )


def test_on_equal_timestamps_payment_wins() -> None:
    paid = apply(BillingState(), event("payment_succeeded", invoice_id="in_1")).state
    same = apply(paid, event("payment_failed", invoice_id="in_2"))
    assert (same.refused, same.state.payment_status) == ("stale", "ok")
    later = apply(paid, event("payment_failed", NOW + timedelta(seconds=1), invoice_id="in_2"))
    assert later.state.payment_status == "past_due"
    # The other order: the failure first, then the payment at the same second, settles.
    failed = apply(BillingState(), event("payment_failed", invoice_id="in_1")).state
    assert apply(failed, event("payment_succeeded", invoice_id="in_1")).state.payment_status == (
        "ok"
    )


@pytest.mark.parametrize("kind", ["credit_purchased", "charge_refunded"])
def test_a_ledger_entry_in_another_currency_is_refused_and_audited(kind: EventKind) -> None:
    """Regression: a ¥1000 top-up was credited as 1000 cents."""
    change = apply(BillingState(), event(kind, amount_minor=1000, currency="jpy"))
    assert (change.refused, change.credits, change.state) == (
        "other currency",
        (),
        BillingState(),
    )
    (audit,) = change.audit
    assert (audit.field, audit.new) == ("credit_refused", "1000 jpy")
    assert audit.reason.endswith("other currency (the ledger's is eur)")


@pytest.mark.parametrize("currency", ["EUR", "eur", None], ids=["upper", "lower", "none"])
def test_currency_codes_compare_case_insensitively(currency: str | None) -> None:
    topup = event("credit_purchased", amount_minor=1000, currency=currency)
    assert [c.amount_minor for c in apply(BillingState(), topup).credits] == [1000]
    ledger_upper = apply_event(BillingState(), topup, plans=PLANS, currency="EUR", now=NOW)
    assert [c.amount_minor for c in ledger_upper.credits] == [1000]


@pytest.mark.parametrize(
    ("kind", "amount"),
    [("credit_purchased", 2**63), ("charge_refunded", 2**63 + 5), ("credit_purchased", 10**30)],
)
def test_an_amount_beyond_the_stores_integer_range_is_refused(kind: EventKind, amount: int) -> None:
    change = apply(BillingState(), event(kind, amount_minor=amount))
    assert (change.refused, change.credits, change.state) == (
        "amount out of range",
        (),
        BillingState(),
    )
    assert [a.field for a in change.audit] == ["credit_refused"]
    # The largest amount the stores hold is taken.
    largest = apply(BillingState(), event("credit_purchased", amount_minor=2**63 - 1))
    assert [c.amount_minor for c in largest.credits] == [2**63 - 1]


def test_a_plan_grant_beyond_the_integer_range_is_refused_alone() -> None:
    # The renewal still starts the period (a grant misconfigured past the range must not keep
    # the org in its old period); the grant is refused and audited.
    state = BillingState(plan="pro", period=MAY)
    renewal = event("payment_succeeded", billing_reason="subscription_cycle", period=JUNE)
    change = apply_event(state, renewal, plans=PLANS, plan_grants={"pro": 2**63}, now=NOW)
    assert (change.refused, change.new_period, change.period_grants) == (None, JUNE, ())
    assert "credit_refused" in [a.field for a in change.audit]


def test_a_refund_of_the_most_negative_amount_is_refused() -> None:
    # Seen in review: a refund of 2**63 took a balance to -2**63 (the range's bottom).
    change = apply(BillingState(), event("charge_refunded", amount_minor=2**63))
    assert change.refused == "amount out of range" and change.credits == ()
