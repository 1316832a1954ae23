from __future__ import annotations

from typing import Any

import pytest

from policies.billing import BillingEvent, BillingState, MalformedEvent, parse_stripe
from tests.policies.billing.samples import (
    CURRENCY,
    JUNE,
    MAY,
    NOW,
    SECRET,
    apply,
    invoice_line,
    mutated,
    stripe_charge,
    stripe_checkout,
    stripe_event,
    stripe_invoice,
    stripe_subscription,
)


def test_stripe_licensed_payment_failure() -> None:
    parsed = parse_stripe(stripe_event("invoice.payment_failed", stripe_invoice()))
    assert parsed == BillingEvent(
        provider="stripe",
        event_id="evt_1PqRsT2eZvKYlo2C",
        type="invoice.payment_failed",
        kind="payment_failed",
        customer_id="cus_1",
        occurred_at=NOW,
        object_id="in_123",
        invoice_id="in_123",
        metered=False,
        billing_reason="subscription_cycle",
        subscription_id="sub_1",
        period=JUNE,
        amount_minor=2900,
        currency="usd",
    )


@pytest.mark.parametrize("type_", ["invoice.paid", "invoice.payment_succeeded"])
def test_stripe_paid_invoices_are_payment_succeeded(type_: str) -> None:
    parsed = parse_stripe(stripe_event(type_, stripe_invoice(amount=1200)))
    assert (parsed.kind, parsed.type, parsed.invoice_id) == ("payment_succeeded", type_, "in_123")
    assert (parsed.period, parsed.amount_minor) == (JUNE, 1200)


def test_stripe_renewal_with_a_licensed_and_a_metered_line_is_a_plan_invoice() -> None:
    """Regression: a renewal billing the plan and last period's usage blocked at once."""
    lines = [invoice_line(JUNE), invoice_line(MAY, metered=True)]
    parsed = parse_stripe(stripe_event("invoice.payment_failed", stripe_invoice(lines=lines)))
    assert not parsed.metered
    assert parsed.period == JUNE  # the licensed line's, billed in advance
    change = apply(BillingState(plan="pro"), parsed)
    assert (change.state.payment_status, change.state.overdue_since) == ("past_due", NOW)


def test_stripe_invoice_whose_lines_are_all_metered_is_metered() -> None:
    lines = [invoice_line(MAY, metered=True), invoice_line(MAY, metered=True)]
    parsed = parse_stripe(stripe_event("invoice.payment_failed", stripe_invoice(lines=lines)))
    assert parsed.metered
    assert apply(BillingState(plan="pro"), parsed).state.payment_status == "blocked"


def test_stripe_metered_line_by_legacy_plan_usage_type() -> None:
    line = invoice_line(MAY)
    del line["price"]
    line["plan"] = {"id": "plan_usage", "object": "plan", "usage_type": "metered"}
    parsed = parse_stripe(stripe_event("invoice.payment_failed", stripe_invoice(lines=[line])))
    assert parsed.metered


def test_stripe_metered_only_invoice_has_no_new_period() -> None:
    # Usage is billed in arrears: the line's period is the one that just ended.
    lines = [invoice_line(MAY, metered=True)]
    parsed = parse_stripe(stripe_event("invoice.paid", stripe_invoice(lines=lines)))
    assert parsed.metered
    assert parsed.period is None


def test_stripe_invoice_without_lines() -> None:
    inv = stripe_invoice()
    del inv["lines"]
    parsed = parse_stripe(stripe_event("invoice.payment_failed", inv))
    assert (parsed.metered, parsed.period) == (False, None)


def test_stripe_invoice_in_newer_api_shape() -> None:
    inv = stripe_invoice(lines=[invoice_line(JUNE, new_api=True)])
    del inv["subscription"]
    inv["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"subscription": "sub_9", "metadata": {}},
    }
    parsed = parse_stripe(stripe_event("invoice.paid", inv))
    assert (parsed.subscription_id, parsed.period) == ("sub_9", JUNE)


def test_stripe_expanded_customer_object() -> None:
    inv = stripe_invoice()
    inv["customer"] = {"id": "cus_1", "object": "customer", "email": "a@example.com"}
    assert parse_stripe(stripe_event("invoice.paid", inv)).customer_id == "cus_1"


