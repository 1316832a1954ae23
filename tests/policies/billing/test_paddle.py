from __future__ import annotations

from typing import Any

import pytest

from policies.billing import BillingEvent, MalformedEvent, parse_paddle
from tests.policies.billing.samples import (
    JUNE,
    NOW,
    SECRET,
    mutated,
    paddle_event,
    paddle_subscription,
    paddle_transaction,
)


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
        parse_paddle(mutated(_PTXN, path, value))


def test_malformed_message_never_quotes_a_bad_timestamp() -> None:
    payload = paddle_event("transaction.completed", paddle_transaction())
    with pytest.raises(MalformedEvent) as excinfo:
        parse_paddle({**payload, "occurred_at": SECRET})
    assert SECRET not in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
