"""Billing events, states and provider payloads shared by the billing policy tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from policies.billing import BillingChange, BillingEvent, BillingState, EventKind, apply_event
from policies.model import Period


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def epoch(dt: datetime) -> int:
    return int(dt.timestamp())


def millis(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000


MAY = Period(utc(2024, 5, 1), utc(2024, 6, 1))
JUNE = Period(utc(2024, 6, 1), utc(2024, 7, 1))
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


def sub_event(at: datetime = NOW, **fields: Any) -> BillingEvent:
    fields.setdefault("subscription_id", "sub_1")
    fields.setdefault("subscription_status", "active")
    fields.setdefault("plan", "pro")
    fields.setdefault("period", JUNE)
    return event("subscription_updated", at, **fields)


def autumn_event(at: datetime = NOW, **fields: Any) -> BillingEvent:
    return BillingEvent(
        "autumn", "msg_1", "billing.updated", "past_due_changed", "org_1", at, **fields
    )


# --- Stripe payloads, shaped like the API's (trimmed to the fields that matter) ---------------


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


SECRET = "SECRET-4242"


def mutated(payload: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


# --- Autumn payloads --------------------------------------------------------------------------


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


# --- Paddle payloads --------------------------------------------------------------------------


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
