"""Stripe events: invoices, subscriptions, checkout top-ups and refunds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from policies.billing import fields
from policies.billing.model import BillingEvent, EventKind

_KINDS: dict[str, EventKind] = {
    "invoice.payment_failed": "payment_failed",
    "invoice.paid": "payment_succeeded",
    "invoice.payment_succeeded": "payment_succeeded",
    "customer.subscription.created": "subscription_updated",
    "customer.subscription.updated": "subscription_updated",
    "customer.subscription.deleted": "subscription_deleted",
    "checkout.session.completed": "credit_purchased",
    "charge.refunded": "charge_refunded",
}
_OBJ = "data.object"


def _ref(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    """A Stripe reference: an id string, an expanded object with an id, or null."""
    value = obj.get(key)
    if isinstance(value, Mapping):
        return fields.text(value, "id", f"{path}.id")
    return fields.opt_text(obj, key, path)


def parse_stripe(payload: Mapping[str, Any]) -> BillingEvent:
    """A Stripe event (``{"id", "type", "created", "data": {"object": ...}}``) normalised."""
    payload = fields.obj(payload, "event")
    event_id = fields.text(payload, "id", "id")
    type_ = fields.text(payload, "type", "type")
    base = BillingEvent(
        "stripe", event_id, type_, "ignored", None, fields.epoch(payload.get("created"), "created")
    )
    kind = _KINDS.get(type_)
    if kind is None:
        return base
    obj = fields.obj(fields.obj(payload.get("data"), "data").get("object"), _OBJ)
    if kind in ("payment_failed", "payment_succeeded"):
        return _invoice(base, kind, obj)
    if kind in ("subscription_updated", "subscription_deleted"):
        return _subscription(base, kind, obj)
    if kind == "credit_purchased":
        return _checkout(base, obj)
    return replace(
        base,
        kind="charge_refunded",
        customer_id=_ref(obj, "customer", f"{_OBJ}.customer"),
        object_id=fields.text(obj, "id", f"{_OBJ}.id"),
        amount_minor=fields.amount(obj.get("amount_refunded"), f"{_OBJ}.amount_refunded"),
        currency=fields.opt_text(obj, "currency", f"{_OBJ}.currency"),
    )


def _metered(line: Mapping[str, Any]) -> bool:
    return "metered" in (
        fields.dig(line, "price", "recurring", "usage_type"),
        fields.dig(line, "plan", "usage_type"),
    )


def _subscription_line(line: Mapping[str, Any]) -> bool:
    return (
        line.get("type") == "subscription"
        or isinstance(line.get("subscription"), str)
        or fields.dig(line, "parent", "type") == "subscription_item_details"
    )


def _invoice(base: BillingEvent, kind: EventKind, inv: Mapping[str, Any]) -> BillingEvent:
    invoice_id = fields.text(inv, "id", f"{_OBJ}.id")
    lines_obj = fields.opt_obj(inv.get("lines"), f"{_OBJ}.lines") or {}
    lines = fields.items(lines_obj.get("data"), f"{_OBJ}.lines.data")
    period = None
    for i, line in enumerate(lines):
        # A metered line's period is the one just billed in arrears, not the one starting.
        if _subscription_line(line) and not _metered(line):
            path = f"{_OBJ}.lines.data[{i}].period"
            period = fields.period_of(
                fields.opt_obj(line.get("period"), path), ("start", "end"), path, fields.epoch
            )
            break
    subscription = _ref(inv, "subscription", f"{_OBJ}.subscription")
    if subscription is None:  # API versions from 2025-03 moved it under ``parent``
        details = fields.dig(inv, "parent", "subscription_details")
        if isinstance(details, Mapping):
            subscription = _ref(details, "subscription", "parent.subscription_details")
    amount_key = "amount_paid" if kind == "payment_succeeded" else "amount_due"
    return replace(
        base,
        kind=kind,
        customer_id=_ref(inv, "customer", f"{_OBJ}.customer"),
        object_id=invoice_id,
        invoice_id=invoice_id,
        # A renewal with a licensed line is a plan invoice even when usage is billed with it.
        metered=bool(lines) and all(_metered(line) for line in lines),
        billing_reason=fields.opt_text(inv, "billing_reason", f"{_OBJ}.billing_reason"),
        subscription_id=subscription,
        period=period,
        amount_minor=fields.opt_amount(inv, amount_key, f"{_OBJ}.{amount_key}"),
        currency=fields.opt_text(inv, "currency", f"{_OBJ}.currency"),
    )


def _plan(item: Mapping[str, Any] | None) -> str | None:
    if item is None:
        return None
    price = fields.opt_obj(item.get("price"), f"{_OBJ}.items.data[0].price") or {}
    plan = fields.opt_obj(item.get("plan"), f"{_OBJ}.items.data[0].plan") or {}
    return (
        fields.opt_text(price, "lookup_key", f"{_OBJ}.items.data[0].price.lookup_key")
        or fields.opt_text(price, "id", f"{_OBJ}.items.data[0].price.id")
        or fields.opt_text(plan, "id", f"{_OBJ}.items.data[0].plan.id")
    )


def _subscription(base: BillingEvent, kind: EventKind, sub: Mapping[str, Any]) -> BillingEvent:
    subscription_id = fields.text(sub, "id", f"{_OBJ}.id")
    items_obj = fields.opt_obj(sub.get("items"), f"{_OBJ}.items") or {}
    items = fields.items(items_obj.get("data"), f"{_OBJ}.items.data")
    first = items[0] if items else None
    keys = ("current_period_start", "current_period_end")
    # API versions from 2025-03 keep the period on the item rather than the subscription.
    period = fields.period_of(sub, keys, _OBJ, fields.epoch) or fields.period_of(
        first, keys, f"{_OBJ}.items.data[0]", fields.epoch
    )
    return replace(
        base,
        kind=kind,
        customer_id=_ref(sub, "customer", f"{_OBJ}.customer"),
        object_id=subscription_id,
        invoice_id=_ref(sub, "latest_invoice", f"{_OBJ}.latest_invoice"),
        subscription_id=subscription_id,
        subscription_status=fields.opt_text(sub, "status", f"{_OBJ}.status"),
        plan=_plan(first),
        period=period,
        cancel_at_period_end=fields.opt_flag(
            sub, "cancel_at_period_end", f"{_OBJ}.cancel_at_period_end"
        ),
    )


def _checkout(base: BillingEvent, session: Mapping[str, Any]) -> BillingEvent:
    session_id = fields.text(session, "id", f"{_OBJ}.id")
    customer = _ref(session, "customer", f"{_OBJ}.customer")
    paid = fields.opt_text(session, "payment_status", f"{_OBJ}.payment_status") in (None, "paid")
    # A subscription's checkout is paid through its invoice (invoice.paid), not as a top-up.
    one_off = fields.opt_text(session, "mode", f"{_OBJ}.mode") in (None, "payment")
    if not (paid and one_off):
        return replace(base, customer_id=customer, object_id=session_id)
    if session.get("amount_total") is not None:
        amount = fields.amount(session["amount_total"], f"{_OBJ}.amount_total")
    else:
        metadata = fields.opt_obj(session.get("metadata"), f"{_OBJ}.metadata") or {}
        key = "credit_minor" if metadata.get("credit_minor") is not None else "amount_minor"
        amount = fields.amount_or_digits(metadata.get(key), f"{_OBJ}.metadata.{key}")
    return replace(
        base,
        kind="credit_purchased",
        customer_id=customer,
        object_id=session_id,
        amount_minor=amount,
        currency=fields.opt_text(session, "currency", f"{_OBJ}.currency"),
    )
