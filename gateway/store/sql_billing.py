"""Billing in SQL, written once (steps; see ``seam``): state, ledger, webhook claims.

A webhook event is claimed, its org's ``billing_state`` row locked (created first, so that
there is a row to lock), a pure ``decide`` run on it and the change written, in one
transaction. A duplicate claim waits for the first claim's transaction, then finds it (or
takes over an event whose first attempt rolled back). Where the dialect has one, a webhook
that finds its customer unlinked and the link of that customer take one lock on the
customer, so that the event is either kept before the link commits or applied after it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from gateway.errors import Conflict
from gateway.store import sql_notify
from gateway.store.normal import (
    applied_change,
    event_from_json,
    event_json,
    event_reason,
    has_suspension_row,
    ledger_refusal,
)
from gateway.store.records import PLAN_REFUSED, Decide, DecideEvent, WebhookOutcome, new_id
from gateway.store.seam import Dialect, Step, execute, rows, value
from gateway.store.sql_orgs import audit, iso_of
from policies.billing import BillingChange, BillingEvent, BillingState
from policies.model import PaymentStatus, Period
from policies.notifications import billing_notice, event_body

_STATE_COLUMNS = """b.payment_status, b.plan, b.period_start, b.period_end,
        b.subscription_id, b.never_paid, b.cancel_at_period_end, b.status_at,
        b.subscription_at, CAST(b.refunded AS TEXT), s.overdue_since, s.invoice_id,
        s.suspended_at, s.reason, b.paid_invoice_id, b.paid_at"""
# Built from constants only (S608): no input reaches the text of a statement.
SELECT_STATE = f"""SELECT o.id, {_STATE_COLUMNS}
    FROM orgs o
    LEFT JOIN billing_state b ON b.org_id = o.id
    LEFT JOIN billing_suspensions s ON s.org_id = o.id
    WHERE o.id = ?"""  # noqa: S608
# The row of an org that has none yet is created first, so that there is a row to lock.
ENSURE_STATE = """INSERT INTO billing_state (org_id) SELECT id FROM orgs WHERE id = ?
    ON CONFLICT (org_id) DO NOTHING"""
LOCK_STATE = f"""SELECT b.org_id, {_STATE_COLUMNS}
    FROM billing_state b LEFT JOIN billing_suspensions s ON s.org_id = b.org_id
    WHERE b.org_id = ?
    FOR UPDATE OF b"""  # noqa: S608

# balance_minor is left alone: only ledger inserts move it.
WRITE_STATE = """UPDATE billing_state SET payment_status = ?, plan = ?,
        period_start = ?, period_end = ?, subscription_id = ?, never_paid = ?,
        cancel_at_period_end = ?, status_at = ?, subscription_at = ?,
        refunded = ?, paid_invoice_id = ?, paid_at = ?, updated_at = ?
    WHERE org_id = ?"""

WRITE_SUSPENSION = """INSERT INTO billing_suspensions
        (org_id, overdue_since, suspended_at, reason, invoice_id)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (org_id) DO UPDATE SET overdue_since = excluded.overdue_since,
        suspended_at = excluded.suspended_at, reason = excluded.reason,
        invoice_id = excluded.invoice_id"""

# An entry whose key is in the ledger already is skipped.
ADD_CREDIT = """INSERT INTO credit_ledger
        (org_id, amount_minor, source, idempotency_key, created_at)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (idempotency_key) DO NOTHING"""

CLAIM_EVENT = """INSERT INTO webhook_events
        (provider, event_id, received_at, type, customer_id, occurred_at)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (provider, event_id) DO NOTHING"""
# A redelivery of an event applied with its plan refused, waiting for another redelivery.
TAKE_PLAN_REFUSED = """SELECT org_id FROM webhook_events
    WHERE provider = ? AND event_id = ? AND status = 'applied' AND reason = ?
        AND org_id IS NOT NULL
    FOR UPDATE"""
FINISH_EVENT = """UPDATE webhook_events SET org_id = ?, status = ?, reason = ?, event = ?
    WHERE provider = ? AND event_id = ?"""
CUSTOMER_ORG = "SELECT org_id FROM billing_customers WHERE provider = ? AND customer_id = ?"
# A second applier waits for the first, then finds the row no longer unlinked.
TAKE_UNLINKED = """SELECT CAST(event AS TEXT) FROM webhook_events
    WHERE provider = ? AND event_id = ? AND status = 'unlinked'
    FOR UPDATE"""


def _period(d: Dialect, start: Any, end: Any) -> Period | None:
    first, last = d.moment(start), d.moment(end)
    return None if first is None or last is None else Period(first, last)


def state_from_row(d: Dialect, row: Sequence[Any]) -> BillingState:
    """A state from SELECT_STATE or LOCK_STATE; an org without billing rows has defaults."""
    default = BillingState()
    billed = row[1] is not None
    return BillingState(
        payment_status=cast(PaymentStatus, row[1]) if billed else default.payment_status,
        plan=row[2] if row[2] is not None else default.plan,
        period=_period(d, row[3], row[4]),
        subscription_id=row[5],
        never_paid=bool(row[6]) if billed else default.never_paid,
        cancel_at_period_end=bool(row[7]) if billed else default.cancel_at_period_end,
        status_at=d.moment(row[8]),
        subscription_at=d.moment(row[9]),
        refunded=json.loads(row[10]) if row[10] else {},
        overdue_since=d.moment(row[11]),
        overdue_invoice_id=row[12],
        suspended_at=d.moment(row[13]),
        suspension_reason=row[14],
        paid_invoice_id=row[15],
        paid_at=d.moment(row[16]),
    )


def billing_state(d: Dialect, org_id: str) -> Step[BillingState | None]:
    found = yield from rows(SELECT_STATE, org_id)
    return state_from_row(d, found[0]) if found else None


def balance(org_id: str) -> Step[int]:
    total = yield from value(
        "SELECT COALESCE(SUM(amount_minor), 0) FROM credit_ledger WHERE org_id = ?", org_id
    )
    return int(total)


def write_audit(
    d: Dialect, org_id: str, change: BillingChange, actor: str, now: datetime
) -> Step[None]:
    entries = [(entry.field, entry.old, entry.new) for entry in change.audit]
    yield from audit(d, org_id, entries, [entry.reason for entry in change.audit], actor, now)


def write_change(
    d: Dialect, org_id: str, change: BillingChange, actor: str, now: datetime
) -> Step[BillingChange]:
    """Persist a decided change; the caller holds the org's billing_state row lock."""
    claimed = False
    if change.new_period is not None:
        claimed = 1 == (
            yield from execute(
                "INSERT INTO billing_period_claims (org_id, period_start) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                org_id,
                d.stamp(change.new_period.start),
            )
        )
    applied = applied_change(change, claimed, org_id)
    state, period = applied.state, applied.state.period
    yield from execute(
        WRITE_STATE,
        state.payment_status,
        state.plan,
        d.stamp(period.start) if period else None,
        d.stamp(period.end) if period else None,
        state.subscription_id,
        state.never_paid,
        state.cancel_at_period_end,
        d.stamp(state.status_at),
        d.stamp(state.subscription_at),
        json.dumps(dict(state.refunded), sort_keys=True),
        state.paid_invoice_id,
        d.stamp(state.paid_at),
        d.stamp(now),
        org_id,
    )
    if has_suspension_row(state):
        yield from execute(
            WRITE_SUSPENSION,
            org_id,
            d.stamp(state.overdue_since),
            d.stamp(state.suspended_at),
            state.suspension_reason,
            state.overdue_invoice_id,
        )
    else:
        yield from execute("DELETE FROM billing_suspensions WHERE org_id = ?", org_id)
    added = 0
    for entry in (*applied.credits, *applied.period_grants):
        entered = yield from execute(
            ADD_CREDIT,
            org_id,
            entry.amount_minor,
            entry.source,
            entry.idempotency_key,
            d.stamp(now),
        )
        added += entry.amount_minor if entered == 1 else 0
    if added:
        yield from execute(
            "UPDATE billing_state SET balance_minor = balance_minor + ? WHERE org_id = ?",
            added,
            org_id,
        )
    yield from write_audit(d, org_id, applied, actor, now)
    return applied


