"""Gate decisions: what the data plane answers for a request, as plain values.

Every refusal carries a stable error code that clients and SDKs can rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from policies.model import MICROS_PER_MINOR, OrgRouting


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


INVALID_INGEST_KEY = Refusal(401, "invalid_ingest_key")
BILLING_SUSPENDED = Refusal(402, "billing_suspended")


def store_unavailable(retry_after: int = 1) -> Refusal:
    return Refusal(503, "store_unavailable", retry_after=retry_after)


def suspension_gate(routing: OrgRouting) -> Refusal | None:
    """Suspended orgs and orgs whose payment is blocked may not send; ``past_due`` alone may."""
    if routing.suspended or routing.payment_status == "blocked":
        return BILLING_SUSPENDED
    return None


def usage_exceeded(meter: str, limit: int, used: int, resets_at: datetime) -> Refusal:
    if meter == "credit":
        # The credit meter counts millionths of a minor unit; clients see minor units.
        return Refusal(
            402,
            "prepaid_credit_exhausted",
            detail={
                "balance_minor": limit // MICROS_PER_MINOR,
                "used_minor": -(-used // MICROS_PER_MINOR),
            },
        )
    return Refusal(
        402,
        "usage_limit_exceeded",
        detail={
            "meter": meter,
            "limit": limit,
            "used": used,
            "resets_at": resets_at.isoformat().replace("+00:00", "Z"),
        },
    )


def rate_limited(meter: str, wait_seconds: float) -> Refusal:
    return Refusal(
        429,
        "rate_limited",
        retry_after=max(1, math.ceil(wait_seconds)),
        detail={"meter": meter},
    )
