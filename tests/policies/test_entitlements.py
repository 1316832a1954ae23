from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.entitlements import (
    LIMITED_METERS,
    Entitlement,
    EntitlementError,
    Plan,
    amounts,
    effective_limits,
    effective_rates,
    meters_of,
    parse_limits,
    parse_plan,
)

PRO = Plan(
    "pro",
    limits={"items": 1_000, "traces.items": 600, "logs.bytes": 10_000},
    overage={"items": 100, "logs.bytes": None},
    rate_requests=50,
    grant_minor=2_000,
)


def test_a_request_counts_on_the_totals_and_on_its_signal() -> None:
    assert meters_of("traces") == (
        "requests", "bytes", "items", "traces.requests", "traces.bytes", "traces.items"
    )
    assert amounts("logs", 1, 300, 7) == {
        "requests": 1, "bytes": 300, "items": 7,
        "logs.requests": 1, "logs.bytes": 300, "logs.items": 7,
    }  # fmt: skip
    with pytest.raises(EntitlementError):
        meters_of("profiles")


def test_the_plan_gives_the_limits_an_org_does_not_override() -> None:
    assert effective_limits(PRO, {}) == {
        "items": Entitlement(1_000, 100),
        "traces.items": Entitlement(600, 0),
        "logs.bytes": Entitlement(10_000, None),
    }


def test_an_override_is_a_number_or_null_for_unlimited() -> None:
    limits = effective_limits(PRO, {"traces.items": 900, "logs.bytes": None, "requests": 5})
    assert limits == {
        "requests": Entitlement(5, 0),
        "items": Entitlement(1_000, 100),
        "traces.items": Entitlement(900, 0),
    }


def test_no_plan_is_the_overrides_alone_and_an_unknown_plan_is_the_caller_s_to_refuse() -> None:
    assert effective_limits(None, {"bytes": 10}) == {"bytes": Entitlement(10, 0)}
    assert effective_limits(None, {}) == {}


def test_overage_admits_up_to_its_cap_and_a_null_cap_has_no_bound() -> None:
    assert Entitlement(1_000, 100).allowance == 1_100
    assert Entitlement(1_000, 0).allowance == 1_000
    assert Entitlement(1_000, None).allowance is None
    assert Entitlement(1_000, 100).overage_used(1_050) == 50
    assert Entitlement(1_000, 100).overage_used(900) == 0


def test_rates_come_from_the_org_else_the_plan() -> None:
    assert effective_rates(PRO, {}) == {"rate_requests": 50, "rate_bytes": None}
    assert effective_rates(PRO, {"rate_requests": None}) == {
        "rate_requests": None,
        "rate_bytes": None,
    }
    assert effective_rates(None, {"rate_bytes": 9}) == {"rate_requests": None, "rate_bytes": 9}


def test_a_plan_body_is_parsed_and_bad_fields_name_themselves() -> None:
    plan = parse_plan(
        "pro",
        {"limits": {"traces.items": 5, "bytes": None}, "overage": {"traces.items": 2},
         "rate_requests": 10, "grant_minor": 500},
    )  # fmt: skip
    assert plan == Plan("pro", {"traces.items": 5}, {"traces.items": 2}, 10, None, 500)
    for body, field in [
        ({"limits": {"spans": 5}}, "limits.spans"),
        ({"limits": {"items": -1}}, "limits.items"),
        ({"limits": {"items": True}}, "limits.items"),
        ({"overage": {"items": "10"}}, "overage.items"),
        ({"rate_requests": 0}, "rate_requests"),
        ({"grant_minor": 2**63}, "grant_minor"),
        ({"plan": "x"}, "'plan'"),
        ({"limits": [1]}, "limits"),
    ]:
        with pytest.raises(EntitlementError, match=field.replace(".", r"\.")):
            parse_plan("pro", body)
    with pytest.raises(EntitlementError):
        parse_plan("", {})


def test_rates_are_limits_only_where_asked() -> None:
    assert parse_limits({"rate_bytes": 100}, rates=True) == {"rate_bytes": 100}
    with pytest.raises(EntitlementError):
        parse_limits({"rate_bytes": 100})


@given(
    plan=st.dictionaries(st.sampled_from(LIMITED_METERS), st.integers(0, 10**9)),
    overrides=st.dictionaries(
        st.sampled_from(LIMITED_METERS), st.none() | st.integers(0, 10**9)
    ),
)
def test_an_override_always_wins_and_absent_means_the_plan(
    plan: dict[str, int], overrides: dict[str, int | None]
) -> None:
    limits = effective_limits(Plan("p", plan), overrides)
    for meter in LIMITED_METERS:
        expected = overrides[meter] if meter in overrides else plan.get(meter)
        got = limits.get(meter)
        assert (got.limit if got is not None else None) == expected