@pytest.mark.parametrize(
    ("type_", "kind"),
    [
        ("customer.subscription.created", "subscription_updated"),
        ("customer.subscription.updated", "subscription_updated"),
        ("customer.subscription.deleted", "subscription_deleted"),
    ],
)
def test_stripe_subscription_events(type_: str, kind: str) -> None:
    sub = stripe_subscription(status="past_due", cancel_at_period_end=True)
    parsed = parse_stripe(stripe_event(type_, sub))
    assert parsed.kind == kind
    assert (parsed.object_id, parsed.subscription_id, parsed.customer_id) == (
        "sub_1",
        "sub_1",
        "cus_1",
    )
    assert (parsed.subscription_status, parsed.plan, parsed.period) == ("past_due", "pro", JUNE)
    assert parsed.cancel_at_period_end is True
    assert parsed.invoice_id == "in_123"


@pytest.mark.parametrize(
    ("item", "plan"),
    [
        pytest.param({"price": {"id": "price_1", "lookup_key": "team"}}, "team", id="lookup-key"),
        pytest.param({"price": {"id": "price_1", "lookup_key": None}}, "price_1", id="price-id"),
        pytest.param({"price": None, "plan": {"id": "plan_old"}}, "plan_old", id="legacy-plan"),
        pytest.param({}, None, id="none"),
    ],
)
def test_stripe_subscription_plan_from_first_item(item: dict[str, Any], plan: str | None) -> None:
    sub = stripe_subscription()
    sub["items"]["data"] = [item, {"price": {"id": "price_addon", "lookup_key": "addon"}}]
    assert parse_stripe(stripe_event("customer.subscription.updated", sub)).plan == plan


def test_stripe_subscription_period_on_the_item_in_newer_api_versions() -> None:
    sub = stripe_subscription(period_on_item=True)
    assert "current_period_start" not in sub
    assert parse_stripe(stripe_event("customer.subscription.updated", sub)).period == JUNE


def test_stripe_subscription_without_items_or_period() -> None:
    sub = stripe_subscription()
    for key in ("items", "current_period_start", "current_period_end"):
        del sub[key]
    parsed = parse_stripe(stripe_event("customer.subscription.updated", sub))
    assert (parsed.plan, parsed.period) == (None, None)


def test_stripe_checkout_top_up_uses_amount_total() -> None:
    session = stripe_checkout(metadata={"credit_minor": "999999"})
    parsed = parse_stripe(stripe_event("checkout.session.completed", session))
    assert parsed.kind == "credit_purchased"
    assert (parsed.object_id, parsed.amount_minor, parsed.currency) == ("cs_test_a1", 5000, "eur")


@pytest.mark.parametrize(
    ("amount_total", "metadata", "expected"),
    [
        pytest.param(None, {"credit_minor": "2500"}, 2500, id="null-credit-string"),
        pytest.param(..., {"amount_minor": 700}, 700, id="absent-amount-int"),
        pytest.param(None, {"credit_minor": 0}, 0, id="zero"),
    ],
)
def test_stripe_checkout_metadata_only_without_amount_total(
    amount_total: Any, metadata: dict[str, Any], expected: int
) -> None:
    session = stripe_checkout(amount_total=amount_total, metadata=metadata)
    assert parse_stripe(stripe_event("checkout.session.completed", session)).amount_minor == (
        expected
    )


def test_stripe_checkout_without_payment_status_counts() -> None:
    session = stripe_checkout(payment_status=...)
    assert parse_stripe(stripe_event("checkout.session.completed", session)).kind == (
        "credit_purchased"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"payment_status": "unpaid"}, id="unpaid"),
        pytest.param({"payment_status": "no_payment_required"}, id="free"),
        # Paid through its first invoice (invoice.paid): crediting it too would pay twice.
        pytest.param({"mode": "subscription"}, id="subscription-checkout"),
    ],
)
def test_stripe_checkout_not_a_paid_top_up_is_ignored(overrides: dict[str, Any]) -> None:
    parsed = parse_stripe(stripe_event("checkout.session.completed", stripe_checkout(**overrides)))
    assert (parsed.kind, parsed.amount_minor) == ("ignored", None)


def test_stripe_charge_refunded_carries_the_cumulative_amount() -> None:
    parsed = parse_stripe(stripe_event("charge.refunded", stripe_charge(800)))
    assert (parsed.kind, parsed.object_id, parsed.amount_minor) == (
        "charge_refunded",
        "ch_3PqRsT",
        800,
    )


@pytest.mark.parametrize("type_", ["customer.created", "invoice.finalized", "payout.paid"])
def test_stripe_other_types_are_ignored_without_reading_data(type_: str) -> None:
    payload = stripe_event(type_, {})
    del payload["data"]
    parsed = parse_stripe(payload)
    assert (parsed.kind, parsed.type, parsed.occurred_at) == ("ignored", type_, NOW)


