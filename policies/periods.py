"""Billing period arithmetic. Every function takes ``now``; nothing reads a clock."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from policies.model import Period


def calendar_month(now: datetime) -> Period:
    """The UTC calendar month containing ``now``."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    if now.month == 12:
        end = datetime(now.year + 1, 1, 1, tzinfo=UTC)
    else:
        end = datetime(now.year, now.month + 1, 1, tzinfo=UTC)
    return Period(start, end)


def month_before(start: datetime) -> datetime:
    """The same day and time a month earlier, clamped to that month's length."""
    year, month = (start.year, start.month - 1) if start.month > 1 else (start.year - 1, 12)
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def period_for(now: datetime, anchor: Period | None = None) -> Period:
    """The org's current period: its billing period while ``now`` is inside it; outside it (a
    renewal event not arrived yet, or one that arrived early) the neighbouring periods of the
    same cycle, so the renewal continues that same counter; the month without a period.

    Providers bill monthly and yearly periods on an anchor day, so those step by calendar
    months (the day clamped to the month's length, as Stripe does); other lengths step by
    their own length.
    """
    if anchor is None:
        return calendar_month(now)
    if anchor.start <= now < anchor.end:
        return anchor
    length = anchor.end - anchor.start
    if length.total_seconds() <= 0:
        return calendar_month(now)
    cycle = _monthly_cycle(anchor)
    if cycle is None:
        steps = (now - anchor.start) // length  # negative before the period starts
        start = anchor.start + steps * length
        return Period(start, start + length)
    months, day = cycle
    step = 1 if now >= anchor.end else -1
    k = 0
    for _ in range(10_000):  # far beyond any real gap: a bound, not a loop forever
        start = _on_anchor(anchor.start, k * months, day)
        end = _on_anchor(anchor.start, (k + 1) * months, day)
        if start <= now < end:
            return Period(start, end)
        k += step
    return calendar_month(now)


def _monthly_cycle(period: Period) -> tuple[int, int] | None:
    """(months, anchor day) when ``period`` is one month or one year on an anchor day."""
    day = max(period.start.day, period.end.day)
    for months in (1, 12):
        if (
            _on_anchor(period.start, 0, day) == period.start
            and _on_anchor(period.start, months, day) == period.end
        ):
            return months, day
    return None


def _on_anchor(start: datetime, months: int, day: int) -> datetime:
    """``start`` moved ``months`` on, on the anchor ``day`` clamped to that month's length."""
    index = start.year * 12 + start.month - 1 + months
    year, month = divmod(index, 12)
    return start.replace(
        year=year, month=month + 1, day=min(day, calendar.monthrange(year, month + 1)[1])
    )


def period_at(now: float, anchor: Period | None = None) -> Period:
    """``period_for`` at a POSIX time, for callers that read a float clock: inside ``anchor``
    it is returned without building a datetime (the usage gate asks on every request)."""
    if anchor is not None and anchor.start.timestamp() <= now < anchor.end.timestamp():
        return anchor
    return period_for(datetime.fromtimestamp(now, UTC), anchor)