def checked(
    d: Dialect, org_id: str, decide: Decide, why: str, *, known_plan: bool = False
) -> Step[BillingChange | None]:
    """``decide`` on the org's locked state, refused if its ledger entries leave the integer
    range; None for an unknown org. With ``known_plan`` a move to a plan the catalog does not
    hold (any more) is a ``Conflict``."""
    yield from execute(ENSURE_STATE, org_id)
    found = yield from rows(LOCK_STATE, org_id)
    if not found:
        return None
    state = state_from_row(d, found[0])
    change = decide(state)
    if change.refused is None and change.state.plan != state.plan:
        yield from _plan_kept(change.state.plan, known_plan)
    if change.refused is None and (change.credits or change.period_grants):
        held = yield from value("SELECT balance_minor FROM billing_state WHERE org_id = ?", org_id)
        change = ledger_refusal(state, change, int(held or 0), why) or change
    if change.refused is None:
        yield from _suspension_notice(org_id, state, change.state)
    return change


def _suspension_notice(org_id: str, before: BillingState, after: BillingState) -> Step[None]:
    """A billing suspension that starts or ends is an event in the notifications outbox, in
    the transaction that writes it (its URL is the one configured when it is delivered)."""
    notice = billing_notice(
        org_id, before.suspended_at, after.suspended_at, after.suspension_reason
    )
    if notice is None:
        return
    kind, claim, data = notice
    event_id, now = new_id("evt"), time.time()
    body = event_body(kind, event_id, now, data)
    url = yield from value("SELECT notify_url FROM orgs WHERE id = ?", org_id)
    yield from sql_notify.claim(event_id, claim, org_id, kind, url or "", body, now)


