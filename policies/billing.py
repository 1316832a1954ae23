"""Billing decisions: provider events normalised, their effects on an org's billing state,
and the suspension policy. Pure: no I/O, no clock reads (``now`` is an argument), money in
integer minor units.

Flow: a verified webhook body is parsed into a ``BillingEvent`` (``parse_stripe``,
``parse_autumn``, ``parse_paddle``); the store claims the event id, loads the org's
``BillingState`` under a lock, calls ``apply_event`` and persists the ``BillingChange`` in the
same transaction. The reconciler calls ``suspension_decision`` the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from policies.model import PaymentStatus, Period

EventKind = Literal[
    "payment_failed",  # an invoice could not be charged
    "payment_succeeded",  # an invoice was paid
    "subscription_updated",  # plan, status, period or cancellation changed
    "subscription_deleted",  # the subscription ended
    "credit_purchased",  # a one-off prepaid top-up was paid
    "charge_refunded",  # money went back to the customer
    "past_due_changed",  # Autumn: a subscription's past_due flag as it stands now
    "ignored",  # anything else: recorded, no effect
]

DEFAULT_GRACE = timedelta(days=3)
# The stores' integer range (signed 64-bit): ledger amounts and balances stay inside it.
MAX_MINOR = 2**63 - 1
MIN_MINOR = -(2**63)

# Refusal reasons, as recorded with the event.
UNKNOWN_PLAN = "unknown plan"
OTHER_CURRENCY = "other currency"
OUT_OF_RANGE = "amount out of range"
ALREADY_PAID = "invoice already paid"


class MalformedEvent(ValueError):
    """A verified body that is not a well-formed event of its provider (400 bad_request)."""


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """One provider event, normalised. Timestamps are aware UTC datetimes."""

    provider: str  # "stripe" | "autumn" | "paddle"
    event_id: str
    type: str  # the provider's own type string
    kind: EventKind
    customer_id: str | None
    occurred_at: datetime  # when the provider created the event (orders deliveries)
    object_id: str | None = None  # invoice, subscription, session, charge or transaction id
    invoice_id: str | None = None
    metered: bool = False  # every line is metered usage (payment failure blocks at once)
    billing_reason: str | None = None  # e.g. "subscription_cycle"
    subscription_id: str | None = None
    subscription_status: str | None = None  # the provider's status string
    plan: str | None = None
    period: Period | None = None
    cancel_at_period_end: bool | None = None
    amount_minor: int | None = None  # top-up, or refunded so far (Stripe's amount_refunded)
    currency: str | None = None
    past_due: bool | None = None


@dataclass(frozen=True, slots=True)
class BillingState:
    """What we know of an org's billing; ``*_at`` fields order out-of-order deliveries."""

    payment_status: PaymentStatus = "ok"
    plan: str = "free"
    period: Period | None = None
    subscription_id: str | None = None
    never_paid: bool = True
    cancel_at_period_end: bool = False
    overdue_since: datetime | None = None
    overdue_invoice_id: str | None = None
    suspended_at: datetime | None = None  # a billing suspension (an admin one is separate)
    suspension_reason: str | None = None
    status_at: datetime | None = None  # the newest event that set payment_status
    subscription_at: datetime | None = None  # the newest event that set plan/period/cancel
    refunded: Mapping[str, int] = field(default_factory=dict)  # charge id -> refunded so far
    paid_invoice_id: str | None = None  # the newest invoice paid: a late failure of it is void
    paid_at: datetime | None = None  # when it was paid: a failure stamped then loses the tie


@dataclass(frozen=True, slots=True)
class CreditEntry:
    """One line of the prepaid ledger; ``idempotency_key`` is unique across the ledger."""

    amount_minor: int
    source: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    field: str
    old: str | None
    new: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class BillingChange:
    """The new state and what else to write, in the same transaction as the event claim.

    ``new_period``: claim (org, period) once; only the claimant sets the period (resetting
    usage, which is counted per period) and writes ``period_grants``. Without ``new_period``,
    ``period_grants`` are the grant of the state's own period, written if not written yet.
    A grant's key names its period; the store adds the org. ``plan_refused``: the plan the
    event named, not applied (not a known plan) while the rest was; a redelivery of the
    event may apply it (``apply_event(..., redelivered=True)``).
    """

    state: BillingState
    credits: tuple[CreditEntry, ...] = ()
    new_period: Period | None = None
    period_grants: tuple[CreditEntry, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    refused: str | None = None  # the event was understood but not applied, and why
    plan_refused: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.audit or self.credits or self.new_period)


