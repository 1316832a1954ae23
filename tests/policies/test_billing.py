from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.billing import (
    DEFAULT_GRACE,
    AuditEntry,
    BillingChange,
    BillingEvent,
    BillingState,
    CreditEntry,
    EventKind,
    MalformedEvent,
    SuspensionDecision,
    apply_event,
    parse_autumn,
    parse_paddle,
    parse_stripe,
    suspension_decision,
)
from policies.model import PaymentStatus, Period


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def epoch(dt: datetime) -> int:
    return int(dt.timestamp())


def millis(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000


MAY = Period(utc(2024, 5, 1), utc(2024, 6, 1))
JUNE = Period(utc(2024, 6, 1), utc(2024, 7, 1))
APRIL = Period(utc(2024, 4, 1), utc(2024, 5, 1))
NOW = utc(2024, 6, 1, 0, 30)
PLANS = frozenset({"free", "pro", "team"})
GRANTS = {"pro": 5_000, "team": 20_000}


CURRENCY = "eur"  # the ledger's; the Stripe checkout and charge samples below are in euros


def apply(state: BillingState, event: BillingEvent, now: datetime = NOW) -> BillingChange:
    return apply_event(state, event, plans=PLANS, plan_grants=GRANTS, currency=CURRENCY, now=now)


def event(kind: EventKind, at: datetime = NOW, **fields: Any) -> BillingEvent:
    fields.setdefault("object_id", "obj_1")
    fields.setdefault("currency", CURRENCY)
    return BillingEvent("stripe", "evt_1", f"test.{kind}", kind, "cus_1", at, **fields)


# --- Stripe payloads, shaped like the API's (trimmed to the fields that matter) --------------


def stripe_event(type_: str, obj: dict[str, Any], created: datetime = NOW) -> dict[str, Any]:
    return {
        "id": "evt_1PqRsT2eZvKYlo2C",
        "object": "event",
        "api_version": "2024-06-20",
        "created": epoch(created),
        "livemode": False,
        "type": type_,
        "data": {"object": obj, "previous_attributes": {}},
    }


def invoice_line(period: Period, *, metered: bool = False, new_api: bool = False) -> dict[str, Any]:
    usage = "metered" if metered else "licensed"
    line: dict[str, Any] = {
        "id": "il_1PqRsT",
        "object": "line_item",
        "amount": 0 if metered else 2900,
        "period": {"start": epoch(period.start), "end": epoch(period.end)},
    }
    if new_api:
        line["parent"] = {"type": "subscription_item_details"}
        line["pricing"] = {"price_details": {"price": "price_pro"}}
    else:
        line["type"] = "subscription"
        line["subscription"] = "sub_1"
        line["price"] = {
            "id": "price_pro",
            "lookup_key": "pro",
            "recurring": {"interval": "month", "usage_type": usage},
        }
    return line


def stripe_invoice(
    *,
    lines: list[dict[str, Any]] | None = None,
    billing_reason: str = "subscription_cycle",
    amount: int = 2900,
) -> dict[str, Any]:
    return {
        "id": "in_123",
        "object": "invoice",
        "customer": "cus_1",
        "subscription": "sub_1",
        "billing_reason": billing_reason,
        "currency": "usd",
        "amount_due": amount,
        "amount_paid": amount,
        "status": "open",
        # Stripe's own invoice period is the one just ended; only the lines tell the new one.
        "period_start": epoch(MAY.start),
        "period_end": epoch(MAY.end),
        "lines": {
            "object": "list",
            "data": [invoice_line(JUNE)] if lines is None else lines,
            "has_more": False,
        },
    }


def stripe_subscription(
    *,
    status: str = "active",
    period: Period = JUNE,
    price: dict[str, Any] | None = None,
    period_on_item: bool = False,
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    bounds = {
        "current_period_start": epoch(period.start),
        "current_period_end": epoch(period.end),
    }
    item: dict[str, Any] = {
        "id": "si_1",
        "object": "subscription_item",
        "price": price if price is not None else {"id": "price_pro", "lookup_key": "pro"},
        "quantity": 1,
    }
    sub: dict[str, Any] = {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "latest_invoice": "in_123",
        "items": {"object": "list", "data": [item]},
    }
    (item if period_on_item else sub).update(bounds)
    return sub


def stripe_checkout(**overrides: Any) -> dict[str, Any]:
    session: dict[str, Any] = {
        "id": "cs_test_a1",
        "object": "checkout.session",
        "mode": "payment",
        "customer": "cus_1",
        "amount_total": 5000,
        "currency": "eur",
        "payment_status": "paid",
        "status": "complete",
        "metadata": {"org": "org_1"},
    }
    session.update(overrides)
    return {k: v for k, v in session.items() if v is not ...}


def stripe_charge(refunded_so_far: int) -> dict[str, Any]:
    return {
        "id": "ch_3PqRsT",
        "object": "charge",
        "amount": 5000,
        "amount_refunded": refunded_so_far,
        "currency": "eur",
        "customer": "cus_1",
        "refunded": refunded_so_far == 5000,
    }


# --- Stripe parsing ----------------------------------------------------------------------------


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


SECRET = "SECRET-4242"


def _set(payload: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


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
        parse_stripe(_set(payload, path, value))
    message = str(excinfo.value)
    assert SECRET not in message
    if value is not ... and not isinstance(value, bool) and len(str(value)) > 2:
        assert str(value) not in message


def test_malformed_message_never_quotes_a_bad_timestamp() -> None:
    payload = paddle_event("transaction.completed", paddle_transaction())
    with pytest.raises(MalformedEvent) as excinfo:
        parse_paddle({**payload, "occurred_at": SECRET})
    assert SECRET not in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_stripe_payload_not_an_object() -> None:
    with pytest.raises(MalformedEvent):
        parse_stripe([SECRET])  # type: ignore[arg-type]


# --- Autumn ------------------------------------------------------------------------------------


STARTED = utc(2024, 1, 15)


def autumn_change(
    action: str,
    plan_id: str = "pro",
    *,
    past_due: bool = False,
    status: str = "active",
    period: Period = JUNE,
    started_at: datetime = STARTED,
) -> dict[str, Any]:
    return {
        "action": action,
        "subscription": {
            "plan_id": plan_id,
            "status": status,
            "past_due": past_due,
            "started_at": millis(started_at),
            "current_period_start": millis(period.start),
            "current_period_end": millis(period.end),
        },
    }


def autumn_payload(*changes: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "type": "billing.updated",
        "data": {"customer_id": "org_1", "plan_changes": list(changes)},
        **top,
    }


SVIX_ID = "msg_2abcDEF"


def test_autumn_past_due_with_plan_and_period() -> None:
    payload = autumn_payload(autumn_change("updated", past_due=True), occurred_at=millis(NOW))
    parsed = parse_autumn(payload, SVIX_ID)
    assert parsed == BillingEvent(
        provider="autumn",
        event_id=SVIX_ID,
        type="billing.updated",
        kind="past_due_changed",
        customer_id="org_1",
        occurred_at=NOW,
        subscription_status="active",
        plan="pro",
        period=JUNE,
        past_due=True,
    )


def test_autumn_timestamp_field_is_used_when_occurred_at_is_absent() -> None:
    payload = autumn_payload(autumn_change("activated"), timestamp=millis(NOW) + 250)
    assert parse_autumn(payload, SVIX_ID).occurred_at == NOW + timedelta(milliseconds=250)


def test_autumn_without_a_timestamp_uses_the_latest_start_not_the_period_end() -> None:
    payload = autumn_payload(
        autumn_change("expired", "pro", period=MAY), autumn_change("activated", "team")
    )
    assert parse_autumn(payload, SVIX_ID).occurred_at == JUNE.start


def test_autumn_without_any_timestamp_is_the_epoch() -> None:
    assert parse_autumn(autumn_payload(), SVIX_ID).occurred_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_autumn_upgrade_picks_the_activated_plan_and_ignores_the_expired_one() -> None:
    payload = autumn_payload(
        autumn_change("expired", "pro", past_due=True, status="expired"),
        autumn_change("activated", "team"),
    )
    parsed = parse_autumn(payload, SVIX_ID)
    assert (parsed.plan, parsed.past_due, parsed.subscription_status) == ("team", False, "active")


def test_autumn_scheduled_change_counts_for_past_due_but_is_not_the_plan() -> None:
    payload = autumn_payload(autumn_change("scheduled", "team", past_due=True))
    parsed = parse_autumn(payload, SVIX_ID)
    assert (parsed.past_due, parsed.plan, parsed.period) == (True, None, None)


def test_autumn_only_expired_reports_the_expired_plan() -> None:
    parsed = parse_autumn(autumn_payload(autumn_change("expired", "pro")), SVIX_ID)
    assert (parsed.plan, parsed.subscription_status, parsed.past_due) == ("pro", "expired", False)


def test_autumn_other_types_are_ignored() -> None:
    parsed = parse_autumn({"type": "customer.products.updated", "data": {}}, SVIX_ID)
    assert (parsed.kind, parsed.event_id) == ("ignored", SVIX_ID)


_AUTUMN = autumn_payload(autumn_change("activated"))
_ASUB = ("data", "plan_changes", 0, "subscription")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("type",), ..., id="no-type"),
        pytest.param(("data",), ..., id="no-data"),
        pytest.param(("data", "customer_id"), ..., id="no-customer"),
        pytest.param(("data", "plan_changes"), SECRET, id="changes-not-list"),
        pytest.param(("data", "plan_changes", 0, "action"), ..., id="no-action"),
        pytest.param((*_ASUB, "plan_id"), 5, id="int-plan"),
        pytest.param((*_ASUB, "past_due"), "true", id="string-past-due"),
        pytest.param((*_ASUB, "started_at"), 1.5e12, id="float-ms"),
        pytest.param((*_ASUB, "current_period_end"), 0, id="period-backwards"),
    ],
)
def test_autumn_malformed(path: tuple[str | int, ...], value: Any) -> None:
    with pytest.raises(MalformedEvent) as excinfo:
        parse_autumn(_set(_AUTUMN, path, value), SVIX_ID)
    assert SECRET not in str(excinfo.value)


