"""Operations on orgs and keys, shared by the admin API and the CLI.

Input arrives as parsed JSON (or CLI flags turned into the same shape) and is
validated here, so both front ends refuse the same things with the same messages.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gateway.admin.origins import UpstreamAllowlist, checked_notify_url, checked_upstream
from gateway.billing.webhooks import EventPolicy
from gateway.errors import BadRequest, Conflict, CustomerTaken, NotFound
from gateway.ingest.keys import KeyHasher, generate_key
from gateway.limits.budgets import CREDIT_PERIOD
from gateway.store.base import Store
from gateway.store.records import KeyRecord, OrgChanges, OrgRecord
from policies import money
from policies.billing import AuditEntry, BillingChange, BillingState, manual_unsuspend
from policies.entitlements import EntitlementError, Plan, parse_plan
from policies.model import (
    PLAN_VALUE,
    SENT_METERS,
    SIGNAL_METERS,
    LimitChange,
    Limits,
    Period,
    Prices,
    key_meter,
    lock_order,
)
from policies.periods import period_for

log = logging.getLogger("gateway.admin.orgs")

MAX_INT = 2**63 - 1  # every store keeps these in a signed 64-bit column
MAX_PRICE = 10**9  # minor units per million units
LIMIT_NAMES = ("requests", "bytes", "items", "rate_requests", "rate_bytes")


def org_json(org: OrgRecord, billing: BillingState | None = None) -> dict[str, Any]:
    """An org as the API shows it; ``suspended`` is the admin's suspension, ``billing_*`` the
    billing one (the reconciler's or a provider's), which blocks ingest just the same."""
    return {
        "id": org.id,
        "name": org.name,
        "plan": org.plan,
        "limits": org.limits.overrides(),
        "effective_limits": org.effective_limits.as_dict(),
        "upstream": org.upstream,
        "notify_url": org.notify_url,
        "partial_admission": org.partial_admission,
        "suspended": org.suspended,
        "suspension_reason": org.suspension_reason,
        "billing_suspended": _billing_blocked(org),
        "billing_suspension_reason": _billing_reason(org, billing),
        "payment_status": org.payment_status,
        "shadow": org.shadow,
        "prices": org.prices.as_dict(),
        "block_over_balance": org.prices.block_over_balance,
        "billing_customers": dict(org.billing_customers),
    }


def _billing_blocked(org: OrgRecord) -> bool:
    """Refused for billing: suspended by the reconciler, or a payment the provider blocked."""
    return org.billing_suspended or org.payment_status == "blocked"


def _billing_reason(org: OrgRecord, billing: BillingState | None) -> str | None:
    if org.billing_suspended and billing is not None and billing.suspension_reason:
        return billing.suspension_reason
    if org.payment_status == "blocked":
        return "payment blocked by the provider"
    return None


def billing_json(state: BillingState, balance_minor: int) -> dict[str, Any]:
    period = state.period
    return {
        "payment_status": state.payment_status,
        "plan": state.plan,
        "period_start": _iso(period.start) if period else None,
        "period_end": _iso(period.end) if period else None,
        "cancel_at_period_end": state.cancel_at_period_end,
        "overdue_since": _iso(state.overdue_since) if state.overdue_since else None,
        "suspended_at": _iso(state.suspended_at) if state.suspended_at else None,
        "suspension_reason": state.suspension_reason,
        "never_paid": state.never_paid,
        "balance_minor": balance_minor,
    }


def _limits(raw: object, *, key: bool = False) -> dict[str, LimitChange]:
    """Limit changes, checked: ``{meter: int | null}``; an org's may set its rates too, a
    key's not (a key's rate is its org's). For an org, null is unlimited whatever its plan
    and ``"plan"`` drops the override; for a key, null lifts its own limit. Applied in the
    store's transaction."""
    if not isinstance(raw, Mapping):
        raise BadRequest("limits must be an object")
    allowed = (set(SENT_METERS) if key else set(LIMIT_NAMES)) | SIGNAL_METERS
    unknown = set(raw) - allowed
    if unknown:
        what = "key limits" if key else "limits"
        raise BadRequest(f"unknown {what}: {', '.join(sorted(map(str, unknown)))}")
    changes: dict[str, LimitChange] = {}
    for name, value in raw.items():
        if value is None or (value == PLAN_VALUE and not key):
            changes[name] = value
            continue
        if type(value) is not int or not 0 <= value <= MAX_INT:
            also = "" if key else ', "plan"'
            raise BadRequest(f"limits.{name} must be an integer from 0 to 2**63-1, null{also}")
        if name.startswith("rate_") and value < 1:
            raise BadRequest(f"limits.{name} must be at least 1 (null lifts it)")
        changes[name] = value
    return changes


def _key_limits(raw: object) -> dict[str, int | None]:
    return {m: v for m, v in _limits(raw, key=True).items() if not isinstance(v, str)}


