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
    """The org's current period: its billing period while ``now`` is inside it; past its end
    (the renewal event has not arrived yet) the periods of the same length that follow it, so a
    renewal starting at the old end continues that same counter; the month without a period."""
    if anchor is None:
        return calendar_month(now)
    if anchor.start <= now < anchor.end:
        return anchor
    length = anchor.end - anchor.start
    if length.total_seconds() <= 0:
        return calendar_month(now)
    steps = (now - anchor.start) // length  # negative before the period starts
    start = anchor.start + steps * length
    return Period(start, start + length)


def period_at(now: float, anchor: Period | None = None) -> Period:
    """``period_for`` at a POSIX time, for callers that read a float clock: inside ``anchor``
    it is returned without building a datetime (the usage gate asks on every request)."""
    if anchor is not None and anchor.start.timestamp() <= now < anchor.end.timestamp():
        return anchor
    return period_for(datetime.fromtimestamp(now, UTC), anchor)
