"""Entitlements: the meters a limit can be set on, plans, and the limits an org ends up with.

A meter is a unit over all signals (``requests``, ``bytes``, ``items``) or over one signal
(``traces.items`` = spans, ``logs.items`` = log records, ``metrics.items`` = data points,
``logpush.items`` = lines; ``logs.bytes``, ``traces.requests``, ...). A request counts on the
totals and on its own signal's meters (``Quantities.sent``). A plan gives default limits,
overage caps, rates and a credit grant; an org's own limits override its plan's: absent = the
plan's value, a number = that value, ``None`` = unlimited (``effective_limits``). Overage
admits up to N units past a limit (``None``: no cap; absent or 0: a hard limit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from policies.model import SENT_METERS as UNITS
from policies.model import SIGNALS, Limits

SIGNAL_METERS: tuple[str, ...] = tuple(f"{s}.{u}" for s in SIGNALS for u in UNITS)
#: Every meter a limit or an overage cap can be set on, totals first.
LIMITED_METERS: tuple[str, ...] = (*UNITS, *SIGNAL_METERS)
RATES: tuple[str, ...] = ("rate_requests", "rate_bytes")
#: Every signed 64-bit column in every store holds these.
MAX_VALUE = 2**63 - 1


class EntitlementError(ValueError):
    """A plan or a set of limits that cannot be applied: the message says which field."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A named set of default limits, overage caps, rates and a credit grant per period."""

    name: str
    limits: Mapping[str, int | None] = field(default_factory=dict)
    overage: Mapping[str, int | None] = field(default_factory=dict)
    rate_requests: int | None = None
    rate_bytes: int | None = None
    grant_minor: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "limits": dict(self.limits),
            "overage": dict(self.overage),
            "rate_requests": self.rate_requests,
            "rate_bytes": self.rate_bytes,
            "grant_minor": self.grant_minor,
        }


def effective_limits(plan: Limits | None, own: Limits) -> Limits:
    """The limits an org ends up with: its plan's (with their overage caps), each meter and
    rate overridden by the org's own: a number replaces the plan's, an unlimited one lifts it
    (and its overage), an absent one keeps the plan's. No plan: the org's own alone."""
    if plan is None:
        return replace(own, unlimited=()) if own.unlimited else own
    return plan.patched(own.overrides())


def parse_limits(
    raw: object, what: str = "limits", *, rates: bool = False
) -> dict[str, int | None]:
    """``{meter: int | null}``: known meters, integers from 0 (rates from 1), or null."""
    if not isinstance(raw, Mapping):
        raise EntitlementError(f"{what} must be an object of meter: integer or null")
    allowed = (*LIMITED_METERS, *RATES) if rates else LIMITED_METERS
    parsed: dict[str, int | None] = {}
    for meter, value in raw.items():
        if meter not in allowed:
            known = ", ".join(allowed)
            raise EntitlementError(f"{what}.{meter} is not a meter (one of {known})")
        parsed[meter] = _count(value, f"{what}.{meter}", 1 if meter in RATES else 0)
    return parsed


def parse_plan(name: str, raw: object) -> Plan:
    """A plan from its JSON (or TOML) body; every field is optional but must be well formed."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or name != name.strip()
        or len(name) > 64
        or not name.isprintable()
    ):
        raise EntitlementError(
            "a plan name is 1 to 64 printable characters, not starting or ending with a space"
        )
    if not isinstance(raw, Mapping):
        raise EntitlementError("a plan must be an object")
    unknown = set(raw) - {"limits", "overage", "rate_requests", "rate_bytes", "grant_minor"}
    if unknown:
        raise EntitlementError(f"unknown plan field {sorted(unknown)[0]!r}")
    limits = parse_limits(raw.get("limits", {}), "limits")
    overage = parse_limits(raw.get("overage", {}), "overage")
    grant = raw.get("grant_minor", 0)
    if grant is None:
        grant = 0
    return Plan(
        name,
        limits={m: v for m, v in limits.items() if v is not None},
        overage=overage,
        rate_requests=_count(raw.get("rate_requests"), "rate_requests", 1),
        rate_bytes=_count(raw.get("rate_bytes"), "rate_bytes", 1),
        grant_minor=_count(grant, "grant_minor", 0) or 0,
    )


def _count(value: object, what: str, least: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EntitlementError(f"{what} must be an integer or null")
    if not least <= value <= MAX_VALUE:
        raise EntitlementError(f"{what} must be from {least} to {MAX_VALUE}")
    return value


def plan_json(plan: Plan) -> str:
    """The stored form of a plan: its body without the name, keys sorted."""
    body = plan.as_dict()
    del body["name"]
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def plan_from_json(name: str, text: str) -> Plan:
    return parse_plan(name, json.loads(text))


def plan_limits(plan: Plan) -> Limits:
    """A plan's limits and rates as the ``Limits`` an org's own override."""
    values = {m: v for m, v in plan.limits.items() if v is not None}
    for name in RATES:
        rate = getattr(plan, name)
        if rate is not None:
            values[name] = rate
    limits = Limits.from_dict(values)
    caps = tuple(sorted((m, cap) for m, cap in plan.overage.items() if cap != 0))
    return replace(limits, overage=caps) if caps else limits