def _plan_kept(plan: str, known: bool) -> Step[None]:
    """Moving an org to a plan holds the plan's row until the move commits, so a delete of the
    plan waits and then sees the org on it (409), or deletes first and the move finds it gone:
    refused when the plan must be known (the admin's), kept otherwise (a provider's plan the
    catalog lacks: the org's own limits alone)."""
    found = yield from value("SELECT name FROM plans WHERE name = ? FOR SHARE", plan)
    if found is None and known:
        raise Conflict(f"plan {plan!r} is not in the catalog (deleted meanwhile?)")


def update_billing(
    d: Dialect, org_id: str, decide: Decide, actor: str, now: datetime, known_plan: bool = False
) -> Step[BillingChange | None]:
    change = yield from checked(d, org_id, decide, actor, known_plan=known_plan)
    if change is None:
        return None
    if change.refused is not None:
        yield from write_audit(d, org_id, change, actor, now)
        return change
    return (yield from write_change(d, org_id, change, actor, now))


def _finish(
    event: BillingEvent, org_id: str | None, status: str, reason: str | None, kept: str | None
) -> Step[None]:
    yield from execute(FINISH_EVENT, org_id, status, reason, kept, event.provider, event.event_id)


def apply_to_org(
    d: Dialect,
    org_id: str,
    event: BillingEvent,
    decide: Decide,
    now: datetime,
    redelivery: bool = False,
) -> Step[WebhookOutcome]:
    """Decide on the org's locked state and write the change; the event's row is claimed.
    A redelivery that is refused leaves the row as it was (its first delivery applied)."""
    actor = f"webhook:{event.provider}"
    change = yield from checked(d, org_id, decide, f"{event.provider} {event.event_id}")
    assert change is not None  # billing_customers references orgs
    if change.refused is not None:
        yield from write_audit(d, org_id, change, actor, now)
        if not redelivery:
            yield from _finish(event, org_id, "refused", change.refused, None)
        return WebhookOutcome("refused", org_id, change)
    applied = yield from write_change(d, org_id, change, actor, now)
    yield from _finish(event, org_id, "applied", event_reason(applied), None)
    return WebhookOutcome("applied", org_id, applied)


