"""The billing state machine: the effect of one event on an org's billing state."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime

from policies.billing.model import (
    ALREADY_PAID,
    MAX_MINOR,
    OTHER_CURRENCY,
    OUT_OF_RANGE,
    UNKNOWN_PLAN,
    AuditEntry,
    BillingChange,
    BillingEvent,
    BillingState,
    CreditEntry,
)
from policies.model import PaymentStatus, Period

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