SuspensionAction = Literal["suspend", "clear", "none"]


@dataclass(frozen=True, slots=True)
class SuspensionDecision:
    action: SuspensionAction
    reason: str = ""


# --- parsing helpers: messages name our own field paths, never payload values -------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Any length: an amount past the stores' range is refused and recorded, not malformed.
_DIGITS = re.compile(r"[0-9]{1,100}")


def _obj(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"{path} is missing or not an object")
    return value


def _opt_obj(value: object, path: str) -> Mapping[str, Any] | None:
    return None if value is None else _obj(value, path)


def _items(value: object, path: str) -> list[Mapping[str, Any]]:
    """A JSON array of objects; absent or null is empty."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise MalformedEvent(f"{path} is not an array")
    return [_obj(item, f"{path}[{i}]") for i, item in enumerate(value)]


def _dig(obj: Mapping[str, Any], *keys: str) -> object:
    """A nested value, or None where any step is missing or not an object."""
    value: object = obj
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _text(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{path} is missing or not a string")
    return value


def _opt_text(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{path} is not a string")
    return value or None


def _opt_flag(obj: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise MalformedEvent(f"{path} is not a boolean")
    return value


def _ref(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    """A Stripe reference: an id string, an expanded object with an id, or null."""
    value = obj.get(key)
    if isinstance(value, Mapping):
        return _text(value, "id", f"{path}.id")
    return _opt_text(obj, key, path)


def _amount(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(f"{path} is not a non-negative integer")
    return value


def _opt_amount(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _amount(value, path)


def _amount_or_digits(value: object, path: str) -> int:
    """Stripe metadata and Paddle totals carry amounts as strings of digits."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return _amount(value, path)


def _epoch(value: object, path: str, *, millis: bool = False) -> datetime:
    count = _amount(value, path)
    try:
        return _EPOCH + (timedelta(milliseconds=count) if millis else timedelta(seconds=count))
    except OverflowError:
        raise MalformedEvent(f"{path} is out of range") from None


def _rfc3339(value: object, path: str) -> datetime:
    if not isinstance(value, str):
        raise MalformedEvent(f"{path} is missing or not a string")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.utcoffset() is None:
            raise ValueError
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        # ``from None``: the ValueError's own message would quote the value.
        raise MalformedEvent(f"{path} is not an RFC 3339 timestamp") from None


def _period(start: datetime, end: datetime, path: str) -> Period:
    if end < start:
        raise MalformedEvent(f"{path} ends before it starts")
    return Period(start, end)


def _period_of(
    obj: Mapping[str, Any] | None,
    keys: tuple[str, str],
    path: str,
    read: Callable[[object, str], datetime],
) -> Period | None:
    """The period named by two keys of ``obj``: both absent is None, one absent is malformed."""
    if obj is None or (obj.get(keys[0]) is None and obj.get(keys[1]) is None):
        return None
    start = read(obj.get(keys[0]), f"{path}.{keys[0]}")
    return _period(start, read(obj.get(keys[1]), f"{path}.{keys[1]}"), path)


# --- Stripe ------------------------------------------------------------------------------------

