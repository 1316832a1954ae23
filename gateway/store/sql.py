"""SQL written once: the algorithms both SQL backends share, over the seam of ``seam``.

``SQLSteps`` gives a backend every store method that is the same SQL on SQLite and
PostgreSQL (orgs and keys, billing, leases, export cursors, usage reads); the backend says
only how a step runs in a read or a write transaction, and its ``Dialect``. What stays per
backend is what is atomic differently: reserve, commit, heartbeat, release, live holders,
quota snapshots and reservation upserts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from gateway.errors import StoreError
from gateway.store import sql_billing, sql_history, sql_notify, sql_orgs, sql_plans, sql_stale
from gateway.store.records import (
    PRUNE_INTERVAL_SECONDS,
    Decide,
    DecideEvent,
    KeyRecord,
    Notification,
    OrgChanges,
    OrgRecord,
    WebhookOutcome,
)
from gateway.store.seam import Dialect, Step, execute, rows, value
from policies.billing import BillingChange, BillingEvent, BillingState
from policies.entitlements import Plan
from policies.model import NO_LIMITS, Limits, OrgRouting

T = TypeVar("T")

log = logging.getLogger("gateway.store.sql")


# Free, expired or already the holder's: taken (or extended); else no row comes back.
ACQUIRE_LEASE = """INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
        WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
    RETURNING name"""

# The largest value recorded wins.
RECORD_EXPORT = """INSERT INTO usage_exports (org_id, provider, period_start, meter, value)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (org_id, provider, period_start, meter) DO UPDATE SET value = excluded.value
        WHERE usage_exports.value < excluded.value"""

# A row comes back only when the period is new or newer than the org's last one.
CLAIM_PERIOD = """INSERT INTO org_periods (org_id, period_start) VALUES (?, ?)
    ON CONFLICT (org_id) DO UPDATE SET period_start = excluded.period_start
        WHERE org_periods.period_start < excluded.period_start
    RETURNING org_id"""


def acquire_lease(name: str, holder: str, now: float, ttl: float) -> Step[bool]:
    return (yield from value(ACQUIRE_LEASE, name, holder, now + ttl, now)) is not None


def release_lease(name: str, holder: str) -> Step[None]:
    yield from execute("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)


def exported(org_id: str, provider: str, period_start: str) -> Step[dict[str, int]]:
    found = yield from rows(
        "SELECT meter, value FROM usage_exports"
        " WHERE org_id = ? AND provider = ? AND period_start = ?",
        org_id,
        provider,
        period_start,
    )
    return {meter: int(amount) for meter, amount in found}


def record_export(
    org_id: str, provider: str, period_start: str, meter: str, amount: int
) -> Step[None]:
    yield from execute(RECORD_EXPORT, org_id, provider, period_start, meter, amount)


def usage(org_id: str, period_start: str) -> Step[dict[str, int]]:
    found = yield from rows(
        "SELECT meter, used FROM usage_counters"
        " WHERE org_id = ? AND period_start = ? AND used IS NOT NULL",
        org_id,
        period_start,
    )
    return {meter: int(used) for meter, used in found}


def claim_period(org_id: str, period_start: str) -> Step[bool]:
    return (yield from value(CLAIM_PERIOD, org_id, period_start)) is not None


class SQLSteps:
    """Store methods written once over steps; a backend says how a step runs, and its
    ``dialect``. ``snapshot`` asks for one consistent read of several statements."""

    dialect: Dialect
    _next_prune = 0.0  # time.monotonic() of the next prune of applied batches

    async def _delete_old_batches(self) -> bool:
        """Delete applied batches past the retention, at most a limit; True if cut short."""
        raise NotImplementedError

    async def _prune_when_due(self) -> None:
        """Forget applied batches older than the retention, a bounded number at a time."""
        if time.monotonic() < self._next_prune:
            return
        try:
            cut_short = await self._delete_old_batches()
        except StoreError as exc:
            log.warning("could not prune applied batches: %s", exc)
            cut_short = False
        # A prune cut short at the limit goes on at the next heartbeat.
        pause = 0.0 if cut_short else PRUNE_INTERVAL_SECONDS
        self._next_prune = time.monotonic() + pause

    async def _read_step(self, doing: str, step: Step[T], *, snapshot: bool = False) -> T:
        raise NotImplementedError

    async def _write_step(self, doing: str, step: Step[T]) -> T:
        raise NotImplementedError

    # quota reads

    async def usage(self, org_id: str, period_start: str) -> dict[str, int]:
        return await self._read_step("usage", usage(org_id, period_start))

    async def claim_period(self, org_id: str, period_start: str) -> bool:
        return await self._write_step("claim period", claim_period(org_id, period_start))

    async def mark_stale(self, keys: Sequence[tuple[str, str]]) -> None:
        if keys:
            await self._write_step("mark stale", sql_stale.mark(keys))

    # usage history

    async def usage_history(
        self, org_id: str, meter: str, start: float, end: float
    ) -> list[tuple[int, int]]:
        return await self._read_step("history", sql_history.read(org_id, meter, start, end))

    async def prune_history(self, before: float) -> None:
        await self._write_step("prune history", sql_history.prune(before))

    # the notifications outbox

    async def claim_notification(
        self, event_id: str, claim: str, org_id: str, kind: str, url: str, body: str, now: float
    ) -> bool:
        step = sql_notify.claim(event_id, claim, org_id, kind, url, body, now)
        return await self._write_step("claim notification", step)

    async def due_notifications(self, now: float, lease: float, limit: int) -> list[Notification]:
        return await self._write_step("due notifications", sql_notify.due(now, lease, limit))

    async def notification_attempted(
        self, event_id: str, now: float, error: str | None, next_at: float | None
    ) -> None:
        step = sql_notify.attempted(event_id, now, error, next_at)
        await self._write_step("notification attempted", step)

    async def notifications(self, org_id: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._read_step("notifications", sql_notify.listed(org_id, limit))

    # orgs and keys

    # the plan catalog

    async def put_plan(self, plan: Plan) -> None:
        await self._write_step("put plan", sql_plans.put_plan(self.dialect, plan))

    async def get_plan(self, name: str) -> Plan | None:
        return await self._read_step("get plan", sql_plans.get_plan(name))

    async def list_plans(self) -> list[Plan]:
        return await self._read_step("list plans", sql_plans.list_plans())

    async def delete_plan(self, name: str) -> bool:
        return await self._write_step("delete plan", sql_plans.delete_plan(name))

    async def routing_for_key(self, key_hash: bytes) -> OrgRouting | None:
        return await self._read_step("routing", sql_orgs.routing_for_key(self.dialect, key_hash))

    async def create_org(
        self, name: str, limits: Limits, upstream: str | None, shadow: bool = False
    ) -> OrgRecord:
        step = sql_orgs.create_org(self.dialect, name, limits, upstream, shadow)
        return await self._write_step("create org", step)

    async def update_org(
        self,
        org_id: str,
        changes: OrgChanges,
        *,
        actor: str = "admin",
        reason: str | None = None,
    ) -> OrgRecord | None:
        step = sql_orgs.update_org(self.dialect, org_id, changes, actor, reason)
        return await self._write_step("update org", step)

    async def get_org(self, org_id: str) -> OrgRecord | None:
        step = sql_orgs.select_org(self.dialect, org_id)
        return await self._read_step("get org", step, snapshot=True)

    async def list_orgs(self, query: str | None = None, limit: int = 100) -> list[OrgRecord]:
        step = sql_orgs.list_orgs(self.dialect, query, limit)
        return await self._read_step("list orgs", step, snapshot=True)

    async def create_key(
        self,
        org_id: str,
        key_hash: bytes,
        *,
        name: str = "",
        limits: Limits = NO_LIMITS,
        actor: str = "admin",
        reason: str | None = None,
    ) -> KeyRecord | None:
        step = sql_orgs.create_key(self.dialect, org_id, key_hash, name, limits, actor, reason)
        return await self._write_step("create key", step)

    async def update_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        limit_changes: Mapping[str, int | None] | None = None,
        actor: str = "admin",
    ) -> KeyRecord | None:
        step = sql_orgs.update_key(self.dialect, key_id, name, limit_changes, actor)
        return await self._write_step("update key", step)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return await self._read_step("get key", sql_orgs.select_key(self.dialect, key_id))

    async def list_keys(self, org_id: str) -> list[KeyRecord]:
        return await self._read_step("list keys", sql_orgs.list_keys(self.dialect, org_id))

    async def revoke_key(
        self, key_id: str, *, actor: str = "admin", reason: str | None = None
    ) -> str | None:
        return await self._write_step(
            "revoke key", sql_orgs.revoke_key(self.dialect, key_id, actor, reason)
        )

    async def set_suspension(
        self, org_id: str, suspended: bool, reason: str | None, *, actor: str = "admin"
    ) -> OrgRecord | None:
        step = sql_orgs.set_suspension(self.dialect, org_id, suspended, reason, actor)
        return await self._write_step("set suspension", step)

    async def set_billing_customers(
        self, org_id: str, customers: Mapping[str, str], *, actor: str = "admin"
    ) -> OrgRecord | None:
        step = sql_orgs.set_billing_customers(self.dialect, org_id, customers, actor)
        return await self._write_step("set billing customers", step)

    async def billing_orgs(self) -> list[tuple[str, dict[str, str]]]:
        return await self._read_step("billing orgs", sql_orgs.billing_orgs())

    # billing

    async def billing_state(self, org_id: str) -> BillingState | None:
        return await self._read_step(
            "billing state", sql_billing.billing_state(self.dialect, org_id)
        )

    async def balance(self, org_id: str) -> int:
        return await self._read_step("balance", sql_billing.balance(org_id))

    async def apply_billing_event(
        self,
        event: BillingEvent,
        decide: Decide,
        now: datetime,
        redelivered: Decide | None = None,
    ) -> WebhookOutcome:
        step = sql_billing.apply_billing_event(self.dialect, event, decide, now, redelivered)
        return await self._write_step("apply billing event", step)

    async def apply_unlinked_events(
        self, provider: str, customer_id: str, decide: DecideEvent, now: datetime
    ) -> list[WebhookOutcome]:
        pending = await self._read_step(
            "unlinked events", sql_billing.unlinked_events(self.dialect, provider, customer_id)
        )
        outcomes: list[WebhookOutcome] = []
        for event_id in pending:
            step = sql_billing.apply_unlinked(
                self.dialect, provider, customer_id, event_id, decide, now
            )
            if (outcome := await self._write_step("apply unlinked event", step)) is not None:
                outcomes.append(outcome)
        return outcomes

    async def update_billing(
        self,
        org_id: str,
        decide: Decide,
        *,
        actor: str,
        now: datetime,
        known_plan: bool = False,
    ) -> BillingChange | None:
        step = sql_billing.update_billing(self.dialect, org_id, decide, actor, now, known_plan)
        return await self._write_step("update billing", step)

    async def orgs_to_reconcile(self) -> list[str]:
        return await self._read_step("orgs to reconcile", sql_billing.orgs_to_reconcile())

    async def webhook_events(self, limit: int = 100) -> list[dict[str, object]]:
        step = sql_billing.webhook_events(self.dialect, limit)
        return await self._read_step("webhook events", step)

    async def audit_log(
        self, org_id: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]:
        step = sql_orgs.audit_log(self.dialect, org_id, limit)
        return await self._read_step("audit log", step)

    # one-leader work and usage export

    async def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        return await self._write_step("acquire lease", acquire_lease(name, holder, now, ttl))

    async def release_lease(self, name: str, holder: str) -> None:
        await self._write_step("release lease", release_lease(name, holder))

    async def exported(self, org_id: str, provider: str, period_start: str) -> dict[str, int]:
        return await self._read_step("exported", exported(org_id, provider, period_start))

    async def record_export(
        self, org_id: str, provider: str, period_start: str, meter: str, value: int
    ) -> None:
        step = record_export(org_id, provider, period_start, meter, value)
        await self._write_step("record export", step)
