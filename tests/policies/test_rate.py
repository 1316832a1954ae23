from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.rate import Bucket, share, take


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


def test_share_divides_a_rate_among_live_holders() -> None:
    assert share(50, 2) == 25.0
    assert share(10, 4) == 2.5
    assert share(50, 1) == 50.0


def test_share_counts_at_least_one_holder() -> None:
    assert share(50, 0) == 50.0
    assert share(50, -3) == 50.0


def test_a_share_smaller_than_one_request_still_admits_at_its_rate() -> None:
    # rate 1/s over 4 holders: each admits one request on a full bucket, then one per 4 s.
    first = take(None, share(1, 4), cost=1, now=0.0)
    assert first.admitted
    assert not take(first.bucket, share(1, 4), cost=1, now=3.9).admitted
    assert take(first.bucket, share(1, 4), cost=1, now=4.0).admitted


@given(
    rate=st.integers(1, 500),
    holders=st.integers(1, 8),
    seconds=st.floats(min_value=0.1, max_value=5, allow_nan=False),
)
def test_holders_saturated_with_their_shares_admit_one_buckets_allowance(
    rate: int, holders: int, seconds: float
) -> None:
    """Every holder busy with the org's traffic: together they admit what one bucket of the
    whole rate would (burst + rate x duration), within one request per holder."""
    admitted = 0
    for _ in range(holders):
        bucket: Bucket | None = None
        for tick in range(101):  # asked until refused, 100 times over the duration
            now = seconds * tick / 100
            while (result := take(bucket, share(rate, holders), 1, now)).admitted:
                bucket = result.bucket
                admitted += 1
            bucket = result.bucket
    allowance = rate + rate * seconds
    # Each holder may leave a partial token unspent at the end (and the sum one more).
    assert allowance - holders - 1 <= admitted <= allowance + holders