_STRIPE_KINDS: dict[str, EventKind] = {
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


def parse_stripe(payload: Mapping[str, Any]) -> BillingEvent:
    """A Stripe event (``{"id", "type", "created", "data": {"object": ...}}``) normalised."""
    payload = _obj(payload, "event")
    event_id = _text(payload, "id", "id")
    type_ = _text(payload, "type", "type")
    base = BillingEvent(
        "stripe", event_id, type_, "ignored", None, _epoch(payload.get("created"), "created")
    )
    kind = _STRIPE_KINDS.get(type_)
    if kind is None:
        return base
    obj = _obj(_obj(payload.get("data"), "data").get("object"), _OBJ)
    if kind in ("payment_failed", "payment_succeeded"):
        return _stripe_invoice(base, kind, obj)
    if kind in ("subscription_updated", "subscription_deleted"):
        return _stripe_subscription(base, kind, obj)
    if kind == "credit_purchased":
        return _stripe_checkout(base, obj)
    return replace(
        base,
        kind="charge_refunded",
        customer_id=_ref(obj, "customer", f"{_OBJ}.customer"),
        object_id=_text(obj, "id", f"{_OBJ}.id"),
        amount_minor=_amount(obj.get("amount_refunded"), f"{_OBJ}.amount_refunded"),
        currency=_opt_text(obj, "currency", f"{_OBJ}.currency"),
    )


def _stripe_metered(line: Mapping[str, Any]) -> bool:
    return "metered" in (
        _dig(line, "price", "recurring", "usage_type"),
        _dig(line, "plan", "usage_type"),
    )


def _stripe_subscription_line(line: Mapping[str, Any]) -> bool:
    return (
        line.get("type") == "subscription"
        or isinstance(line.get("subscription"), str)
        or _dig(line, "parent", "type") == "subscription_item_details"
    )


def _stripe_invoice(base: BillingEvent, kind: EventKind, inv: Mapping[str, Any]) -> BillingEvent:
    invoice_id = _text(inv, "id", f"{_OBJ}.id")
    lines_obj = _opt_obj(inv.get("lines"), f"{_OBJ}.lines") or {}
    lines = _items(lines_obj.get("data"), f"{_OBJ}.lines.data")
    period = None
    for i, line in enumerate(lines):
        # A metered line's period is the one just billed in arrears, not the one starting.
        if _stripe_subscription_line(line) and not _stripe_metered(line):
            path = f"{_OBJ}.lines.data[{i}].period"
            period = _period_of(_opt_obj(line.get("period"), path), ("start", "end"), path, _epoch)
            break
    subscription = _ref(inv, "subscription", f"{_OBJ}.subscription")
    if subscription is None:  # API versions from 2025-03 moved it under ``parent``
        details = _dig(inv, "parent", "subscription_details")
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
        metered=bool(lines) and all(_stripe_metered(line) for line in lines),
        billing_reason=_opt_text(inv, "billing_reason", f"{_OBJ}.billing_reason"),
        subscription_id=subscription,
        period=period,
        amount_minor=_opt_amount(inv, amount_key, f"{_OBJ}.{amount_key}"),
        currency=_opt_text(inv, "currency", f"{_OBJ}.currency"),
    )


def _stripe_plan(item: Mapping[str, Any] | None) -> str | None:
    if item is None:
        return None
    price = _opt_obj(item.get("price"), f"{_OBJ}.items.data[0].price") or {}
    plan = _opt_obj(item.get("plan"), f"{_OBJ}.items.data[0].plan") or {}
    return (
        _opt_text(price, "lookup_key", f"{_OBJ}.items.data[0].price.lookup_key")
        or _opt_text(price, "id", f"{_OBJ}.items.data[0].price.id")
        or _opt_text(plan, "id", f"{_OBJ}.items.data[0].plan.id")
    )


def _stripe_subscription(
    base: BillingEvent, kind: EventKind, sub: Mapping[str, Any]
) -> BillingEvent:
    subscription_id = _text(sub, "id", f"{_OBJ}.id")
    items_obj = _opt_obj(sub.get("items"), f"{_OBJ}.items") or {}
    items = _items(items_obj.get("data"), f"{_OBJ}.items.data")
    first = items[0] if items else None
    keys = ("current_period_start", "current_period_end")
    # API versions from 2025-03 keep the period on the item rather than the subscription.
    period = _period_of(sub, keys, _OBJ, _epoch) or _period_of(
        first, keys, f"{_OBJ}.items.data[0]", _epoch
    )
    return replace(
        base,
        kind=kind,
        customer_id=_ref(sub, "customer", f"{_OBJ}.customer"),
        object_id=subscription_id,
        invoice_id=_ref(sub, "latest_invoice", f"{_OBJ}.latest_invoice"),
        subscription_id=subscription_id,
        subscription_status=_opt_text(sub, "status", f"{_OBJ}.status"),
        plan=_stripe_plan(first),
        period=period,
        cancel_at_period_end=_opt_flag(sub, "cancel_at_period_end", f"{_OBJ}.cancel_at_period_end"),
    )


def _stripe_checkout(base: BillingEvent, session: Mapping[str, Any]) -> BillingEvent:
    session_id = _text(session, "id", f"{_OBJ}.id")
    customer = _ref(session, "customer", f"{_OBJ}.customer")
    paid = _opt_text(session, "payment_status", f"{_OBJ}.payment_status") in (None, "paid")
    # A subscription's checkout is paid through its invoice (invoice.paid), not as a top-up.
    one_off = _opt_text(session, "mode", f"{_OBJ}.mode") in (None, "payment")
    if not (paid and one_off):
        return replace(base, customer_id=customer, object_id=session_id)
    if session.get("amount_total") is not None:
        amount = _amount(session["amount_total"], f"{_OBJ}.amount_total")
    else:
        metadata = _opt_obj(session.get("metadata"), f"{_OBJ}.metadata") or {}
        key = "credit_minor" if metadata.get("credit_minor") is not None else "amount_minor"
        amount = _amount_or_digits(metadata.get(key), f"{_OBJ}.metadata.{key}")
    return replace(
        base,
        kind="credit_purchased",
        customer_id=customer,
        object_id=session_id,
        amount_minor=amount,
        currency=_opt_text(session, "currency", f"{_OBJ}.currency"),
    )


