"""What the usage gate keeps per (org, period) in memory: the local budget spent from a
reservation, what the store said was exhausted, and what one admission spent (for refunds)."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.store.records import UsageBatch
from policies.decisions import Refusal, usage_exceeded
from policies.model import Limits, OrgRouting, Period, Quantities, scope_of

SHADOW_PREFIX = "shadow_refused:"
REFUSED_PREFIX = "refused:"  # requests of a known org refused, by code

#: The credit meter is counted over an org's whole life: its limit is the prepaid balance.
CREDIT_PERIOD = Period(datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


@dataclass(slots=True)
class UsageStats:
    """What the usage gate counts for ``/metrics``."""

    fail_open: int = 0
    refills: int = 0
    flush_failures: int = 0
    shadow_refused: int = 0


@dataclass(slots=True)
class Known:
    """The store's last word that a meter was exhausted: refuse needs above ``left``;
    ``used`` is the usage (committed, or spent here) at that moment, for the refusal body."""

    left: int
    limit: int
    used: int
    until: float
    held_elsewhere: bool = False  # other holders still had unspent quota: retry, not final
    overage: int = 0  # the overage cap past ``limit``, used up too

    def refusal(self, meter: str, resets_at: datetime) -> Refusal:
        return usage_exceeded(meter, self.limit, self.used, resets_at, self.overage)


@dataclass(slots=True)
class Budget:
    period: Period
    limits: dict[str, int] = field(default_factory=dict)  # what reservations were taken under
    limits_seen: tuple[tuple[str, int], ...] | None = None  # the last request's, to skip work
    generation: int = 0
    remaining: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    exhausted: dict[str, Known] = field(default_factory=dict)
    refill: asyncio.Future[None] | None = None
    low_water: dict[str, int] = field(default_factory=dict)  # refill ahead below this
    active: float = 0.0  # when it was last granted or spent from: idle budgets go back
    committing: dict[str, int] = field(default_factory=dict)  # taken for a flush, not yet in

    def pending(self) -> bool:
        return any(self.used.values()) or any(self.reserved.values())

    def deficit(
        self, limited: tuple[tuple[str, int], ...], counted: dict[str, int]
    ) -> dict[str, int]:
        """What each limited meter lacks here for ``counted`` (none: it can be spent)."""
        remaining = self.remaining
        return {
            m: need - remaining.get(m, 0)
            for m, _ in limited
            if (need := counted.get(m, 0)) > remaining.get(m, 0)
        }

    def local_used(self, meter: str) -> int:
        """What this process spent that the store may not have yet."""
        return self.used.get(meter, 0) + self.committing.get(meter, 0)

    def committed(self, used: dict[str, int]) -> None:
        """A flushed batch is in the store: its usage no longer waits here. A meter with
        nothing waiting is forgotten (every key of an org has meters of its own here)."""
        for meter, n in used.items():
            left = self.committing.get(meter, 0) - n
            if left:
                self.committing[meter] = left
            else:
                self.committing.pop(meter, None)

    def limits_changed(self, limited: tuple[tuple[str, int], ...], key_id: str | None) -> bool:
        """Whether the org's or this key's limits differ from those reserved under.

        Compared per meter: a request of another key brings that key's meters, which is no
        change. A meter of the org or of this key that is no longer limited was lifted: a
        change too, or setting it back later would spend the reservation taken before. So is
        a meter newly limited while usage of it waits here for a flush: the store must count
        that usage before it grants anything under the new limit."""
        known = self.limits
        now = dict(limited)
        lifted = [m for m in known if m not in now and scope_of(m)[0] in (None, key_id)]
        changed = bool(lifted) or any(
            known[m] != limit if m in known else self.local_used(m) > 0 for m, limit in limited
        )
        for meter in lifted:
            del known[meter]
        known.update(now)
        self.limits_seen = limited
        return changed

    def forfeit(self) -> None:
        """Give up what is left of the reservation, and what is known of the store."""
        self.generation += 1
        self.release_remaining()
        self.exhausted.clear()

    def release_remaining(self) -> None:
        """Hand back what is left of the reservation with the next batch."""
        for meter, left in self.remaining.items():
            self.reserved[meter] = self.reserved.get(meter, 0) - left
        self.remaining.clear()


@dataclass(frozen=True, slots=True)
class Spent:
    """What one admission did to one budget: usage counted and quota taken from the reservation."""

    period_key: str
    generation: int
    counted: tuple[tuple[str, int], ...]
    reserved: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let through, and what it spent, so that it can be refunded exactly."""

    routing: OrgRouting
    quantities: Quantities
    parts: tuple[Spent, ...]
    fail_open: bool = False


# A request spends from its billing period's budget (requests, bytes, items) and, when the org
# is priced, from its lifetime credit budget: the balance is everything credited, ever.
Account = tuple["Budget", tuple[tuple[str, int], ...], dict[str, int]]


@functools.lru_cache(maxsize=4096)
def split_limits(limits: Limits) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """The period meters' limits and the credit limit, once per distinct Limits value."""
    metered = limits.metered()
    return tuple(p for p in metered if p[0] != "credit"), tuple(
        p for p in metered if p[0] == "credit"
    )


def zero_limit_refusal(
    budget: Budget, limited: tuple[tuple[str, int], ...], deficit: dict[str, int]
) -> Refusal | None:
    """A meter limited to 0 (or an empty prepaid balance) refuses any need before any I/O:
    the store could not grant it either."""
    for meter, limit in limited:
        if limit <= 0 and meter in deficit:
            known = budget.exhausted.get(meter)
            used = (known.used if known is not None else 0) + budget.local_used(meter)
            return usage_exceeded(meter, limit, used, budget.period.end)
    return None


def lanes_of(batches: list[UsageBatch], lanes: int = 2) -> list[list[UsageBatch]]:
    """``batches`` split by org into ``lanes`` lists, each in its order: a flush commits
    its lanes at once (two use two of the store's cores) and one org's batches in order."""
    split: list[list[UsageBatch]] = [[] for _ in range(lanes)]
    for batch in batches:
        split[hash(batch.org_id) % lanes].append(batch)
    return [lane for lane in split if lane]
