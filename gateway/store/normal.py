"""One normal form of what every backend stores and reports, and the checks they share.

Billing: a webhook event is claimed, its org's ``BillingState`` locked, a pure ``decide``
called on it and the resulting ``BillingChange`` written, all in one transaction; these
helpers say what is written (``applied_change``), what is refused (``ledger_refusal``) and
what the audit log gets (``org_audit``, ``suspension_audit``), so that every backend stores
and reports the same values.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from datetime import UTC, datetime

from gateway.store.records import (
    BALANCE_OUT_OF_RANGE,
    PLAN_REFUSED,
    AuditRow,
    OrgChanges,
    OrgRecord,
)
from policies.billing import (
    MAX_MINOR,
    MIN_MINOR,
    OUT_OF_RANGE,
    AuditEntry,
    BillingChange,
    BillingEvent,
    BillingState,
    CreditEntry,
)
from policies.model import Period, Prices


def utc(moment: datetime) -> datetime:
    """Aware UTC: what every backend stores and returns (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    return utc(moment).isoformat()


def utc_period(period: Period | None) -> Period | None:
    return None if period is None else Period(utc(period.start), utc(period.end))


def stored_state(state: BillingState) -> BillingState:
    """``state`` as a backend reads it back: times in UTC, ``refunded`` a plain dict."""

    def at(moment: datetime | None) -> datetime | None:
        return None if moment is None else utc(moment)

    return replace(
        state,
        period=utc_period(state.period),
        overdue_since=at(state.overdue_since),
        suspended_at=at(state.suspended_at),
        status_at=at(state.status_at),
        subscription_at=at(state.subscription_at),
        refunded=dict(state.refunded),
        paid_at=at(state.paid_at),
    )


def applied_change(change: BillingChange, claimed: bool, org_id: str) -> BillingChange:
    """The change to write: only the claimant of ``new_period`` sets it and writes its
    grants; anyone else keeps the state's period and drops both. Grant keys get the org:
    two orgs' periods that start at the same second are two grants."""
    grants = tuple(
        replace(entry, idempotency_key=f"{org_id}:{entry.idempotency_key}")
        for entry in change.period_grants
    )
    change = replace(change, period_grants=grants)
    if change.new_period is None:
        return replace(change, state=stored_state(change.state))
    if claimed:
        period = utc_period(change.new_period)
        return replace(change, state=stored_state(replace(change.state, period=period)))
    return replace(change, state=stored_state(change.state), new_period=None, period_grants=())


def event_reason(change: BillingChange | None) -> str | None:
    """The reason an event's row keeps once ``change`` was written (or refused)."""
    if change is None:
        return None
    if change.refused is not None:
        return change.refused
    return PLAN_REFUSED if change.plan_refused is not None else None


def ledger_refusal(
    state: BillingState, change: BillingChange, balance: int, why: str
) -> BillingChange | None:
    """``change`` refused when an entry, or the balance after all of them, would leave the
    stores' integer range (signed 64-bit); None when they fit. Entries a claim would drop
    count too: the check comes before the claim."""
    entries: tuple[CreditEntry, ...] = (*change.credits, *change.period_grants)
    if not entries:
        return None
    if any(not MIN_MINOR <= entry.amount_minor <= MAX_MINOR for entry in entries):
        refused = OUT_OF_RANGE
    elif MIN_MINOR <= balance + sum(entry.amount_minor for entry in entries) <= MAX_MINOR:
        return None
    else:
        refused = BALANCE_OUT_OF_RANGE
    amounts = ",".join(str(entry.amount_minor) for entry in entries)
    audit = AuditEntry("credit_refused", str(balance), amounts, f"{why}: {refused}")
    return BillingChange(state, refused=refused, audit=(audit,))


def event_json(event: BillingEvent) -> str:
    """A parsed event as kept until its customer is linked (``event_from_json`` reads it)."""
    raw: dict[str, object] = {}
    for f in fields(BillingEvent):
        value = getattr(event, f.name)
        if isinstance(value, datetime):
            value = iso(value)
        elif isinstance(value, Period):
            value = [iso(value.start), iso(value.end)]
        raw[f.name] = value
    return json.dumps(raw, sort_keys=True)


def event_from_json(text: str) -> BillingEvent:
    raw = json.loads(text)
    values = {f.name: raw[f.name] for f in fields(BillingEvent) if f.name in raw}
    values["occurred_at"] = datetime.fromisoformat(values["occurred_at"])
    if values.get("period") is not None:
        start, end = values["period"]
        values["period"] = Period(datetime.fromisoformat(start), datetime.fromisoformat(end))
    return BillingEvent(**values)


def has_suspension_row(state: BillingState) -> bool:
    """Whether the state needs a ``billing_suspensions`` row."""
    return any(
        value is not None
        for value in (
            state.overdue_since,
            state.overdue_invoice_id,
            state.suspended_at,
            state.suspension_reason,
        )
    )


def prices_json(prices: Prices) -> str:
    return json.dumps(
        {**prices.as_dict(), "block_over_balance": prices.block_over_balance}, sort_keys=True
    )


def org_audit(org: OrgRecord, changes: OrgChanges) -> list[AuditRow]:
    """One row per field that ``changes`` really changes, in a fixed order."""
    rows: list[AuditRow] = []
    if changes.name is not None and changes.name != org.name:
        rows.append(("name", org.name, changes.name))
    if changes.limits is not None and changes.limits.overrides() != org.limits.overrides():
        old, new = org.limits.overrides(), changes.limits.overrides()
        rows.append(("limits", json.dumps(old, sort_keys=True), json.dumps(new, sort_keys=True)))
    if changes.set_upstream and changes.upstream != org.upstream:
        rows.append(("upstream", org.upstream, changes.upstream))
    if changes.prices is not None and changes.prices != org.prices:
        rows.append(("prices", prices_json(org.prices), prices_json(changes.prices)))
    if changes.shadow is not None and changes.shadow != org.shadow:
        rows.append(("shadow", _flag(org.shadow), _flag(changes.shadow)))
    if changes.set_notify_url and changes.notify_url != org.notify_url:
        rows.append(("notify_url", org.notify_url, changes.notify_url))
    if changes.set_partial_admission and changes.partial_admission != org.partial_admission:
        old_flag, new_flag = org.partial_admission, changes.partial_admission
        rows.append(("partial_admission", _maybe_flag(old_flag), _maybe_flag(new_flag)))
    return rows


def suspension_audit(org: OrgRecord, suspended: bool, reason: str | None) -> list[AuditRow]:
    new_reason = reason if suspended else None
    if suspended != org.suspended:
        return [("suspended", _flag(org.suspended), _flag(suspended))]
    if new_reason != org.suspension_reason:
        return [("suspension_reason", org.suspension_reason, new_reason)]
    return []


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _maybe_flag(value: bool | None) -> str | None:
    return None if value is None else _flag(value)
