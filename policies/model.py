"""Domain values shared by every decision: orgs, limits, quantities, periods."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

PaymentStatus = Literal["ok", "past_due", "blocked"]
PAYMENT_STATUSES: frozenset[str] = frozenset({"ok", "past_due", "blocked"})

#: Usage meters, in the fixed order every store locks and checks them. ``credit`` is the
#: cost of what was sent at the org's prices, in millionths of a minor unit; its limit is
#: the prepaid balance (see ``Prices``).
METERS: tuple[str, ...] = ("requests", "bytes", "items", "credit")

#: The meters a client sends; ``credit`` is derived from them.
SENT_METERS: tuple[str, ...] = ("requests", "bytes", "items")

#: Money is integers in minor units; the credit meter counts millionths of one.
MICROS_PER_MINOR = 1_000_000

#: The signals a request belongs to; each has its own meters (``traces.items``, ...).
SIGNALS: tuple[str, ...] = ("traces", "logs", "metrics", "logpush")
SIGNAL_METERS: frozenset[str] = frozenset(f"{s}.{m}" for s in SIGNALS for m in SENT_METERS)


def lock_key(meter: str) -> tuple[int, str]:
    """The order every store locks and checks meters in: ``METERS`` first, then by name."""
    return (METERS.index(meter) if meter in METERS else len(METERS), meter)


def lock_order(meters: Iterable[str]) -> list[str]:
    return sorted(meters, key=lock_key)


#: A key's meters are the org's meters named under the key: ``key/<key id>/<meter>`` (no
#: colon: the Redis scripts read a meter as what follows a field's last colon).
KEY_PREFIX = "key/"


def key_meter(key_id: str, meter: str) -> str:
    return f"{KEY_PREFIX}{key_id}/{meter}"


def scope_of(meter: str) -> tuple[str | None, str]:
    """(the key id of a key's meter, or None for the org's; the meter within its scope)."""
    if meter.startswith(KEY_PREFIX):
        key_id, _, inner = meter[len(KEY_PREFIX) :].rpartition("/")
        return key_id, inner
    return None, meter


def is_quota_meter(meter: str) -> bool:
    """A meter a limit can hold: the totals, credit, every signal's meters, and a key's."""
    if meter.startswith(KEY_PREFIX):
        meter = scope_of(meter)[1]
    return meter in METERS or meter in SIGNAL_METERS


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-period usage limits and optional per-second rates; ``None`` means unlimited."""

    requests: int | None = None
    bytes: int | None = None
    items: int | None = None
    rate_requests: int | None = None
    rate_bytes: int | None = None
    credit: int | None = None
    #: Limits on meters beyond the totals: a signal's (``traces.items``) or, in a routing, the
    #: key's (``key/<key id>/items``); sorted by name.
    meters: tuple[tuple[str, int], ...] = ()
    #: Overage caps: up to N more units past a meter's limit are admitted (``None``: no cap;
    #: absent or 0: a hard limit). From the org's plan; sorted by name.
    overage: tuple[tuple[str, int | None], ...] = ()
    #: In an org's own limits only: the meters (and rates) it makes unlimited whatever its
    #: plan says (an override of ``null``); sorted. Effective limits never carry it.
    unlimited: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: Mapping[str, int]) -> Limits:
        """Limits from ``{name: value}``: totals, rates and other meters alike."""
        meters = tuple(sorted((m, v) for m, v in values.items() if m not in _FIELDS))
        plain: dict[str, Any] = {m: v for m, v in values.items() if m in _FIELDS}
        return cls(**plain, meters=meters)

    @classmethod
    def from_overrides(cls, values: Mapping[str, int | None]) -> Limits:
        """An org's own limits from ``{name: value | None}``: ``None`` is unlimited."""
        limits = cls.from_dict({m: v for m, v in values.items() if v is not None})
        lifted = tuple(sorted(m for m, v in values.items() if v is None))
        return replace(limits, unlimited=lifted) if lifted else limits

    def usage_limit(self, meter: str) -> int | None:
        """The most a meter may count: its limit and its overage cap (``None``: no bound)."""
        limit = self.base_limit(meter)
        if limit is None or not self.overage:
            return limit
        cap = self.overage_cap(meter)
        return None if cap is None else limit + cap

    def base_limit(self, meter: str) -> int | None:
        """The meter's limit, without its overage."""
        if meter not in _FIELDS:
            return dict(self.meters).get(meter)
        value: int | None = getattr(self, meter)
        return value

    def overage_cap(self, meter: str) -> int | None:
        return dict(self.overage).get(meter, 0)

    def patched(self, changes: Mapping[str, int | None]) -> Limits:
        """These limits with ``changes`` applied meter by meter (``None`` lifts one)."""
        merged: dict[str, int | None] = {**self.as_dict(), **changes}
        limits = Limits.from_dict({name: v for name, v in merged.items() if v is not None})
        return replace(limits, overage=self.overage) if self.overage else limits

    def overridden(self, changes: Mapping[str, LimitChange]) -> Limits:
        """An org's own limits with ``changes`` applied meter by meter: a number sets one,
        ``None`` makes it unlimited, ``"plan"`` drops the override (the plan's value applies)."""
        merged: dict[str, LimitChange] = {**self.overrides(), **changes}
        return Limits.from_overrides({m: v for m, v in merged.items() if not isinstance(v, str)})

    def overrides(self) -> dict[str, int | None]:
        """An org's own limits as configured: values, and ``None`` for those it lifts."""
        return {**self.as_dict(), **dict.fromkeys(self.unlimited)}

    def with_key(self, key_id: str, key_limits: Limits) -> Limits:
        """These limits and a key's own, named under the key, as one set to reserve."""
        scoped = [(key_meter(key_id, m), v) for m, v in key_limits.metered() if m != "credit"]
        return replace(self, meters=tuple(sorted((*self.meters, *scoped))))

    def metered(self) -> tuple[tuple[str, int], ...]:
        """The (meter, limit) pairs that are limited, in lock order."""
        return _metered(self)

    def as_dict(self) -> dict[str, int]:
        """The configured limits (``credit`` is derived from the balance, not configured)."""
        names = (*SENT_METERS, "rate_requests", "rate_bytes")
        return {n: v for n in names if (v := getattr(self, n)) is not None} | dict(self.meters)


