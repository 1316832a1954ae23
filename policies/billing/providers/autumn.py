"""Autumn webhooks, delivered by Svix: ``billing.updated`` and its plan changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from policies.billing import fields
from policies.billing.model import BillingEvent, MalformedEvent
from policies.model import Period


@dataclass(frozen=True, slots=True)
class _PlanChange:
    action: str
    plan_id: str
    status: str | None
    past_due: bool
    period: Period | None
    moments: tuple[datetime, ...]  # timestamps of things that already happened

    @property
    def expired(self) -> bool:
        return "expired" in (self.action, self.status)


def _millis(value: object, path: str) -> datetime:
    return fields.epoch(value, path, millis=True)


def _plan_change(change: Mapping[str, Any], path: str) -> _PlanChange:
    sub = fields.obj(change.get("subscription"), f"{path}.subscription")
    sub_path = f"{path}.subscription"
    moments = tuple(
        _millis(sub[key], f"{sub_path}.{key}")
        for key in ("started_at", "current_period_start")
        if sub.get(key) is not None
    )
    period = fields.period_of(
        sub, ("current_period_start", "current_period_end"), sub_path, _millis
    )
    return _PlanChange(
        action=fields.text(change, "action", f"{path}.action"),
        plan_id=fields.text(sub, "plan_id", f"{sub_path}.plan_id"),
        status=fields.opt_text(sub, "status", f"{sub_path}.status"),
        past_due=bool(fields.opt_flag(sub, "past_due", f"{sub_path}.past_due")),
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
    payload = fields.obj(payload, "event")
    type_ = fields.text(payload, "type", "type")
    stamp_key = "occurred_at" if payload.get("occurred_at") is not None else "timestamp"
    stamp = payload.get(stamp_key)
    stamped = None if stamp is None else _millis(stamp, stamp_key)
    if type_ != "billing.updated":
        return BillingEvent("autumn", message_id, type_, "ignored", None, stamped or fields.EPOCH)
    data = fields.obj(payload.get("data"), "data")
    raw = fields.items(data.get("plan_changes"), "data.plan_changes")
    changes = [_plan_change(c, f"data.plan_changes[{i}]") for i, c in enumerate(raw)]
    live = [c for c in changes if not c.expired]
    current = next((c for c in live if c.action in ("activated", "updated")), None)
    ended = next((c for c in changes if c.expired), None)
    if current is not None:
        plan, status, period = current.plan_id, current.status, current.period
    elif ended is not None:
        plan, status, period = ended.plan_id, "expired", None
    else:
        plan, status, period = None, None, None
    occurred_at = stamped or max((m for c in changes for m in c.moments), default=fields.EPOCH)
    return BillingEvent(
        "autumn",
        message_id,
        type_,
        "past_due_changed",
        fields.text(data, "customer_id", "data.customer_id"),
        occurred_at,
        subscription_status=status,
        plan=plan,
        period=period,
        past_due=any(c.past_due for c in live),
    )