def _name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 200 or not raw.isprintable():
        raise BadRequest("name must be a non-empty string of at most 200 printable characters")
    return raw.strip()


def _body(raw: object, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise BadRequest("the body must be a JSON object")
    unknown = set(raw) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    return raw


_ORG_FIELDS = {"name", "limits", "upstream", "shadow"}
_PATCH_FIELDS = _ORG_FIELDS | {
    "prices",
    "block_over_balance",
    "billing_customers",
    "plan",
    "notify_url",
    "partial_admission",
}
EVERY_ORG = "*"  # the invalidation that drops every org's routing
PROVIDERS = ("stripe", "autumn", "paddle")


def _prices(raw: Mapping[str, Any], base: Prices) -> Prices:
    prices = raw.get("prices", {})
    if not isinstance(prices, Mapping):
        raise BadRequest("prices must be an object")
    unknown = set(prices) - set(SENT_METERS)
    if unknown:
        raise BadRequest(f"unknown prices: {', '.join(sorted(map(str, unknown)))}")
    changes: dict[str, Any] = {}
    for name, value in prices.items():
        # Bounded so that a price times a 64 MiB batch still fits a 64-bit counter.
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_PRICE):
            raise BadRequest(f"prices.{name} must be an integer from 0 to {MAX_PRICE}")
        changes[name] = value
    if "block_over_balance" in raw:
        if not isinstance(raw["block_over_balance"], bool):
            raise BadRequest("block_over_balance must be a boolean")
        changes["block_over_balance"] = raw["block_over_balance"]
    return replace(base, **changes)