def test_autumn_needs_the_svix_id() -> None:
    with pytest.raises(MalformedEvent):
        parse_autumn(_AUTUMN, "")


# --- Paddle ------------------------------------------------------------------------------------


def paddle_event(
    type_: str, data: dict[str, Any], at: str = "2024-06-01T00:30:00.000000Z"
) -> dict[str, Any]:
    return {
        "event_id": "evt_01hv8x2a",
        "event_type": type_,
        "occurred_at": at,
        "notification_id": "ntf_01hv8x2a",
        "data": data,
    }


def paddle_transaction(origin: str = "subscription_recurring") -> dict[str, Any]:
    return {
        "id": "txn_01hv8wptq8",
        "status": "completed",
        "customer_id": "ctm_01hv6y1j",
        "subscription_id": "sub_01hv8x29",
        "origin": origin,
        "currency_code": "USD",
        "billing_period": {
            "starts_at": "2024-06-01T00:00:00Z",
            "ends_at": "2024-07-01T00:00:00.000000Z",
        },
        "details": {"totals": {"subtotal": "2900", "tax": "0", "grand_total": "2900"}},
    }


def paddle_subscription(status: str = "active") -> dict[str, Any]:
    return {
        "id": "sub_01hv8x29",
        "status": status,
        "customer_id": "ctm_01hv6y1j",
        "items": [{"price": {"id": "pri_pro", "product_id": "pro_01"}, "quantity": 1}],
        "current_billing_period": {
            "starts_at": "2024-06-01T00:00:00+00:00",
            "ends_at": "2024-07-01T02:00:00+02:00",
        },
        "scheduled_change": None,
    }


