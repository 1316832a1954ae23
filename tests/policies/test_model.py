from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from policies.model import (
    METERS,
    PAYMENT_STATUSES,
    Limits,
    OrgRouting,
    Period,
    Prices,
    Quantities,
)


def test_meters_are_in_lock_order() -> None:
    assert METERS == ("requests", "bytes", "items", "credit")


def test_payment_statuses() -> None:
    assert frozenset({"ok", "past_due", "blocked"}) == PAYMENT_STATUSES


def test_usage_limit_reads_each_meter() -> None:
    limits = Limits(requests=1, bytes=2, items=None)
    assert limits.usage_limit("requests") == 1
    assert limits.usage_limit("bytes") == 2
    assert limits.usage_limit("items") is None


def test_metered_follows_lock_order_not_argument_order() -> None:
    limits = Limits(items=3, bytes=2, requests=1)
    assert limits.metered() == (("requests", 1), ("bytes", 2), ("items", 3))


def test_metered_skips_unlimited_and_keeps_zero() -> None:
    limits = Limits(requests=None, bytes=0, items=7, rate_requests=5)
    assert limits.metered() == (("bytes", 0), ("items", 7))


def test_metered_ignores_rates() -> None:
    assert Limits(rate_requests=10, rate_bytes=100).metered() == ()


def test_as_dict_omits_unlimited_and_keeps_order() -> None:
    limits = Limits(rate_bytes=5, items=3, requests=1, bytes=None, rate_requests=0)
    result = limits.as_dict()
    assert result == {"requests": 1, "items": 3, "rate_requests": 0, "rate_bytes": 5}
    assert list(result) == ["requests", "items", "rate_requests", "rate_bytes"]


def test_as_dict_of_all_limits() -> None:
    limits = Limits(requests=1, bytes=2, items=3, rate_requests=4, rate_bytes=5)
    assert list(limits.as_dict().items()) == [
        ("requests", 1),
        ("bytes", 2),
        ("items", 3),
        ("rate_requests", 4),
        ("rate_bytes", 5),
    ]


def test_as_dict_of_no_limits_is_empty() -> None:
    assert Limits().as_dict() == {}


def test_limits_are_frozen() -> None:
    limits = Limits(requests=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.requests = 2  # type: ignore[misc]


def test_period_key_is_start_isoformat() -> None:
    period = Period(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
    assert period.key == "2024-03-01T00:00:00+00:00"


def test_org_routing_defaults_admit_everything() -> None:
    routing = OrgRouting("org_1")
    assert routing.upstream is None
    assert routing.limits == Limits()
    assert routing.suspended is False
    assert routing.payment_status == "ok"
    assert routing.shadow is False


def test_quantities_default_to_one_request() -> None:
    assert Quantities().as_dict() == {"requests": 1, "bytes": 0, "items": 0, "credit": 0}


def test_quantities_of_each_meter() -> None:
    q = Quantities(requests=2, bytes=300, items=4)
    assert [q.of(m) for m in METERS] == [2, 300, 4, 0]
    assert q.as_dict() == {"requests": 2, "bytes": 300, "items": 4, "credit": 0}


def test_priced_quantities_carry_their_cost_in_millionths_of_a_minor_unit() -> None:
    prices = Prices(requests=10, bytes=2, items=300, block_over_balance=True)
    q = Quantities(requests=1, bytes=1_000, items=5).priced(prices)
    assert q.credit == 1 * 10 + 1_000 * 2 + 5 * 300
    assert isinstance(q.credit, int)
    assert Quantities(1, 10, 1).priced(Prices()).credit == 0