def _customers(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise BadRequest("billing_customers must be an object")
    unknown = set(raw) - set(PROVIDERS)
    if unknown:
        raise BadRequest(f"unknown billing providers: {', '.join(sorted(map(str, unknown)))}")
    for provider, customer in raw.items():
        if not isinstance(customer, str) or not customer.strip() or len(customer) > 200:
            raise BadRequest(f"billing_customers.{provider} must be a non-empty string")
    return {str(k): str(v).strip() for k, v in raw.items()}


class OrgAdmin:
    """``event_policy`` decides the provider events kept for a customer before it was
    linked; it must be the webhook endpoint's (``EventPolicy.from_settings``). Without one,
    linking applies nothing and the events stay unlinked until a link that has one."""

    def __init__(
        self,
        store: Store,
        hasher: KeyHasher,
        invalidate: Callable[[str], Awaitable[None]] | None = None,
        allowlist: UpstreamAllowlist | None = None,
        event_policy: EventPolicy | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.allowlist = allowlist or UpstreamAllowlist()
        self.event_policy = event_policy
        self._invalidate = invalidate

    async def invalidate(self, org_id: str) -> None:
        """Every replica drops the org's cached routing (and this one its local budgets)."""
        if self._invalidate is not None:
            await self._invalidate(org_id)

    async def create_org(self, raw: object) -> OrgRecord:
        body = _body(raw, _ORG_FIELDS)
        if "name" not in body:
            raise BadRequest("name is required")
        shadow = body.get("shadow", False)
        if not isinstance(shadow, bool):
            raise BadRequest("shadow must be a boolean")
        return await self.store.create_org(
            _name(body["name"]),
            Limits().overridden(_limits(body.get("limits", {}))),
            checked_upstream(body.get("upstream"), self.allowlist),
            shadow,
        )

    async def update_org(self, org_id: str, raw: object) -> OrgRecord:
        body = _body(raw, _PATCH_FIELDS)
        current = await self._org(org_id)
        customers = _customers(body["billing_customers"]) if "billing_customers" in body else None
        priced = "prices" in body or "block_over_balance" in body
        shadow = body.get("shadow")
        if shadow is not None and not isinstance(shadow, bool):
            raise BadRequest("shadow must be a boolean")
        partial = body.get("partial_admission")
        if partial is not None and not isinstance(partial, bool):
            raise BadRequest("partial_admission must be a boolean, or null for the gateway's")
        changes = OrgChanges(
            name=_name(body["name"]) if "name" in body else None,
            limit_changes=_limits(body["limits"]) if "limits" in body else None,
            upstream=checked_upstream(body.get("upstream"), self.allowlist),
            set_upstream="upstream" in body,
            shadow=shadow,
            prices=_prices(body, current.prices) if priced else None,
            notify_url=checked_notify_url(body.get("notify_url"), self.allowlist),
            set_notify_url="notify_url" in body,
            partial_admission=partial,
            set_partial_admission="partial_admission" in body,
        )
        if "plan" in body:
            await self._known_plan(body["plan"])  # refused before anything is written
        try:
            # The customer link first: taken by another org, it is refused (409) with nothing
            # of this PATCH written; past it, each step's change is sent to every replica.
            if customers:
                try:
                    linked = await self.store.set_billing_customers(org_id, customers)
                except CustomerTaken as exc:
                    raise Conflict("a billing customer id is linked to another org") from exc
                if linked is None:
                    raise NotFound(org_id)
            org = await self.store.update_org(org_id, changes)
            if org is None:
                raise NotFound(org_id)
            if "plan" in body:
                org = await self._set_plan(org, body["plan"])
            if customers and await self._apply_unlinked(org_id, customers):
                org = await self._org(org_id)
        finally:
            await self.invalidate(org_id)
        return org

    async def _apply_unlinked(self, org_id: str, customers: Mapping[str, str]) -> bool:
        """The events each customer had before this link; True when any was applied.

        Every customer of the body, changed or not: linking again finishes a link whose
        events were not all applied (the store failed half-way)."""
        if self.event_policy is None:
            return False
        policy = self.event_policy.with_catalog(await self.store.list_plans())
        moment = datetime.now(UTC)
        any_applied = False
        for provider, customer in customers.items():
            outcomes = await self.store.apply_unlinked_events(
                provider, customer, lambda event: policy.decide(event, moment), moment
            )
            applied = sum(outcome.status == "applied" for outcome in outcomes)
            if outcomes:
                log.info(
                    "%s events from before the link, applied to %s: %d, refused: %d",
                    provider,
                    org_id,
                    applied,
                    len(outcomes) - applied,
                )
            any_applied = any_applied or applied > 0
        return any_applied

    async def _org(self, org_id: str) -> OrgRecord:
        org = await self.store.get_org(org_id)
        if org is None:
            raise NotFound(org_id)
        return org

    async def get_org(self, org_id: str) -> OrgRecord:
        return await self._org(org_id)

    async def org_view(self, org: OrgRecord) -> dict[str, Any]:
        """The org's JSON with its billing suspension's reason, when it has one."""
        billing = await self.store.billing_state(org.id) if _billing_blocked(org) else None
        return org_json(org, billing)

    async def create_key(self, org_id: str, raw: object = None) -> tuple[KeyRecord, str]:
        body = _body({} if raw is None else raw, {"name", "limits"})
        name = _key_name(body.get("name", ""))
        limits = Limits().patched(_key_limits(body.get("limits", {})))
        key = generate_key()
        record = await self.store.create_key(org_id, self.hasher(key), name=name, limits=limits)
        if record is None:
            raise NotFound(org_id)
        return record, key

    async def update_key(self, key_id: str, raw: object) -> KeyRecord:
        body = _body(raw, {"name", "limits"})
        name = _key_name(body["name"]) if "name" in body else None
        changes = _key_limits(body["limits"]) if "limits" in body else None
        if (await self.key(key_id)).revoked:
            raise Conflict("the key is revoked: create a new one")
        record = await self.store.update_key(key_id, name=name, limit_changes=changes)
        if record is None:
            raise NotFound(key_id)
        await self.invalidate(record.org_id)  # its limits are in its org's cached routing
        return record

    async def list_keys(self, org_id: str) -> list[KeyRecord]:
        await self._org(org_id)
        return await self.store.list_keys(org_id)

    async def key_usage(self, key_id: str, period: Period) -> dict[str, Any]:
        """A key's usage in the shape of its org's: the org's counters named under the key."""
        key = await self.key(key_id)
        prefix = key_meter(key.id, "")
        counters = await self.store.usage(key.org_id, period.key)
        own = {m.removeprefix(prefix): n for m, n in counters.items() if m.startswith(prefix)}
        return {"key_id": key.id, "org_id": key.org_id, **_usage_view(period, own, key.limits)}

    async def _known_plan(self, raw: object) -> str:
        if not isinstance(raw, str) or await self.store.get_plan(raw) is None:
            raise BadRequest("plan must be the name of a plan in the catalog (GET /admin/plans)")
        return raw

    async def _set_plan(self, org: OrgRecord, raw: object) -> OrgRecord:
        raw = await self._known_plan(raw)
        if raw != org.plan:
            entry = AuditEntry("plan", org.plan, raw, "set by the admin API")

            def decide(state: BillingState) -> BillingChange:
                return BillingChange(replace(state, plan=raw), audit=(entry,))

            await self.store.update_billing(
                org.id, decide, actor="admin", now=datetime.now(UTC), known_plan=True
            )
        return await self._org(org.id)

    async def put_plan(self, name: str, raw: object) -> Plan:
        try:
            plan = parse_plan(name, raw)
        except EntitlementError as exc:
            raise BadRequest(str(exc)) from exc
        await self.store.put_plan(plan)
        await self.invalidate(EVERY_ORG)  # at once on every org on it, on every replica
        return plan

    async def apply_plans(self, wanted: Mapping[str, object]) -> dict[str, list[str]]:
        """Make the catalog match ``wanted`` (name -> body): every body is checked before
        anything is written; a plan not wanted is deleted unless an org is on it."""
        try:
            plans = [parse_plan(name, body) for name, body in wanted.items()]
        except EntitlementError as exc:
            raise BadRequest(str(exc)) from exc
        for plan in plans:
            await self.store.put_plan(plan)
        deleted, in_use = [], []
        for plan in await self.store.list_plans():
            if plan.name in wanted:
                continue
            try:
                await self.store.delete_plan(plan.name)
                deleted.append(plan.name)
            except Conflict:
                in_use.append(plan.name)
        await self.invalidate(EVERY_ORG)
        return {"applied": sorted(wanted), "deleted": deleted, "kept_in_use": in_use}

    async def plan(self, name: str) -> Plan:
        plan = await self.store.get_plan(name)
        if plan is None:
            raise NotFound(name)
        return plan

    async def delete_plan(self, name: str) -> None:
        if not await self.store.delete_plan(name):
            raise NotFound(name)

    async def key(self, key_id: str) -> KeyRecord:
        key = await self.store.get_key(key_id)
        if key is None:
            raise NotFound(key_id)
        return key

    async def revoke_key(self, key_id: str) -> None:
        org_id = await self.store.revoke_key(key_id)
        if org_id is None:
            raise NotFound(key_id)
        await self.invalidate(org_id)

    async def set_suspension(self, org_id: str, raw: object) -> OrgRecord:
        body = _body(raw, {"suspended", "reason"})
        suspended = body.get("suspended")
        reason = body.get("reason")
        if not isinstance(suspended, bool):
            raise BadRequest("suspended must be a boolean")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            raise BadRequest("reason must be a string of at most 500 characters")
        org = await self.store.set_suspension(org_id, suspended, reason)
        if org is None:
            raise NotFound(org_id)
        if not suspended:
            # Lifting also ends a billing suspension; its overdue clock starts again.
            moment = datetime.now(UTC)
            why = reason or "manual unsuspend"
            await self.store.update_billing(
                org_id, lambda s: manual_unsuspend(s, moment, why), actor="admin", now=moment
            )
            org = await self._org(org_id)
        await self.invalidate(org_id)
        return org

    async def billing(self, org_id: str) -> dict[str, Any]:
        await self._org(org_id)
        state = await self.store.billing_state(org_id) or BillingState()
        credited = await self.store.balance(org_id)
        spent = (await self.store.usage(org_id, CREDIT_PERIOD.key)).get("credit", 0)
        return billing_json(state, money.balance_minor(credited, spent))

    async def period(self, org_id: str, now: datetime) -> Period:
        state = await self.store.billing_state(org_id)
        return period_for(now, state.period if state else None)

    async def usage(self, org_id: str, period: Period) -> dict[str, Any]:
        org = await self._org(org_id)
        counters = await self.store.usage(org_id, period.key)
        shadow = {m: counters.get(f"shadow_refused:{m}", 0) for m in ("requests", "bytes", "items")}
        view = _usage_view(period, counters, org.effective_limits)
        return {**view, "shadow_refused": shadow}


def _usage_view(period: Period, counters: Mapping[str, int], limits: Limits) -> dict[str, Any]:
    """Period, totals, limits and every meter with usage or a limit (the totals always)."""
    configured = limits.as_dict()
    used = {m for m, n in counters.items() if n}
    shown = set(SENT_METERS) | ((used | set(configured)) & SIGNAL_METERS)
    return {
        "period_start": _iso(period.start),
        "period_end": _iso(period.end),
        "usage": {m: counters.get(m, 0) for m in SENT_METERS},
        "limits": configured,
        "meters": {m: _meter_view(m, counters.get(m, 0), limits) for m in lock_order(shown)},
    }


def _meter_view(meter: str, used: int, limits: Limits) -> dict[str, Any]:
    """Used and limit; with an overage cap, the cap and how much of it is used."""
    limit = limits.base_limit(meter)
    view: dict[str, Any] = {"used": used, "limit": limit}
    if limit is not None and meter in dict(limits.overage):
        view["overage"] = limits.overage_cap(meter)
        view["overage_used"] = max(0, used - limit)
    return view


def key_json(key: KeyRecord) -> dict[str, Any]:
    return {
        "id": key.id,
        "org_id": key.org_id,
        "name": key.name,
        "limits": key.limits.as_dict(),
        "created_at": _iso(key.created_at),
        "revoked": key.revoked,
    }


def _key_name(raw: object) -> str:
    if not isinstance(raw, str) or len(raw) > 200 or not raw.isprintable():
        raise BadRequest("name must be a string of at most 200 printable characters")
    return raw


def _iso(moment: Any) -> str:
    return str(moment.isoformat()).replace("+00:00", "Z")