# --- Autumn ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AutumnChange:
    action: str
    plan_id: str
    status: str | None
    past_due: bool
    period: Period | None
    moments: tuple[datetime, ...]  # timestamps of things that already happened

    @property
    def expired(self) -> bool:
        return "expired" in (self.action, self.status)


def _autumn_millis(value: object, path: str) -> datetime:
    return _epoch(value, path, millis=True)


def _autumn_change(change: Mapping[str, Any], path: str) -> _AutumnChange:
    sub = _obj(change.get("subscription"), f"{path}.subscription")
    sub_path = f"{path}.subscription"
    moments = tuple(
        _autumn_millis(sub[key], f"{sub_path}.{key}")
        for key in ("started_at", "current_period_start")
        if sub.get(key) is not None
    )
    period = _period_of(
        sub, ("current_period_start", "current_period_end"), sub_path, _autumn_millis
    )
    return _AutumnChange(
        action=_text(change, "action", f"{path}.action"),
        plan_id=_text(sub, "plan_id", f"{sub_path}.plan_id"),
        status=_opt_text(sub, "status", f"{sub_path}.status"),
        past_due=bool(_opt_flag(sub, "past_due", f"{sub_path}.past_due")),
        period=period,
        moments=moments,
    )


def parse_autumn(payload: Mapping[str, Any], message_id: str) -> BillingEvent:
    """An Autumn webhook (delivered by Svix) normalised; ``message_id`` is the svix-id header.

    ``occurred_at`` is the payload's ``occurred_at`` or ``timestamp`` (epoch ms) when present,
    else the latest start (``started_at``, ``current_period_start``) among its subscriptions,
    else the epoch: an undated event orders before every dated one, so it is stale once a
    dated event has set the same fields. Period ends are left out: they lie in the future.
    """
    if not isinstance(message_id, str) or not message_id:
        raise MalformedEvent("svix-id is missing")
    payload = _obj(payload, "event")
    type_ = _text(payload, "type", "type")
    stamp_key = "occurred_at" if payload.get("occurred_at") is not None else "timestamp"
    stamp = payload.get(stamp_key)
    stamped = None if stamp is None else _autumn_millis(stamp, stamp_key)
    if type_ != "billing.updated":
        return BillingEvent("autumn", message_id, type_, "ignored", None, stamped or _EPOCH)
    data = _obj(payload.get("data"), "data")
    raw = _items(data.get("plan_changes"), "data.plan_changes")
    changes = [_autumn_change(c, f"data.plan_changes[{i}]") for i, c in enumerate(raw)]
    live = [c for c in changes if not c.expired]
    current = next((c for c in live if c.action in ("activated", "updated")), None)
    ended = next((c for c in changes if c.expired), None)
    if current is not None:
        plan, status, period = current.plan_id, current.status, current.period
    elif ended is not None:
        plan, status, period = ended.plan_id, "expired", None
    else:
        plan, status, period = None, None, None
    occurred_at = stamped or max((m for c in changes for m in c.moments), default=_EPOCH)
    return BillingEvent(
        "autumn",
        message_id,
        type_,
        "past_due_changed",
        _text(data, "customer_id", "data.customer_id"),
        occurred_at,
        subscription_status=status,
        plan=plan,
        period=period,
        past_due=any(c.past_due for c in live),
    )


# --- Paddle ------------------------------------------------------------------------------------

