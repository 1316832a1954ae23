"""RateLimiter: each process enforces its share of an org's rate among the live holders."""

from __future__ import annotations

from gateway.limits.rates import RateLimiter
from policies.model import Limits, OrgRouting, Quantities

ORG = OrgRouting("org_1", limits=Limits(rate_requests=10))


def admitted(rates: RateLimiter, count: int) -> int:
    return sum(rates.check(ORG, Quantities()) is None for _ in range(count))


def test_one_holder_has_the_whole_rate() -> None:
    assert admitted(RateLimiter(clock=lambda: 0.0), 20) == 10


def test_two_holders_each_have_half_of_the_burst_and_of_the_refill() -> None:
    now = [0.0]
    rates = RateLimiter(clock=lambda: now[0])
    rates.share_among(2)
    assert admitted(rates, 20) == 5
    now[0] = 1.0
    assert admitted(rates, 20) == 5


def test_the_bytes_rate_is_shared_too() -> None:
    rates = RateLimiter(clock=lambda: 0.0)
    rates.share_among(4)
    org = OrgRouting("org_2", limits=Limits(rate_bytes=1000))
    # 250 bytes of burst here, 50 a request.
    assert sum(rates.check(org, Quantities(bytes=50)) is None for _ in range(10)) == 5


def test_no_live_holder_counted_means_this_one() -> None:
    rates = RateLimiter(clock=lambda: 0.0)
    rates.share_among(0)
    assert rates.holders == 1
    assert admitted(rates, 20) == 10


def test_a_holder_leaving_gives_the_others_its_share_from_then_on() -> None:
    now = [0.0]
    rates = RateLimiter(clock=lambda: now[0])
    rates.share_among(2)
    assert admitted(rates, 20) == 5
    rates.share_among(1)
    now[0] = 0.5
    assert admitted(rates, 20) == 5  # refilled at the whole rate since the last take
