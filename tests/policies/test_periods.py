from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.model import Period
from policies.periods import calendar_month, month_before, period_at, period_for


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        pytest.param(utc(2024, 5, 17, 12, 30), utc(2024, 5, 1), utc(2024, 6, 1), id="mid-month"),
        pytest.param(utc(2024, 12, 31, 23, 59, 59), utc(2024, 12, 1), utc(2025, 1, 1), id="dec"),
        pytest.param(utc(2025, 1, 1), utc(2025, 1, 1), utc(2025, 2, 1), id="jan-first"),
        pytest.param(utc(2024, 2, 29, 8), utc(2024, 2, 1), utc(2024, 3, 1), id="leap-feb"),
        pytest.param(utc(2023, 2, 28, 8), utc(2023, 2, 1), utc(2023, 3, 1), id="plain-feb"),
        pytest.param(utc(2024, 3, 1), utc(2024, 3, 1), utc(2024, 4, 1), id="midnight-start"),
        pytest.param(
            utc(2024, 3, 31, 23, 59, 59, 999_999), utc(2024, 3, 1), utc(2024, 4, 1), id="last-µs"
        ),
    ],
)
def test_calendar_month(now: datetime, start: datetime, end: datetime) -> None:
    assert calendar_month(now) == Period(start, end)


def test_calendar_month_contains_now_half_open() -> None:
    now = utc(2024, 3, 1)
    period = calendar_month(now)
    assert period.start <= now < period.end
    assert calendar_month(period.end).start == period.end


def test_calendar_month_of_non_utc_time_uses_the_utc_month() -> None:
    # 23:30 on Jan 31 in UTC-5 is already 04:30 on Feb 1 in UTC.
    now = datetime(2024, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert calendar_month(now) == Period(utc(2024, 2, 1), utc(2024, 3, 1))


def test_calendar_month_of_time_ahead_of_utc_crosses_the_year_back() -> None:
    # 05:00 on Jan 1 in UTC+9 is still Dec 31 in UTC.
    now = datetime(2025, 1, 1, 5, tzinfo=timezone(timedelta(hours=9)))
    period = calendar_month(now)
    assert period == Period(utc(2024, 12, 1), utc(2025, 1, 1))
    assert period.start.tzinfo is UTC
    assert period.end.tzinfo is UTC


def test_period_for_without_anchor_is_the_calendar_month() -> None:
    now = utc(2024, 12, 15)
    assert period_for(now) == Period(utc(2024, 12, 1), utc(2025, 1, 1))


ANCHOR = Period(utc(2024, 5, 15), utc(2024, 6, 15))


@pytest.mark.parametrize(
    "now",
    [utc(2024, 5, 15), utc(2024, 6, 1), utc(2024, 6, 14, 23, 59, 59, 999_999)],
    ids=["at-start", "inside", "last-µs"],
)
def test_period_for_inside_anchor_is_the_anchor(now: datetime) -> None:
    assert period_for(now, ANCHOR) is ANCHOR


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2024, 6, 15), Period(utc(2024, 6, 15), utc(2024, 7, 15))),
        (utc(2024, 7, 16), Period(utc(2024, 7, 15), utc(2024, 8, 15))),
        (utc(2024, 8, 1), Period(utc(2024, 7, 15), utc(2024, 8, 15))),
        (utc(2024, 5, 14, 23), Period(utc(2024, 4, 15), utc(2024, 5, 15))),
    ],
    ids=["at-end", "two-cycles-on", "inside-the-second", "before-start"],
)
def test_outside_its_period_an_org_counts_in_the_neighbouring_periods_of_its_cycle(
    now: datetime, expected: Period
) -> None:
    # Regression: the gap before a late renewal event was a calendar-month counter of its own,
    # a third quota; now it is the next period, which the renewal (starting at the end) continues.
    assert period_for(now, ANCHOR) == expected


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Period(utc(2027, 1, 15), utc(2027, 2, 15)), Period(utc(2027, 2, 15), utc(2027, 3, 15))),
        (Period(utc(2027, 2, 15), utc(2027, 3, 15)), Period(utc(2027, 3, 15), utc(2027, 4, 15))),
        (Period(utc(2027, 3, 31), utc(2027, 4, 30)), Period(utc(2027, 4, 30), utc(2027, 5, 31))),
        (Period(utc(2027, 1, 4), utc(2027, 2, 3)), Period(utc(2027, 2, 3), utc(2027, 3, 5))),
    ],
    ids=["31-then-28-days", "28-then-31-days", "anchor-day-31", "every-30-days"],
)
def test_a_renewal_that_arrives_early_keeps_counting_in_the_old_period(
    old: Period, new: Period
) -> None:
    # Regression: before the new start, stepping back by the new period's length opened a
    # fresh counter whenever the two months differ in length (a second quota in the old one).
    just_before = new.start - timedelta(seconds=5)
    assert period_for(just_before, new).key == old.key


