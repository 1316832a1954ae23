"""Usage notifications, the pure part: which thresholds a meter has crossed, what an event
says, when a failed delivery is tried again, and how a delivery is signed (Standard Webhooks).

An event is claimed once per (org, key, meter, period, type, threshold) across replicas; its
id is its ``webhook-id`` on every attempt, so a receiver can drop a repeat.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime

THRESHOLD = "usage.threshold"
LIMIT_REACHED = "usage.limit_reached"
FORECAST = "usage.forecast"
BILLING_SUSPENDED = "billing.suspended"
BILLING_UNSUSPENDED = "billing.unsuspended"
#: Deliveries are retried this long after the event, then given up (counted as failed).
GIVE_UP_SECONDS = 24 * 3600
FIRST_RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 3600.0


class NotificationError(ValueError):
    """A setting that cannot be used (the message says which)."""


def parse_thresholds(raw: str) -> tuple[int, ...]:
    """``50,80,100``: whole percents from 1 to 1000, sorted, each once."""
    try:
        found = sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError:
        raise NotificationError(
            "GATEWAY_NOTIFY_THRESHOLDS: whole percents, e.g. 50,80,100"
        ) from None
    if not found or not all(1 <= t <= 1000 for t in found):
        raise NotificationError("GATEWAY_NOTIFY_THRESHOLDS: percents from 1 to 1000")
    return tuple(found)


def crossed(used: int, limit: int, thresholds: tuple[int, ...]) -> tuple[int, ...]:
    """The thresholds (percent of ``limit``) that ``used`` has reached; a limit of 0 is
    reached by any use."""
    if limit <= 0:
        return thresholds if used > 0 else ()
    return tuple(t for t in thresholds if used * 100 >= t * limit)


def retry_delay(attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: 5 s, doubling, at most an hour."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True, slots=True)
class Crossing:
    """One event to claim: its kind, scope, meter, period and threshold (100 at a refusal)."""

    type: str
    org_id: str
    key_id: str | None
    meter: str
    period_start: str
    period_end: str
    threshold: int
    used: int
    limit: int
    forecast_exhausted_at: str | None = None

    @property
    def claim(self) -> str:
        """What makes it once: the same crossing from any replica is the same claim."""
        scope = self.key_id or ""
        return "|".join(
            (self.type, self.org_id, scope, self.meter, self.period_start, str(self.threshold))
        )

    def data(self) -> dict[str, object]:
        return {
            "org_id": self.org_id,
            "key_id": self.key_id,
            "meter": self.meter,
            "threshold": self.threshold,
            "used": self.used,
            "limit": self.limit,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "forecast_exhausted_at": self.forecast_exhausted_at,
        }


def event_body(kind: str, event_id: str, timestamp: float, data: dict[str, object]) -> str:
    """What a delivery carries: ``{"type", "id", "timestamp", "data"}``."""
    body = {"type": kind, "id": event_id, "timestamp": timestamp, "data": data}
    return json.dumps(body, separators=(",", ":"))


def billing_notice(
    org_id: str, before: datetime | None, after: datetime | None, reason: str | None
) -> tuple[str, str, dict[str, object]] | None:
    """(type, claim, data) when a billing suspension starts or ends, else None; a suspension
    is named by when it began, so each start and each end is one event."""
    if before is None and after is not None:
        kind, began = BILLING_SUSPENDED, after
    elif before is not None and after is None:
        kind, began = BILLING_UNSUSPENDED, before
    else:
        return None
    data: dict[str, object] = {
        "org_id": org_id,
        "key_id": None,
        "suspended_at": began.isoformat(),
        "reason": reason,
    }
    return kind, f"{kind}|{org_id}|{began.isoformat()}", data


def signing_key(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (Standard Webhooks)."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise NotificationError("GATEWAY_NOTIFY_SECRET must be whsec_ and base64") from None
    if len(key) < 16:
        raise NotificationError("GATEWAY_NOTIFY_SECRET must hold at least 16 bytes")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
