"""Domain values shared by every decision: orgs, limits, quantities, periods."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

PaymentStatus = Literal["ok", "past_due", "blocked"]
PAYMENT_STATUSES: frozenset[str] = frozenset({"ok", "past_due", "blocked"})

#: Usage meters, in the fixed order every store locks and checks them.
METERS: tuple[str, ...] = ("requests", "bytes", "items")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-period usage limits and optional per-second rates; ``None`` means unlimited."""

    requests: int | None = None
    bytes: int | None = None
    items: int | None = None
    rate_requests: int | None = None
    rate_bytes: int | None = None

    def usage_limit(self, meter: str) -> int | None:
        value: int | None = getattr(self, meter)
        return value

    def metered(self) -> tuple[tuple[str, int], ...]:
        """The (meter, limit) pairs that are limited, in lock order."""
        return tuple((m, lim) for m in METERS if (lim := self.usage_limit(m)) is not None)

    def as_dict(self) -> dict[str, int]:
        names = (*METERS, "rate_requests", "rate_bytes")
        return {n: v for n in names if (v := getattr(self, n)) is not None}


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open billing period [start, end)."""

    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return self.start.isoformat()


@dataclass(frozen=True, slots=True)
class OrgRouting:
    """Everything the data plane needs to know about the org behind one ingest key."""

    org_id: str
    upstream: str | None = None
    limits: Limits = field(default_factory=Limits)
    suspended: bool = False
    payment_status: PaymentStatus = "ok"
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Quantities:
    """What one request costs on each meter."""

    requests: int = 1
    bytes: int = 0
    items: int = 0

    def of(self, meter: str) -> int:
        value: int = getattr(self, meter)
        return value

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes": self.bytes, "items": self.items}