@pytest.mark.parametrize("type_", ["transaction.completed", "transaction.paid"])
def test_paddle_recurring_transaction_is_a_cycle_payment(type_: str) -> None:
    parsed = parse_paddle(paddle_event(type_, paddle_transaction()))
    assert parsed == BillingEvent(
        provider="paddle",
        event_id="evt_01hv8x2a",
        type=type_,
        kind="payment_succeeded",
        customer_id="ctm_01hv6y1j",
        occurred_at=NOW,
        object_id="txn_01hv8wptq8",
        invoice_id="txn_01hv8wptq8",
        billing_reason="subscription_cycle",
        subscription_id="sub_01hv8x29",
        period=JUNE,
        amount_minor=2900,
        currency="USD",
    )


def test_paddle_checkout_transaction_is_not_a_cycle() -> None:
    parsed = parse_paddle(paddle_event("transaction.completed", paddle_transaction("web")))
    assert parsed.billing_reason == "web"


def test_paddle_payment_failed() -> None:
    txn = paddle_transaction()
    txn["billing_period"] = None
    parsed = parse_paddle(paddle_event("transaction.payment_failed", txn))
    assert (parsed.kind, parsed.invoice_id, parsed.period) == (
        "payment_failed",
        "txn_01hv8wptq8",
        None,
    )