_FIELDS = frozenset({*METERS, "rate_requests", "rate_bytes"})
#: In a change of an org's own limits: drop the override, so that the plan's value applies.
PLAN_VALUE: Literal["plan"] = "plan"
LimitChange = int | None | Literal["plan"]


# A few thousand hot keys: each entry is about 700 bytes, and 100,000 keys cached at 65,536
# entries held 71 MB (the benchmark's RSS reading); a miss costs a few microseconds.
@functools.lru_cache(maxsize=4096)
def _sent_meters(signal: str | None, key_id: str | None) -> tuple[str, ...]:
    """The meters a request counts on, in groups of (requests, bytes, items); built once."""
    names = list(SENT_METERS)
    if signal is not None:
        names += [f"{signal}.{unit}" for unit in SENT_METERS]
    if key_id is not None:
        names += [key_meter(key_id, name) for name in list(names)]
    return tuple(names)


#: No limit at all (a default that is never mutated: Limits is frozen).
NO_LIMITS = Limits()


@functools.lru_cache(maxsize=4096)
def _metered(limits: Limits) -> tuple[tuple[str, int], ...]:
    # Computed once per distinct Limits value: it runs on every admitted request.
    totals = tuple((m, lim) for m in METERS if (lim := limits.usage_limit(m)) is not None)
    if not limits.overage:
        return totals + limits.meters
    others = tuple((m, lim) for m, _ in limits.meters if (lim := limits.usage_limit(m)) is not None)
    return totals + others


@dataclass(frozen=True, slots=True)
class Prices:
    """An org's prices in minor units per million units of a meter (``None``: free).

    With ``block_over_balance`` the prepaid balance is a limit: the ``credit`` meter.
    """

    requests: int | None = None
    bytes: int | None = None
    items: int | None = None
    block_over_balance: bool = False

    def cost_micros(self, requests: int, bytes_: int, items: int) -> int:
        """Cost in millionths of a minor unit: exact integer arithmetic, no floats."""
        return (
            requests * (self.requests or 0) + bytes_ * (self.bytes or 0) + items * (self.items or 0)
        )

    @property
    def priced(self) -> bool:
        return any(p for p in (self.requests, self.bytes, self.items))

    def as_dict(self) -> dict[str, int]:
        return {n: v for n in SENT_METERS if (v := getattr(self, n)) is not None}


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open billing period [start, end); ``key`` names its counters in every store."""

    start: datetime
    end: datetime
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.start.isoformat())


@dataclass(frozen=True, slots=True)
class OrgRouting:
    """Everything the data plane needs to know about the org behind one ingest key."""

    org_id: str
    upstream: str | None = None
    limits: Limits = field(default_factory=Limits)
    suspended: bool = False
    payment_status: PaymentStatus = "ok"
    shadow: bool = False
    prices: Prices = field(default_factory=Prices)
    #: The billing period from the provider, if any; else calendar months.
    period: Period | None = None
    #: The ingest key the request came with; its own limits are in ``limits`` under its name.
    #: Not part of equality: a routing is its org's, whichever key it was looked up by.
    key_id: str | None = field(default=None, compare=False)
    #: The org's plan (what ``GET /v1/usage`` tells the key holder).
    plan: str = "free"
    #: Where the org's notifications go (None: the gateway's GATEWAY_NOTIFY_URL).
    notify_url: str | None = None
    #: Cut a batch over an items limit to what fits (None: GATEWAY_PARTIAL_ADMISSION).
    partial_admission: bool | None = None


@dataclass(frozen=True, slots=True)
class Quantities:
    """What one request costs on each meter."""

    requests: int = 1
    bytes: int = 0
    items: int = 0
    credit: int = 0
    #: The request's signal: it counts on that signal's meters too.
    signal: str | None = None

    def of(self, meter: str) -> int:
        value: int = getattr(self, meter)
        return value

    def as_dict(self) -> dict[str, int]:
        return {m: self.of(m) for m in METERS}

    def sent(self, key_id: str | None = None) -> dict[str, int]:
        """What the request counts on every meter it sent: the totals and its signal's, for
        the org and, with ``key_id``, for that key too."""
        names = _sent_meters(self.signal, key_id)
        values = (self.requests, self.bytes, self.items)
        return dict(zip(names, values * (len(names) // 3), strict=True))

    def priced(self, prices: Prices) -> Quantities:
        """The same quantities with their cost on the credit meter."""
        cost = prices.cost_micros(self.requests, self.bytes, self.items)
        return Quantities(self.requests, self.bytes, self.items, cost, self.signal)
