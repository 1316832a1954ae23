"""The billing half of the in-memory fake: state, ledger, webhook events and the audit log.

``MemoryBilling`` is mixed into ``MemoryStore``, which holds the orgs and customers it reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from gateway.errors import Conflict
from gateway.store.normal import applied_change, event_reason, iso, ledger_refusal, utc
from gateway.store.records import (
    PLAN_REFUSED,
    Decide,
    DecideEvent,
    OrgRecord,
    WebhookOutcome,
    new_id,
)
from policies.billing import BillingChange, BillingEvent, BillingState
from policies.entitlements import Plan
from policies.notifications import billing_notice, event_body

Order = tuple[datetime, int]


class MemoryBilling:
    """Billing over dicts; every method runs without awaiting, so each is atomic."""

    orgs: dict[str, OrgRecord]
    plans: dict[str, Plan]
    _claim: Callable[[str, str, str, str, str, str, float], bool]  # MemoryNotifications
    # (provider, customer id) -> org
    customers: dict[tuple[str, str], str]

    def __init__(self) -> None:
        self.billing: dict[str, BillingState] = {}
        # idempotency key -> (org, amount in minor units)
        self.ledger: dict[str, tuple[str, int]] = {}
        self.balances: dict[str, int] = {}
        self.period_claims: set[tuple[str, datetime]] = set()
        # rows with their order: (time, sequence), newest last
        self.events: dict[tuple[str, str], tuple[Order, dict[str, object]]] = {}
        # (provider, event id) -> the parsed event, while its customer is linked to no org
        self.unlinked: dict[tuple[str, str], BillingEvent] = {}
        self.audit: list[tuple[Order, dict[str, object]]] = []
        self._seq = 0  # orders rows written at the same time, like a serial column

    def _audit(
        self,
        org_id: str,
        rows: list[tuple[str, str | None, str | None]],
        reason: str | None,
        actor: str,
        at: datetime,
    ) -> None:
        for field_name, old, new in rows:
            self._seq += 1
            row: dict[str, object] = {
                "at": iso(at),
                "entity": "org",
                "entity_id": org_id,
                "field": field_name,
                "old": old,
                "new": new,
                "reason": reason,
                "actor": actor,
            }
            self.audit.append(((utc(at), self._seq), row))

    async def billing_state(self, org_id: str) -> BillingState | None:
        if org_id not in self.orgs:
            return None
        return self.billing.get(org_id, BillingState())

    async def balance(self, org_id: str) -> int:
        return self.balances.get(org_id, 0)

    async def apply_billing_event(
        self,
        event: BillingEvent,
        decide: Decide,
        now: datetime,
        redelivered: Decide | None = None,
    ) -> WebhookOutcome:
        if (event.provider, event.event_id) in self.events:
            _, row = self.events[(event.provider, event.event_id)]
            org = row["org_id"]
            if redelivered is None or row["reason"] != PLAN_REFUSED or not isinstance(org, str):
                return WebhookOutcome("duplicate", None, None)
            outcome = self._apply(org, event, redelivered, now)
            if outcome.status == "applied":
                row.update(reason=event_reason(outcome.change))
            return outcome
        if event.customer_id is None:
            self._record_event(event, None, "unknown_customer", None, now)
            return WebhookOutcome("unknown_customer", None, None)
        org_id = self.customers.get((event.provider, event.customer_id))
        if org_id is None:
            self._record_event(event, None, "unlinked", None, now)
            self.unlinked[(event.provider, event.event_id)] = event
            return WebhookOutcome("unlinked", None, None)
        outcome = self._apply(org_id, event, decide, now)
        self._record_event(event, org_id, outcome.status, event_reason(outcome.change), now)
        return outcome

    async def apply_unlinked_events(
        self, provider: str, customer_id: str, decide: DecideEvent, now: datetime
    ) -> list[WebhookOutcome]:
        org_id = self.customers.get((provider, customer_id))
        if org_id is None:
            return []
        pending = sorted(
            (utc(event.occurred_at), self.events[key][0][1], key, event)
            for key, event in self.unlinked.items()
            if key[0] == provider and event.customer_id == customer_id
        )
        outcomes = []
        for _, _, key, event in pending:
            outcome = self._apply(org_id, event, decide(event), now)
            del self.unlinked[key]
            _, row = self.events[key]
            row.update(org_id=org_id, status=outcome.status, reason=event_reason(outcome.change))
            outcomes.append(outcome)
        return outcomes

    def _apply(
        self, org_id: str, event: BillingEvent, decide: Decide, now: datetime
    ) -> WebhookOutcome:
        # Nothing is written before decide returns: an exception leaves no trace.
        actor = f"webhook:{event.provider}"
        change = self._checked(org_id, decide, f"{event.provider} {event.event_id}")
        if change.refused is not None:
            self._write_audit(org_id, change, actor, now)
            return WebhookOutcome("refused", org_id, change)
        applied = self._write_change(org_id, change, actor, now)
        return WebhookOutcome("applied", org_id, applied)

    def _checked(self, org_id: str, decide: Decide, why: str) -> BillingChange:
        state = self.billing.get(org_id, BillingState())
        change = decide(state)
        if change.refused is not None:
            return change
        return ledger_refusal(state, change, self.balances.get(org_id, 0), why) or change

    async def update_billing(
        self,
        org_id: str,
        decide: Decide,
        *,
        actor: str,
        now: datetime,
        known_plan: bool = False,
    ) -> BillingChange | None:
        if org_id not in self.orgs:
            return None
        before = self.billing.get(org_id, BillingState())
        change = self._checked(org_id, decide, actor)
        moved = change.state.plan != before.plan
        if known_plan and change.refused is None and moved and change.state.plan not in self.plans:
            raise Conflict(f"plan {change.state.plan!r} is not in the catalog (deleted meanwhile?)")
        if change.refused is not None:
            self._write_audit(org_id, change, actor, now)
            return change
        return self._write_change(org_id, change, actor, now)

    def _write_change(
        self, org_id: str, change: BillingChange, actor: str, now: datetime
    ) -> BillingChange:
        claimed = False
        if change.new_period is not None:
            claim = (org_id, utc(change.new_period.start))
            claimed = claim not in self.period_claims
            self.period_claims.add(claim)
        applied = applied_change(change, claimed, org_id)
        before, after = self.billing.get(org_id, BillingState()), applied.state
        notice = billing_notice(
            org_id, before.suspended_at, after.suspended_at, after.suspension_reason
        )
        if notice is not None:  # into the outbox with the change, as the SQL stores do
            kind, once, data = notice
            event_id, moment = new_id("evt"), time.time()
            body = event_body(kind, event_id, moment, data)
            url = self.orgs[org_id].notify_url or ""
            self._claim(event_id, once, org_id, kind, url, body, moment)
        self.billing[org_id] = applied.state
        for entry in (*applied.credits, *applied.period_grants):
            if entry.idempotency_key in self.ledger:
                continue
            self.ledger[entry.idempotency_key] = (org_id, entry.amount_minor)
            self.balances[org_id] = self.balances.get(org_id, 0) + entry.amount_minor
        self._write_audit(org_id, applied, actor, now)
        return applied

    def _write_audit(self, org_id: str, change: BillingChange, actor: str, now: datetime) -> None:
        for audit in change.audit:
            self._audit(org_id, [(audit.field, audit.old, audit.new)], audit.reason, actor, now)

    def _record_event(
        self,
        event: BillingEvent,
        org_id: str | None,
        status: str,
        reason: str | None,
        now: datetime,
    ) -> None:
        self._seq += 1
        row: dict[str, object] = {
            "provider": event.provider,
            "event_id": event.event_id,
            "type": event.type,
            "org_id": org_id,
            "status": status,
            "reason": reason,
            "received_at": iso(now),
        }
        self.events[(event.provider, event.event_id)] = ((utc(now), self._seq), row)

    async def orgs_to_reconcile(self) -> list[str]:
        return sorted(
            org_id
            for org_id, state in self.billing.items()
            if state.payment_status == "past_due" or state.suspended_at is not None
        )

    async def webhook_events(self, limit: int = 100) -> list[dict[str, object]]:
        return _newest(list(self.events.values()), limit)

    async def audit_log(
        self, org_id: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]:
        rows = [row for row in self.audit if org_id is None or row[1]["entity_id"] == org_id]
        return _newest(rows, limit)


def _newest(rows: list[tuple[Order, dict[str, object]]], limit: int) -> list[dict[str, object]]:
    ordered = sorted(rows, key=lambda row: row[0], reverse=True)
    return [dict(row) for _, row in ordered[: max(0, limit)]]