def test_monthly_periods_keep_their_anchor_day_clamped_to_the_month() -> None:
    january = Period(utc(2027, 1, 31), utc(2027, 2, 28))
    assert period_for(utc(2027, 3, 1), january) == Period(utc(2027, 2, 28), utc(2027, 3, 31))
    assert period_for(utc(2027, 4, 1), january) == Period(utc(2027, 3, 31), utc(2027, 4, 30))


def test_yearly_and_other_lengths_step_by_their_cycle() -> None:
    year = Period(utc(2024, 2, 29), utc(2025, 2, 28))
    assert period_for(utc(2025, 6, 1), year) == Period(utc(2025, 2, 28), utc(2026, 2, 28))
    week = Period(utc(2027, 1, 4), utc(2027, 1, 11))
    assert period_for(utc(2027, 1, 20), week) == Period(utc(2027, 1, 18), utc(2027, 1, 25))


def test_without_a_billing_period_an_org_counts_by_calendar_month() -> None:
    assert period_for(utc(2024, 6, 15), None) == Period(utc(2024, 6, 1), utc(2024, 7, 1))


def test_period_for_compares_non_utc_time_by_instant() -> None:
    # 01:00 on Jun 15 in UTC+2 is 23:00 on Jun 14 in UTC: still inside the anchor.
    now = datetime(2024, 6, 15, 1, tzinfo=timezone(timedelta(hours=2)))
    assert period_for(now, ANCHOR) is ANCHOR


@pytest.mark.parametrize(
    "now",
    [utc(2024, 5, 15), utc(2024, 6, 1), utc(2024, 6, 14, 23, 59, 59, 999_999)],
    ids=["at-start", "inside", "last-µs"],
)
def test_period_at_inside_anchor_is_the_anchor(now: datetime) -> None:
    assert period_at(now.timestamp(), ANCHOR) is ANCHOR


def test_period_at_the_anchors_end_is_the_next_period() -> None:
    assert period_at(ANCHOR.end.timestamp(), ANCHOR) == Period(utc(2024, 6, 15), utc(2024, 7, 15))


def test_period_at_without_anchor_is_the_utc_calendar_month() -> None:
    assert period_at(utc(2024, 12, 31, 23, 59).timestamp()) == Period(
        utc(2024, 12, 1), utc(2025, 1, 1)
    )


_OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(_OFFSETS),
)


@given(now=moments, bounds=st.none() | st.tuples(moments, moments))
def test_period_at_a_posix_time_is_period_for_that_instant(
    now: datetime, bounds: tuple[datetime, datetime] | None
) -> None:
    anchor = None if bounds is None else Period(min(bounds), max(bounds))
    assert period_at(now.timestamp(), anchor) == period_for(now, anchor)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param(utc(2024, 6, 15, 8, 30), utc(2024, 5, 15, 8, 30), id="mid-month"),
        pytest.param(utc(2024, 1, 31), utc(2023, 12, 31), id="across-the-year"),
        pytest.param(utc(2024, 3, 31), utc(2024, 2, 29), id="clamped-to-leap-feb"),
        pytest.param(utc(2023, 3, 30), utc(2023, 2, 28), id="clamped-to-plain-feb"),
        pytest.param(
            utc(2024, 5, 31, 23, 59, 59, 999_999),
            utc(2024, 4, 30, 23, 59, 59, 999_999),
            id="clamped-keeps-the-time",
        ),
    ],
)
def test_month_before(start: datetime, expected: datetime) -> None:
    assert month_before(start) == expected


def test_month_before_keeps_the_zone() -> None:
    start = datetime(2024, 3, 1, 9, tzinfo=timezone(timedelta(hours=2)))
    assert month_before(start) == datetime(2024, 2, 1, 9, tzinfo=timezone(timedelta(hours=2)))
    assert month_before(start).utcoffset() == timedelta(hours=2)