@pytest.mark.parametrize(
    ("type_", "kind", "status"),
    [
        ("subscription.updated", "subscription_updated", "active"),
        ("subscription.activated", "subscription_updated", "active"),
        ("subscription.past_due", "subscription_updated", "past_due"),
        ("subscription.canceled", "subscription_deleted", "canceled"),
    ],
)
def test_paddle_subscription_events(type_: str, kind: str, status: str) -> None:
    data = paddle_subscription("canceled" if type_ == "subscription.canceled" else "active")
    parsed = parse_paddle(paddle_event(type_, data))
    assert (parsed.kind, parsed.subscription_status) == (kind, status)
    assert (parsed.plan, parsed.period, parsed.subscription_id) == ("pri_pro", JUNE, "sub_01hv8x29")
    assert parsed.cancel_at_period_end is False


def test_paddle_scheduled_cancel_is_cancel_at_period_end() -> None:
    data = paddle_subscription()
    data["scheduled_change"] = {"action": "cancel", "effective_at": "2024-07-01T00:00:00Z"}
    assert parse_paddle(paddle_event("subscription.updated", data)).cancel_at_period_end is True


def test_paddle_other_types_are_ignored() -> None:
    assert parse_paddle(paddle_event("customer.updated", {"id": "ctm_1"})).kind == "ignored"


_PTXN = paddle_event("transaction.completed", paddle_transaction())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("event_id",), ..., id="no-event-id"),
        pytest.param(("occurred_at",), "2024-06-01T00:30:00", id="naive"),
        pytest.param(("occurred_at",), "yesterday", id="garbage"),
        pytest.param(("occurred_at",), 1717201800, id="epoch-number"),
        pytest.param(("data", "id"), ..., id="no-transaction-id"),
        pytest.param(("data", "billing_period", "ends_at"), "2024-05-01T00:00:00Z", id="backwards"),
        pytest.param(("data", "details", "totals", "grand_total"), "29.00", id="decimal-total"),
        pytest.param(("data", "subscription_id"), 7, id="int-subscription"),
    ],
)
def test_paddle_malformed(path: tuple[str | int, ...], value: Any) -> None:
    with pytest.raises(MalformedEvent):
        parse_paddle(_set(_PTXN, path, value))


# --- apply_event: payments ---------------------------------------------------------------------


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


# --- apply_event: ordering ---------------------------------------------------------------------


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


# --- apply_event: subscriptions ----------------------------------------------------------------


def sub_event(at: datetime = NOW, **fields: Any) -> BillingEvent:
    fields.setdefault("subscription_id", "sub_1")
    fields.setdefault("subscription_status", "active")
    fields.setdefault("plan", "pro")
    fields.setdefault("period", JUNE)
    return event("subscription_updated", at, **fields)


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


# --- apply_event: credits and refunds ----------------------------------------------------------


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


# --- apply_event: Autumn past_due --------------------------------------------------------------


def autumn_event(at: datetime = NOW, **fields: Any) -> BillingEvent:
    return BillingEvent(
        "autumn", "msg_1", "billing.updated", "past_due_changed", "org_1", at, **fields
    )


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


# --- suspension --------------------------------------------------------------------------------

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


# --- regressions: plan grants, paid invoices, currencies, amounts ------------------------------


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


# --- properties --------------------------------------------------------------------------------

_OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(_OFFSETS),
)
periods = st.tuples(moments, moments).map(lambda p: Period(min(p), max(p)))
names = st.sampled_from(["free", "pro", "team", "legacy", "sub_1", "sub_2", "ch_1", "in_1", ""])
maybe_names = st.none() | names
amounts = (
    st.none()
    | st.integers(min_value=-(10**15), max_value=10**15)
    | st.integers(min_value=2**62, max_value=2**64)
)
statuses = st.none() | st.sampled_from(
    ["active", "trialing", "past_due", "unpaid", "canceled", "incomplete_expired", "expired"]
)