_PADDLE_KINDS: dict[str, EventKind] = {
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
    payload = _obj(payload, "event")
    event_id = _text(payload, "event_id", "event_id")
    type_ = _text(payload, "event_type", "event_type")
    occurred_at = _rfc3339(payload.get("occurred_at"), "occurred_at")
    base = BillingEvent("paddle", event_id, type_, "ignored", None, occurred_at)
    kind = _PADDLE_KINDS.get(type_)
    if kind is None:
        return base
    data = _obj(payload.get("data"), "data")
    if kind in ("payment_succeeded", "payment_failed"):
        return _paddle_transaction(base, kind, data)
    return _paddle_subscription(base, kind, data)


def _paddle_transaction(
    base: BillingEvent, kind: EventKind, txn: Mapping[str, Any]
) -> BillingEvent:
    txn_id = _text(txn, "id", "data.id")
    origin = _opt_text(txn, "origin", "data.origin")
    billing_period = _opt_obj(txn.get("billing_period"), "data.billing_period")
    totals = _dig(txn, "details", "totals")
    total = totals.get("grand_total") if isinstance(totals, Mapping) else None
    return replace(
        base,
        kind=kind,
        customer_id=_opt_text(txn, "customer_id", "data.customer_id"),
        object_id=txn_id,
        invoice_id=txn_id,
        billing_reason="subscription_cycle" if origin == "subscription_recurring" else origin,
        subscription_id=_opt_text(txn, "subscription_id", "data.subscription_id"),
        period=_period_of(
            billing_period, ("starts_at", "ends_at"), "data.billing_period", _rfc3339
        ),
        amount_minor=None
        if total is None
        else _amount_or_digits(total, "data.details.totals.grand_total"),
        currency=_opt_text(txn, "currency_code", "data.currency_code"),
    )


def _paddle_subscription(
    base: BillingEvent, kind: EventKind, sub: Mapping[str, Any]
) -> BillingEvent:
    subscription_id = _text(sub, "id", "data.id")
    items = _items(sub.get("items"), "data.items")
    price = _opt_obj(items[0].get("price"), "data.items[0].price") if items else None
    period_obj = _opt_obj(sub.get("current_billing_period"), "data.current_billing_period")
    scheduled = _opt_obj(sub.get("scheduled_change"), "data.scheduled_change")
    status = _opt_text(sub, "status", "data.status")
    return replace(
        base,
        kind=kind,
        customer_id=_opt_text(sub, "customer_id", "data.customer_id"),
        object_id=subscription_id,
        subscription_id=subscription_id,
        subscription_status="past_due" if base.type == "subscription.past_due" else status,
        plan=None if price is None else _opt_text(price, "id", "data.items[0].price.id"),
        period=_period_of(
            period_obj, ("starts_at", "ends_at"), "data.current_billing_period", _rfc3339
        ),
        cancel_at_period_end=scheduled is not None and scheduled.get("action") == "cancel",
    )


# --- effects -----------------------------------------------------------------------------------

_STALE = "stale"
_ENDED = frozenset({"canceled", "incomplete_expired", "expired"})


@dataclass(frozen=True, slots=True)
class _Context:
    event: BillingEvent
    plans: frozenset[str]
    free_plan: str
    plan_grants: Mapping[str, int]
    currency: str
    now: datetime

    @property
    def reason(self) -> str:
        """How audit rows name the event."""
        event = self.event
        return f"{event.provider} {event.type} {event.object_id or event.event_id}"


def apply_event(
    state: BillingState,
    event: BillingEvent,
    *,
    plans: frozenset[str],
    free_plan: str = "free",
    plan_grants: Mapping[str, int] | None = None,
    currency: str = "usd",
    now: datetime,
    redelivered: bool = False,
) -> BillingChange:
    """The effect of one event on an org's billing state.

    Status effects are ordered by ``status_at``, plan/period/cancellation by
    ``subscription_at``: a part older than its marker is skipped. Ledger entries and period
    claims are idempotent by key, so they are never stale. ``refused`` is set only when the
    event changes nothing at all (stores write only its ``audit`` then, a refusal's own
    entry); a partly stale event applies the rest with ``refused`` None. An unknown plan
    refuses the plan alone (``plan_refused``). ``redelivered``: the event was applied before
    with its plan refused; only its plan is decided again. ``currency`` is the ledger's.
    """
    ctx = _Context(event, plans, free_plan, plan_grants or {}, currency.lower(), now)
    if redelivered:
        change = _redelivered(state, ctx)
    elif event.kind in _HANDLERS:
        change = _HANDLERS[event.kind](state, ctx)
    else:
        change = BillingChange(state)
    change, dropped = _in_range(change)
    if dropped:
        amounts = ",".join(str(entry.amount_minor) for entry in dropped)
        refusal = AuditEntry("credit_refused", None, amounts, f"{ctx.reason}: {OUT_OF_RANGE}")
        if any(entry in change.credits for entry in dropped) or (
            change.state == state and not change.changed
        ):
            # A top-up or refund is the event itself: past the range, all of it is refused.
            return BillingChange(state, refused=OUT_OF_RANGE, audit=(refusal,))
        # A plan's grant past the range is refused alone: the period and status still change.
        change = replace(change, audit=(*change.audit, refusal))
    change = replace(change, audit=(*_audit(state, change.state, ctx.reason), *change.audit))
    if change.refused == _STALE and change.changed:
        return replace(change, refused=None)
    return change


def _in_range(change: BillingChange) -> tuple[BillingChange, tuple[CreditEntry, ...]]:
    """The change without ledger entries past the stores' signed 64-bit range (symmetric, so a
    refund can never take a balance to its most negative value), and the entries dropped."""

    def fits(entry: CreditEntry) -> bool:
        return -MAX_MINOR <= entry.amount_minor <= MAX_MINOR

    dropped = tuple(e for e in (*change.credits, *change.period_grants) if not fits(e))
    if not dropped or any(not fits(e) for e in change.credits):
        return change, dropped
    return replace(change, period_grants=tuple(e for e in change.period_grants if fits(e))), dropped


def _older(event: BillingEvent, marker: datetime | None) -> bool:
    return marker is not None and event.occurred_at < marker


def _money(value: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _overdue(state: BillingState, status: PaymentStatus, ctx: _Context) -> BillingState:
    """``status`` with the overdue clock started once; it runs from when we learn of it."""
    first = state.overdue_since is None
    return replace(
        state,
        payment_status=status,
        overdue_since=ctx.now if first else state.overdue_since,
        overdue_invoice_id=ctx.event.invoice_id if first else state.overdue_invoice_id,
        status_at=ctx.event.occurred_at,
    )


def _settled(state: BillingState, ctx: _Context) -> BillingState:
    return replace(
        state,
        payment_status="ok",
        overdue_since=None,
        overdue_invoice_id=None,
        status_at=ctx.event.occurred_at,
    )


def _worse(state: BillingState, status: PaymentStatus) -> PaymentStatus:
    return "blocked" if state.payment_status == "blocked" else status


def _grants(plan: str, period: Period, ctx: _Context) -> tuple[CreditEntry, ...]:
    amount = _money(ctx.plan_grants.get(plan))
    if amount is None or amount <= 0:
        return ()
    return (CreditEntry(amount, f"grant:{plan}", f"grant:{period.key}"),)


def _forward(current: Period | None, period: Period) -> bool:
    # Periods only move forward: a late event about an earlier period must not rewind usage.
    return current is None or period.start >= current.start


def _is_current(state: BillingState, event: BillingEvent) -> bool:
    return None in (state.subscription_id, event.subscription_id) or (
        state.subscription_id == event.subscription_id
    )


def _known_plan(event: BillingEvent, ctx: _Context) -> bool:
    return event.plan is None or event.plan in ctx.plans


def _plan_refusal(state: BillingState, ctx: _Context) -> AuditEntry:
    return AuditEntry("plan_refused", state.plan, ctx.event.plan, f"{ctx.reason}: {UNKNOWN_PLAN}")


def _ended(state: BillingState, ctx: _Context) -> BillingState:
    return replace(
        state,
        plan=ctx.free_plan,
        subscription_id=None,
        cancel_at_period_end=False,
        subscription_at=ctx.event.occurred_at,
    )


def _in_period(state: BillingState, before: str, ctx: _Context) -> BillingChange:
    """A plan adopted within the org's period writes its grant for that period, unless one
    was written: a first subscription whose invoice claimed the period on the old plan."""
    period = ctx.event.period
    current = state.period
    if current is None or state.plan == before:
        return BillingChange(state)
    if period is not None and period.start != current.start:
        return BillingChange(state)
    return BillingChange(state, period_grants=_grants(state.plan, current, ctx))


def _adopt(state: BillingState, ctx: _Context) -> BillingChange:
    """The event's plan, subscription, cancellation and period; a new period is claimed.

    A plan not in ``plans`` is refused alone: the org keeps its plan, and a new period
    its grant until a redelivery names a known plan."""
    event = ctx.event
    known = _known_plan(event, ctx)
    cancel = event.cancel_at_period_end
    before = state
    state = replace(
        state,
        plan=event.plan if known and event.plan else state.plan,
        subscription_id=event.subscription_id or state.subscription_id,
        cancel_at_period_end=state.cancel_at_period_end if cancel is None else cancel,
        subscription_at=event.occurred_at,
    )
    refusal = () if known else (_plan_refusal(before, ctx),)
    change = _period_of_adopted(state, before.plan, ctx, grant=known)
    return replace(change, plan_refused=None if known else event.plan, audit=refusal)


def _period_of_adopted(
    state: BillingState, before: str, ctx: _Context, *, grant: bool
) -> BillingChange:
    period = ctx.event.period
    if period is None:
        return _in_period(state, before, ctx)
    if not _forward(state.period, period):
        return BillingChange(state)
    previous, state = state.period, replace(state, period=period)
    if previous is not None and previous.start == period.start:
        return _in_period(state, before, ctx)
    grants = _grants(state.plan, period, ctx) if grant else ()
    return BillingChange(state, new_period=period, period_grants=grants)


def _redelivered(state: BillingState, ctx: _Context) -> BillingChange:
    """The plan part of an event applied before with its plan refused, and no other part:
    those were applied then, and events since may have changed them."""
    event = ctx.event
    if event.plan is None or event.plan not in ctx.plans:
        return BillingChange(state, refused=UNKNOWN_PLAN, audit=(_plan_refusal(state, ctx),))
    if _older(event, state.subscription_at):
        return BillingChange(state, refused=_STALE)
    adopted = replace(state, plan=event.plan, subscription_at=event.occurred_at)
    return _in_period(adopted, state.plan, ctx)


def _payment_failed(state: BillingState, ctx: _Context) -> BillingChange:
    event = ctx.event
    if event.invoice_id is not None and event.invoice_id == state.paid_invoice_id:
        return BillingChange(state, refused=ALREADY_PAID)
    # On equal timestamps payment wins: a failure stamped when the newest payment was is older.
    if _older(event, state.status_at) or (
        state.paid_at is not None and event.occurred_at <= state.paid_at
    ):
        return BillingChange(state, refused=_STALE)
    # Metered usage that could not be charged blocks at once; a licensed invoice has grace.
    status = _worse(state, "blocked" if event.metered else "past_due")
    return BillingChange(_overdue(state, status, ctx))


def _payment_succeeded(state: BillingState, ctx: _Context) -> BillingChange:
    event = ctx.event
    refused = None
    if _older(event, state.status_at):
        refused = _STALE
    else:
        amount = _money(event.amount_minor)
        # A zero invoice (a trial's first) is not a payment: the org stays never_paid.
        paid = amount is None or amount > 0
        state = replace(
            _settled(state, ctx),
            never_paid=state.never_paid and not paid,
            suspended_at=None,
            suspension_reason=None,
            paid_invoice_id=event.invoice_id or state.paid_invoice_id,
            paid_at=event.occurred_at,
        )
    period = event.period
    if event.billing_reason != "subscription_cycle" or period is None:
        return BillingChange(state, refused=refused)
    if not _forward(state.period, period):
        return BillingChange(state, refused=refused)
    return BillingChange(
        replace(state, period=period),
        new_period=period,
        period_grants=_grants(state.plan, period, ctx),
        refused=refused,
    )


def _status_effect(state: BillingState, status: str | None) -> PaymentStatus | None:
    if status == "unpaid":
        return "blocked"
    if status == "past_due" and state.payment_status == "ok":
        return "past_due"
    # A subscription back to active settles past_due only for an org that has paid before;
    # a never-paid org must pay (its invoice.paid), so a same-second reorder cannot clear it.
    if status in ("active", "trialing") and state.payment_status == "past_due":
        return None if state.never_paid else "ok"
    return None


def _subscription_updated(state: BillingState, ctx: _Context) -> BillingChange:
    event = ctx.event
    ending = event.subscription_status in _ENDED
    if ending and not _is_current(state, event):
        return BillingChange(state, refused="not the current subscription")
    stale = False
    effect = _status_effect(state, event.subscription_status)
    if effect is not None:
        if _older(event, state.status_at):
            stale = True
        elif effect == "ok":
            state = _settled(state, ctx)
        else:
            state = _overdue(state, effect, ctx)
    if _older(event, state.subscription_at):
        return BillingChange(state, refused=_STALE)
    change = BillingChange(_ended(state, ctx)) if ending else _adopt(state, ctx)
    return replace(change, refused=_STALE if stale else None)


def _subscription_deleted(state: BillingState, ctx: _Context) -> BillingChange:
    if not _is_current(state, ctx.event):
        return BillingChange(state, refused="not the current subscription")
    if _older(ctx.event, state.subscription_at):
        return BillingChange(state, refused=_STALE)
    return BillingChange(_ended(state, ctx))


def _currency_refusal(state: BillingState, amount: int, ctx: _Context) -> BillingChange | None:
    """A ledger entry in another currency than the ledger's is refused, never taken at face
    value; codes compare case-insensitively. One that names none is in the ledger's."""
    currency = (ctx.event.currency or ctx.currency).lower()
    if currency == ctx.currency:
        return None
    shown = f"{amount} {currency[:16]}"
    why = f"{ctx.reason}: {OTHER_CURRENCY} (the ledger's is {ctx.currency})"
    audit = (AuditEntry("credit_refused", None, shown, why),)
    return BillingChange(state, refused=OTHER_CURRENCY, audit=audit)


def _credit_purchased(state: BillingState, ctx: _Context) -> BillingChange:
    event = ctx.event
    amount = _money(event.amount_minor)
    if event.object_id is None or amount is None:
        return BillingChange(state, refused="incomplete event")
    if (refusal := _currency_refusal(state, amount, ctx)) is not None:
        return refusal
    if amount <= 0:
        return BillingChange(state)
    source = f"{event.provider}:{event.object_id}"
    key = f"{event.provider}:topup:{event.object_id}"
    return BillingChange(state, credits=(CreditEntry(amount, source, key),))


def _charge_refunded(state: BillingState, ctx: _Context) -> BillingChange:
    """Providers report the cumulative refund; the ledger takes only what is new."""
    event, charge = ctx.event, ctx.event.object_id
    amount = _money(event.amount_minor)
    if charge is None or amount is None:
        return BillingChange(state, refused="incomplete event")
    if (refusal := _currency_refusal(state, amount, ctx)) is not None:
        return refusal
    delta = amount - state.refunded.get(charge, 0)
    if delta <= 0:
        return BillingChange(state)
    credit = CreditEntry(
        -delta, f"{event.provider}:{charge}", f"{event.provider}:refund:{charge}:{amount}"
    )
    refunded = {**state.refunded, charge: amount}
    return BillingChange(replace(state, refunded=refunded), credits=(credit,))


def _past_due_changed(state: BillingState, ctx: _Context) -> BillingChange:
    event = ctx.event
    expired = event.subscription_status == "expired"
    stale = False
    if event.past_due is not None:
        if _older(event, state.status_at):
            stale = True
        elif event.past_due:
            state = _overdue(state, _worse(state, "past_due"), ctx)
        elif state.payment_status == "past_due":
            state = _settled(state, ctx)
        else:
            state = replace(state, status_at=event.occurred_at)
    change = BillingChange(state)
    if event.plan is not None or event.period is not None:
        if _older(event, state.subscription_at):
            stale = True
        elif not expired:
            change = _adopt(state, ctx)
        elif event.plan == state.plan:  # only the org's own plan expiring sends it to free
            change = BillingChange(_ended(state, ctx))
    return replace(change, refused=_STALE if stale else None)


_HANDLERS: dict[str, Callable[[BillingState, _Context], BillingChange]] = {
    "payment_failed": _payment_failed,
    "payment_succeeded": _payment_succeeded,
    "subscription_updated": _subscription_updated,
    "subscription_deleted": _subscription_deleted,
    "credit_purchased": _credit_purchased,
    "charge_refunded": _charge_refunded,
    "past_due_changed": _past_due_changed,
}


def _show(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Period):
        return f"{value.start.isoformat()}/{value.end.isoformat()}"
    return str(value)


def _audit(old: BillingState, new: BillingState, reason: str) -> tuple[AuditEntry, ...]:
    entries = [
        AuditEntry(f.name, _show(before), _show(after), reason)
        for f in fields(BillingState)
        if f.name != "refunded"
        and (before := getattr(old, f.name)) != (after := getattr(new, f.name))
    ]
    for charge in sorted(old.refunded.keys() | new.refunded.keys()):
        before, after = old.refunded.get(charge), new.refunded.get(charge)
        if before != after:
            entries.append(AuditEntry(f"refunded.{charge}", _show(before), _show(after), reason))
    return tuple(entries)


# --- suspension --------------------------------------------------------------------------------


def suspension_decision(
    state: BillingState, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> SuspensionDecision:
    """Suspend a never-paid org overdue for ``grace``; lift it once it pays or is settled."""
    if state.suspended_at is not None:
        if state.payment_status == "ok" or not state.never_paid:
            return SuspensionDecision("clear", "payment settled")
        return SuspensionDecision("none")
    overdue = state.overdue_since
    if (
        state.payment_status == "past_due"
        and state.never_paid
        and overdue is not None
        and now - overdue >= grace
    ):
        return SuspensionDecision("suspend", f"overdue since {overdue.isoformat()}")
    return SuspensionDecision("none")
