from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.rate import Bucket, take


def test_full_bucket_admits() -> None:
    result = take(None, rate=10, cost=3, now=5.0)
    assert result.admitted
    assert result.bucket == Bucket(7.0, 5.0)
    assert result.wait == 0.0


def test_empty_bucket_refuses_with_the_wait_for_the_cost() -> None:
    result = take(Bucket(0.0, 0.0), rate=10, cost=1, now=0.0)
    assert not result.admitted
    assert result.wait == pytest.approx(0.1)


def test_wait_counts_the_tokens_already_there() -> None:
    result = take(Bucket(2.0, 0.0), rate=4, cost=3, now=0.0)
    assert not result.admitted
    assert result.wait == pytest.approx(0.25)


def test_bucket_refills_at_rate() -> None:
    drained = Bucket(0.0, 0.0)
    assert take(drained, rate=10, cost=5, now=0.5).admitted
    late = take(drained, rate=10, cost=6, now=0.5)
    assert not late.admitted
    assert late.wait == pytest.approx(0.1)


def test_refill_stops_at_capacity() -> None:
    result = take(Bucket(0.0, 0.0), rate=10, cost=1, now=100.0)
    assert result.bucket.tokens == pytest.approx(9.0)


def test_refusal_keeps_the_refilled_tokens_without_spending() -> None:
    result = take(Bucket(1.0, 0.0), rate=10, cost=5, now=0.2)
    assert not result.admitted
    assert result.bucket.tokens == pytest.approx(3.0)
    assert result.bucket.at == 0.2


def test_cost_above_capacity_passes_on_a_full_bucket_and_leaves_debt() -> None:
    result = take(None, rate=10, cost=25, now=0.0)
    assert result.admitted
    assert result.bucket.tokens == pytest.approx(-15.0)
    after = take(result.bucket, rate=10, cost=1, now=1.0)
    assert not after.admitted
    assert after.wait == pytest.approx(0.6)
    # The debt is paid back at the rate: 25 tokens' worth takes 2.5 s.
    assert take(result.bucket, rate=10, cost=10, now=2.5).admitted


def test_cost_above_capacity_waits_for_a_full_bucket() -> None:
    result = take(Bucket(9.0, 0.0), rate=10, cost=25, now=0.0)
    assert not result.admitted
    assert result.wait == pytest.approx(0.1)


def test_zero_rate_refuses_without_raising() -> None:
    first = take(None, rate=0, cost=1, now=0.0)
    second = take(first.bucket, rate=0, cost=1, now=1.0)
    assert not second.admitted


@given(
    rate=st.integers(1, 1000),
    takes=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=2, allow_nan=False),
            st.integers(0, 5000),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_admitted_cost_never_exceeds_capacity_plus_refill_plus_one_cost(
    rate: int, takes: list[tuple[float, int]]
) -> None:
    bucket: Bucket | None = None
    now = 0.0
    admitted = 0
    largest = 0
    for step, cost in takes:
        now += step
        result = take(bucket, rate, cost, now)
        bucket = result.bucket
        assert bucket.tokens <= rate
        if result.admitted:
            admitted += cost
            largest = max(largest, cost)
    assert admitted <= rate + rate * now + largest + 1e-6