events = st.builds(
    BillingEvent,
    provider=st.sampled_from(["stripe", "autumn", "paddle"]),
    event_id=st.text(max_size=6),
    type=st.text(max_size=12),
    kind=st.sampled_from(get_args(EventKind)),
    customer_id=maybe_names,
    occurred_at=moments,
    object_id=maybe_names,
    invoice_id=maybe_names,
    metered=st.booleans(),
    billing_reason=st.none() | st.sampled_from(["subscription_cycle", "manual", "web"]),
    subscription_id=maybe_names,
    subscription_status=statuses,
    plan=maybe_names,
    period=st.none() | periods,
    cancel_at_period_end=st.none() | st.booleans(),
    amount_minor=amounts,
    currency=st.none() | st.sampled_from(["usd", "USD", "eur"]),
    past_due=st.none() | st.booleans(),
)
states = st.builds(
    BillingState,
    payment_status=st.sampled_from(get_args(PaymentStatus)),
    plan=names,
    period=st.none() | periods,
    subscription_id=maybe_names,
    never_paid=st.booleans(),
    cancel_at_period_end=st.booleans(),
    overdue_since=st.none() | moments,
    overdue_invoice_id=maybe_names,
    suspended_at=st.none() | moments,
    suspension_reason=st.none() | st.just("overdue"),
    status_at=st.none() | moments,
    subscription_at=st.none() | moments,
    refunded=st.dictionaries(names, st.integers(min_value=0, max_value=10**12), max_size=3),
    paid_invoice_id=maybe_names,
    paid_at=st.none() | moments,
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@given(
    state=states,
    event=events,
    plans=st.frozensets(names, max_size=4),
    grants=st.dictionaries(names, st.integers(min_value=-100, max_value=10**9), max_size=3),
    now=moments,
    redelivered=st.booleans(),
)
def test_apply_event_is_total_and_money_stays_integer(
    state: BillingState,
    event: BillingEvent,
    plans: frozenset[str],
    grants: dict[str, int],
    now: datetime,
    redelivered: bool,
) -> None:
    change = apply_event(
        state, event, plans=plans, plan_grants=grants, now=now, redelivered=redelivered
    )
    entries = (*change.credits, *change.period_grants)
    assert all(_is_int(e.amount_minor) and e.amount_minor != 0 for e in entries)
    assert all(-(2**63) <= e.amount_minor < 2**63 for e in entries)
    assert all(_is_int(v) for v in change.state.refunded.values())
    assert all(e.amount_minor > 0 for e in change.period_grants)
    refusals = {"plan_refused", "credit_refused"}
    diff = [a for a in change.audit if a.field not in refusals]
    assert (change.state != state) == bool(diff)
    refused_plan = any(a.field == "plan_refused" for a in change.audit)
    assert (change.plan_refused is not None or change.refused == "unknown plan") == refused_plan
    if redelivered:  # the plan alone, and its grant within the period
        assert replace(change.state, plan=state.plan, subscription_at=state.subscription_at) == (
            state
        )
        assert (change.credits, change.new_period, change.plan_refused) == ((), None, None)
    if change.refused is not None:  # stores write only a refusal's own audit entry
        assert replace(change, audit=()) == BillingChange(state, refused=change.refused)
        assert {a.field for a in change.audit} <= refusals
    if entries and event.kind in ("credit_purchased", "charge_refunded"):
        assert (event.currency or "usd").lower() == "usd"
    if event.kind == "ignored" and not redelivered:
        assert change == BillingChange(state)
    assert len({e.idempotency_key for e in entries}) == len(entries)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["2024-06-01T00:00:00Z", "0", "99", "paid", "metered", "subscription"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)

Parser = Callable[[Mapping[str, Any]], BillingEvent]
SAMPLES: list[tuple[Parser, dict[str, Any]]] = [
    (parse_stripe, _INV),
    (
        parse_stripe,
        stripe_event("invoice.paid", stripe_invoice(lines=[invoice_line(JUNE, new_api=True)])),
    ),
    (parse_stripe, _SUB),
    (
        parse_stripe,
        stripe_event("customer.subscription.deleted", stripe_subscription(period_on_item=True)),
    ),
    (parse_stripe, _CHECKOUT),
    (parse_stripe, _CHARGE),
    (lambda p: parse_autumn(p, SVIX_ID), _AUTUMN),
    (parse_paddle, _PTXN),
    (parse_paddle, paddle_event("subscription.updated", paddle_subscription())),
]


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if prefix:
        yield prefix
    children = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in children:
        yield from _paths(child, (*prefix, key))


@given(data=st.data())
def test_parsers_raise_only_malformed_event_on_mutated_payloads(data: st.DataObject) -> None:
    parser, payload = data.draw(st.sampled_from(SAMPLES))
    path = data.draw(st.sampled_from(list(_paths(payload))))
    value = data.draw(st.just(...) | json_values)
    try:
        parsed = parser(_set(payload, path, value))
    except MalformedEvent:
        return
    assert parsed.amount_minor is None or _is_int(parsed.amount_minor)
    assert parsed.occurred_at.utcoffset() == timedelta(0)
    if parsed.period is not None:
        assert parsed.period.start <= parsed.period.end


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