_INV = stripe_event("invoice.payment_failed", stripe_invoice())
_SUB = stripe_event("customer.subscription.updated", stripe_subscription())
_CHECKOUT = stripe_event(
    "checkout.session.completed",
    stripe_checkout(amount_total=None, metadata={"org": "org_1", "credit_minor": "2500"}),
)
_CHARGE = stripe_event("charge.refunded", stripe_charge(100))
_LINE = ("data", "object", "lines", "data", 0)


@pytest.mark.parametrize(
    ("payload", "path", "value"),
    [
        pytest.param(_INV, ("id",), ..., id="no-id"),
        pytest.param(_INV, ("type",), ..., id="no-type"),
        pytest.param(_INV, ("created",), ..., id="no-created"),
        pytest.param(_INV, ("id",), 42, id="int-id"),
        pytest.param(_INV, ("created",), SECRET, id="string-created"),
        pytest.param(_INV, ("created",), 1717200000.5, id="float-created"),
        pytest.param(_INV, ("created",), True, id="bool-created"),
        pytest.param(_INV, ("created",), -1, id="negative-created"),
        pytest.param(_INV, ("created",), 10**30, id="created-out-of-range"),
        pytest.param(_INV, ("data",), ..., id="no-data"),
        pytest.param(_INV, ("data", "object"), [SECRET], id="object-not-object"),
        pytest.param(_INV, ("data", "object", "id"), ..., id="no-invoice-id"),
        pytest.param(_INV, ("data", "object", "customer"), 17, id="int-customer"),
        pytest.param(_INV, ("data", "object", "amount_due"), 29.5, id="float-amount-due"),
        pytest.param(_INV, ("data", "object", "lines", "data"), SECRET, id="lines-not-list"),
        pytest.param(_INV, (*_LINE, "period", "end"), 0, id="period-ends-before-start"),
        pytest.param(_INV, (*_LINE, "period", "end"), ..., id="half-a-period"),
        pytest.param(_SUB, ("data", "object", "cancel_at_period_end"), SECRET, id="cancel-str"),
        pytest.param(_SUB, ("data", "object", "current_period_start"), "1717200000", id="str-ts"),
        pytest.param(_SUB, ("data", "object", "status"), 3, id="int-status"),
        pytest.param(_CHECKOUT, ("data", "object", "metadata"), ..., id="no-amount-at-all"),
        pytest.param(
            _CHECKOUT, ("data", "object", "metadata", "credit_minor"), "12.50", id="meta-decimal"
        ),
        pytest.param(
            _CHECKOUT, ("data", "object", "metadata", "credit_minor"), "-300", id="meta-negative"
        ),
        pytest.param(
            _CHECKOUT, ("data", "object", "metadata", "credit_minor"), SECRET, id="meta-text"
        ),
        pytest.param(
            _CHECKOUT, ("data", "object", "metadata", "credit_minor"), True, id="meta-bool"
        ),
        pytest.param(_CHECKOUT, ("data", "object", "amount_total"), 50.0, id="float-total"),
        pytest.param(_CHECKOUT, ("data", "object", "amount_total"), -5, id="negative-total"),
        pytest.param(_CHECKOUT, ("data", "object", "amount_total"), False, id="bool-total"),
        pytest.param(_CHARGE, ("data", "object", "amount_refunded"), 1.5, id="float-refund"),
        pytest.param(_CHARGE, ("data", "object", "amount_refunded"), ..., id="no-refund-amount"),
    ],
)
def test_stripe_malformed(payload: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    with pytest.raises(MalformedEvent) as excinfo:
        parse_stripe(mutated(payload, path, value))
    message = str(excinfo.value)
    assert SECRET not in message
    if value is not ... and not isinstance(value, bool) and len(str(value)) > 2:
        assert str(value) not in message


def test_stripe_payload_not_an_object() -> None:
    with pytest.raises(MalformedEvent):
        parse_stripe([SECRET])  # type: ignore[arg-type]


def test_a_metadata_amount_of_forty_digits_is_recorded_as_out_of_range() -> None:
    # Seen in review: 400 "not a non-negative integer" and nothing recorded, so every retry 400.
    payload = {
        "id": "evt_big",
        "type": "checkout.session.completed",
        "created": 1_800_000_000,
        "data": {
            "object": {
                "id": "cs_big",
                "customer": "cus_1",
                "mode": "payment",
                "payment_status": "paid",
                "currency": CURRENCY,
                "metadata": {"credit_minor": "9" * 40},
            }
        },
    }
    event = parse_stripe(payload)
    assert event.amount_minor == int("9" * 40)
    assert apply(BillingState(), event).refused == "amount out of range"
