from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.forecast import HOUR, forecast, recent_rate

START = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
END = datetime(2027, 1, 1, tzinfo=UTC).timestamp()


def steady(per_hour: int, now: float, hours: int = 24) -> dict[int, int]:
    """``per_hour`` in every whole hour before ``now`` (which is an hour's start)."""
    return {int(now) - (age + 1) * HOUR: per_hour for age in range(hours)}


def test_a_steady_rate_is_that_rate_and_projects_to_the_period_end() -> None:
    now = START + 10 * 86400  # 10 days in, at midnight
    hours = steady(100, now)
    assert recent_rate(hours, now, START) * HOUR == pytest.approx(100)
    result = forecast(24_000, 10**9, hours, now, START, END)
    remaining_hours = (END - now) / HOUR
    assert result.rate_per_hour == pytest.approx(100)
    assert result.projected == 24_000 + int(100 * remaining_hours)
    assert result.exhausted_at is None  # a billion is far away


def test_the_limit_is_reached_when_the_rate_takes_the_usage_there() -> None:
    now = START + 86400
    result = forecast(2_400, 3_400, steady(100, now), now, START, END)
    assert result.exhausted_at == datetime.fromtimestamp(now + 10 * HOUR, UTC)


def test_usage_at_the_limit_is_exhausted_now_and_no_usage_never() -> None:
    now = START + 86400
    assert forecast(50, 50, {}, now, START, END).exhausted_at == datetime.fromtimestamp(now, UTC)
    quiet = forecast(10, 50, {}, now, START, END)
    assert (quiet.rate_per_hour, quiet.projected, quiet.exhausted_at) == (0.0, 10, None)


def test_recent_hours_weigh_more_than_old_ones() -> None:
    now = START + 5 * 86400
    busy_lately = {int(now) - HOUR: 1_000} | steady(10, now - HOUR, 23)
    busy_long_ago = {int(now) - 24 * HOUR: 1_000} | steady(10, now, 23)
    assert recent_rate(busy_lately, now, START) > 3 * recent_rate(busy_long_ago, now, START)


def test_hours_before_the_period_are_left_out_and_the_current_hour_counts_for_its_part() -> None:
    now = START + 1.5 * HOUR  # half an hour into the period's second hour
    hours = {int(START) - HOUR: 10**6, int(START): 60, int(START + HOUR): 30}
    # 90 units over 1.5 h: the hour before the period is not this period's pace.
    weighted = (23 * 60 + 24 * 30) / (23 * HOUR + 24 * HOUR / 2)
    assert recent_rate(hours, now, START) == pytest.approx(weighted)


def test_the_end_of_the_period_comes_before_a_far_exhaustion() -> None:
    now = END - 2 * HOUR
    result = forecast(0, 1_000, steady(100, now - now % HOUR), now, START, END)
    assert result.exhausted_at is None and result.projected == pytest.approx(200, abs=1)


@given(
    used=st.integers(0, 10**12),
    limit=st.integers(1, 10**12),
    per_hour=st.integers(0, 10**9),
    day=st.integers(1, 30),
)
def test_the_projection_never_falls_below_the_usage_and_exhaustion_is_inside_the_period(
    used: int, limit: int, per_hour: int, day: int
) -> None:
    now = START + day * 86400 - 1
    result = forecast(used, limit, steady(per_hour, now - now % HOUR), now, START, END)
    assert result.projected >= used
    if result.exhausted_at is not None:
        assert now <= result.exhausted_at.timestamp() <= END
