"""When a meter will reach its limit, from its recent hourly usage.

The method: the rate is a weighted mean of the last 24 hours' usage (hours before the period
started are left out, the current hour counts for the part of it that has passed), each hour
weighing 1 for the oldest up to 24 for the newest, so that a change of pace shows within
hours while one quiet or busy hour does not swing it. The projection at period end is the
usage so far plus that rate until the end; ``exhausted_at`` is when the rate takes the usage
to the limit, if before the period ends (at once for usage already at it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

HOUR = 3600
WINDOW_HOURS = 24


@dataclass(frozen=True, slots=True)
class Forecast:
    rate_per_hour: float
    projected: int  # usage at period end at this rate
    exhausted_at: datetime | None  # None: the limit is not reached this period


def recent_rate(hours: Mapping[int, int], now: float, period_start: float) -> float:
    """Usage per second over the window; ``hours`` maps an hour's start to its usage."""
    current = int(now // HOUR * HOUR)
    weighted_usage = weighted_seconds = 0.0
    for age in range(WINDOW_HOURS):
        start = current - age * HOUR
        begin, end = max(start, period_start), min(start + HOUR, now)
        if end <= begin:
            continue
        weight = WINDOW_HOURS - age
        weighted_usage += weight * hours.get(start, 0)
        weighted_seconds += weight * (end - begin)
    return weighted_usage / weighted_seconds if weighted_seconds > 0 else 0.0


def forecast(
    used: int,
    limit: int,
    hours: Mapping[int, int],
    now: float,
    period_start: float,
    period_end: float,
) -> Forecast:
    rate = recent_rate(hours, now, period_start)
    remaining_s = max(0.0, period_end - now)
    projected = used + int(rate * remaining_s)
    exhausted: datetime | None = None
    if used >= limit:
        exhausted = datetime.fromtimestamp(now, UTC)
    elif rate > 0:
        at = now + (limit - used) / rate
        if at < period_end:
            exhausted = datetime.fromtimestamp(at, UTC)
    return Forecast(round(rate * HOUR, 3), projected, exhausted)