def apply_billing_event(
    d: Dialect, event: BillingEvent, decide: Decide, now: datetime, redelivered: Decide | None
) -> Step[WebhookOutcome]:
    key = (event.provider, event.event_id)
    claim = (*key, d.stamp(now), event.type, event.customer_id, d.stamp(event.occurred_at))
    if (yield from execute(CLAIM_EVENT, *claim)) == 0:
        if redelivered is not None:
            org_id = yield from value(TAKE_PLAN_REFUSED, *key, PLAN_REFUSED)
            if org_id is not None:
                step = apply_to_org(d, org_id, event, redelivered, now, redelivery=True)
                return (yield from step)
        return WebhookOutcome("duplicate", None, None)
    if event.customer_id is None:
        yield from _finish(event, None, "unknown_customer", None, None)
        return WebhookOutcome("unknown_customer", None, None)
    customer = (event.provider, event.customer_id)
    org_id = yield from value(CUSTOMER_ORG, *customer)
    if org_id is None and d.lock_customer is not None:
        # Read again under the customer's lock: a link committing meanwhile is seen.
        yield from execute(d.lock_customer, *customer)
        org_id = yield from value(CUSTOMER_ORG, *customer)
    if org_id is None:
        yield from _finish(event, None, "unlinked", None, event_json(event))
        return WebhookOutcome("unlinked", None, None)
    return (yield from apply_to_org(d, org_id, event, decide, now))


def unlinked_events(d: Dialect, provider: str, customer_id: str) -> Step[list[str]]:
    """The events kept for a customer now linked, in the provider's order; [] if unlinked."""
    if (yield from value(CUSTOMER_ORG, provider, customer_id)) is None:
        return []
    found = yield from rows(
        # The dialect's own column, never input.
        "SELECT event_id FROM webhook_events"  # noqa: S608
        " WHERE provider = ? AND customer_id = ? AND status = 'unlinked'"
        f" ORDER BY occurred_at, {d.event_order}",
        provider,
        customer_id,
    )
    return [row[0] for row in found]


def apply_unlinked(
    d: Dialect,
    provider: str,
    customer_id: str,
    event_id: str,
    decide: DecideEvent,
    now: datetime,
) -> Step[WebhookOutcome | None]:
    """One kept event applied to its customer's org; None when it is no longer unlinked."""
    kept = yield from value(TAKE_UNLINKED, provider, event_id)
    if kept is None:
        return None
    event = event_from_json(kept)
    org_id = yield from value(CUSTOMER_ORG, provider, customer_id)
    if org_id is None:
        return None
    return (yield from apply_to_org(d, org_id, event, decide(event), now))


def orgs_to_reconcile() -> Step[list[str]]:
    found = yield from rows(
        """SELECT org_id FROM billing_state WHERE payment_status = 'past_due'
        UNION SELECT org_id FROM billing_suspensions WHERE suspended_at IS NOT NULL
        ORDER BY 1"""
    )
    return [row[0] for row in found]


def webhook_events(d: Dialect, limit: int) -> Step[list[dict[str, object]]]:
    found = yield from rows(
        "SELECT provider, event_id, type, org_id, status, reason, received_at"  # noqa: S608
        f" FROM webhook_events ORDER BY received_at DESC, {d.event_order} DESC"
        " LIMIT ?",
        max(0, limit),
    )
    names = ("provider", "event_id", "type", "org_id", "status", "reason", "received_at")
    return [
        {**dict(zip(names, row, strict=True)), "received_at": iso_of(d, row[6])} for row in found
    ]
