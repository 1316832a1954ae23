"""Paddle Billing notifications: transactions and subscriptions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from policies.billing import fields
from policies.billing.model import BillingEvent, EventKind

_KINDS: dict[str, EventKind] = {
    "transaction.completed": "payment_succeeded",
    "transaction.paid": "payment_succeeded",
    "transaction.payment_failed": "payment_failed",
    "subscription.created": "subscription_updated",
    "subscription.activated": "subscription_updated",
    "subscription.updated": "subscription_updated",
    "subscription.past_due": "subscription_updated",
    "subscription.canceled": "subscription_deleted",
}


def parse_paddle(payload: Mapping[str, Any]) -> BillingEvent:
    """A Paddle Billing notification (``{"event_id", "event_type", "occurred_at", "data"}``)."""
    payload = fields.obj(payload, "event")
    event_id = fields.text(payload, "event_id", "event_id")
    type_ = fields.text(payload, "event_type", "event_type")
    occurred_at = fields.rfc3339(payload.get("occurred_at"), "occurred_at")
    base = BillingEvent("paddle", event_id, type_, "ignored", None, occurred_at)
    kind = _KINDS.get(type_)
    if kind is None:
        return base
    data = fields.obj(payload.get("data"), "data")
    if kind in ("payment_succeeded", "payment_failed"):
        return _transaction(base, kind, data)
    return _subscription(base, kind, data)


def _transaction(base: BillingEvent, kind: EventKind, txn: Mapping[str, Any]) -> BillingEvent:
    txn_id = fields.text(txn, "id", "data.id")
    origin = fields.opt_text(txn, "origin", "data.origin")
    billing_period = fields.opt_obj(txn.get("billing_period"), "data.billing_period")
    totals = fields.dig(txn, "details", "totals")
    total = totals.get("grand_total") if isinstance(totals, Mapping) else None
    return replace(
        base,
        kind=kind,
        customer_id=fields.opt_text(txn, "customer_id", "data.customer_id"),
        object_id=txn_id,
        invoice_id=txn_id,
        billing_reason="subscription_cycle" if origin == "subscription_recurring" else origin,
        subscription_id=fields.opt_text(txn, "subscription_id", "data.subscription_id"),
        period=fields.period_of(
            billing_period, ("starts_at", "ends_at"), "data.billing_period", fields.rfc3339
        ),
        amount_minor=None
        if total is None
        else fields.amount_or_digits(total, "data.details.totals.grand_total"),
        currency=fields.opt_text(txn, "currency_code", "data.currency_code"),
    )


def _subscription(base: BillingEvent, kind: EventKind, sub: Mapping[str, Any]) -> BillingEvent:
    subscription_id = fields.text(sub, "id", "data.id")
    items = fields.items(sub.get("items"), "data.items")
    price = fields.opt_obj(items[0].get("price"), "data.items[0].price") if items else None
    period_obj = fields.opt_obj(sub.get("current_billing_period"), "data.current_billing_period")
    scheduled = fields.opt_obj(sub.get("scheduled_change"), "data.scheduled_change")
    status = fields.opt_text(sub, "status", "data.status")
    return replace(
        base,
        kind=kind,
        customer_id=fields.opt_text(sub, "customer_id", "data.customer_id"),
        object_id=subscription_id,
        subscription_id=subscription_id,
        subscription_status="past_due" if base.type == "subscription.past_due" else status,
        plan=None if price is None else fields.opt_text(price, "id", "data.items[0].price.id"),
        period=fields.period_of(
            period_obj, ("starts_at", "ends_at"), "data.current_billing_period", fields.rfc3339
        ),
        cancel_at_period_end=scheduled is not None and scheduled.get("action") == "cancel",
    )
