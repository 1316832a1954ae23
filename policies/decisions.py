"""Gate decisions: what the data plane answers for a request, as plain values.

Every refusal carries a stable error code that clients and SDKs can rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from policies.model import MICROS_PER_MINOR, OrgRouting, scope_of
from policies.money import spent_minor


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the gateway will not forward: HTTP status, stable code and details."""

    status: int
    code: str
    retry_after: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def retryable(self) -> bool:
        return self.retry_after is not None

    def body(self) -> dict[str, Any]:
        return {"error": self.code, **self.detail}

    @property
    def message(self) -> str:
        """A sentence for people reading an exporter's log; the code is for programs."""
        return describe(self)


INVALID_INGEST_KEY = Refusal(401, "invalid_ingest_key")
BILLING_SUSPENDED = Refusal(402, "billing_suspended")


def store_unavailable(retry_after: int = 1) -> Refusal:
    return Refusal(503, "store_unavailable", retry_after=retry_after)


def suspension_refusal(routing: OrgRouting) -> Refusal | None:
    """Suspended orgs and orgs whose payment is blocked may not send; ``past_due`` alone may."""
    if routing.suspended or routing.payment_status == "blocked":
        return BILLING_SUSPENDED
    return None


def usage_exceeded(
    meter: str, limit: int, used: int, resets_at: datetime, overage: int = 0
) -> Refusal:
    if meter == "credit":
        # The credit meter counts millionths of a minor unit; clients see minor units.
        # The limit is everything ever credited; what is left rounds down, as spending rounds up.
        return Refusal(
            402,
            "prepaid_credit_exhausted",
            detail={
                "balance_minor": max(0, limit - used) // MICROS_PER_MINOR,
                "credited_minor": limit // MICROS_PER_MINOR,
                "used_minor": spent_minor(used),
            },
        )
    return Refusal(
        402,
        "usage_limit_exceeded",
        detail={
            **_scoped(meter),
            "limit": limit,
            **({"overage": overage} if overage else {}),
            "used": used,
            "resets_at": resets_at.isoformat().replace("+00:00", "Z"),
        },
    )


def _scoped(meter: str) -> dict[str, str]:
    """Which limit refused: the org's meter, or the key's (a key's meters are named under it)."""
    key_id, inner = scope_of(meter)
    if key_id is None:
        return {"meter": inner, "scope": "org"}
    return {"meter": inner, "scope": "key", "key_id": key_id}


def quota_held_elsewhere(meter: str) -> Refusal:
    """The store refused, but other gateway processes still hold unspent quota of the org,
    which they are asked to return: a retry soon succeeds, so this is 429, never a final 402."""
    detail = {**_scoped(meter), "held": "elsewhere"}
    return Refusal(429, "rate_limited", retry_after=1, detail=detail)


def rate_limited(meter: str, wait_seconds: float) -> Refusal:
    return Refusal(
        429,
        "rate_limited",
        retry_after=max(1, math.ceil(wait_seconds)),
        detail={"meter": meter},
    )


_SENTENCES = {
    "invalid_ingest_key": "the ingest key is missing, unknown or revoked",
    "billing_suspended": "the organization is suspended for billing",
    "method_not_allowed": "only POST is accepted here",
    "request_timeout": "the request body did not arrive in time",
    "store_unavailable": "the gateway cannot check this key right now; retry later",
    "upstream_unavailable": "the ingest backend is unavailable; retry later",
    "upstream_timeout": "the ingest backend did not answer in time",
}


def describe(refusal: Refusal) -> str:
    """The readable message of a refusal, from its code and details alone."""
    d = refusal.detail
    if refusal.code == "usage_limit_exceeded":
        return (
            f"usage limit exceeded: {d.get('meter')} {d.get('used')} of {d.get('limit')} "
            f"this period, resets {d.get('resets_at')}"
        )
    if refusal.code == "prepaid_credit_exhausted":
        return f"prepaid credit exhausted: balance {d.get('balance_minor')} (minor units)"
    if refusal.code == "rate_limited" and d.get("held") == "elsewhere":
        return (
            f"{d.get('meter')} quota is held by another gateway process and is being returned;"
            f" retry after {refusal.retry_after} s"
        )
    if refusal.code == "rate_limited":
        return f"rate limited on {d.get('meter')}; retry after {refusal.retry_after} s"
    if "message" in d:
        return f"{refusal.code.replace('_', ' ')}: {d['message']}"
    return _SENTENCES.get(refusal.code, refusal.code.replace("_", " "))
