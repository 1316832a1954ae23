from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.entitlements import (
    LIMITED_METERS,
    RATES,
    EntitlementError,
    Plan,
    effective_limits,
    parse_limits,
    parse_plan,
    plan_limits,
)
from policies.model import Limits, Quantities

PRO = plan_limits(
    Plan(
        "pro",
        limits={"items": 1_000, "traces.items": 600, "logs.bytes": 10_000},
        overage={"items": 100, "logs.bytes": None},
        rate_requests=50,
        grant_minor=2_000,
    )
)


def test_a_request_counts_on_the_totals_and_on_its_signal() -> None:
    assert Quantities(1, 300, 7, signal="logs").sent(None) == {
        "requests": 1, "bytes": 300, "items": 7,
        "logs.requests": 1, "logs.bytes": 300, "logs.items": 7,
    }  # fmt: skip


def test_the_plan_gives_the_limits_an_org_does_not_override() -> None:
    limits = effective_limits(PRO, Limits())
    assert limits.as_dict() == {
        "items": 1_000, "traces.items": 600, "logs.bytes": 10_000, "rate_requests": 50
    }  # fmt: skip
    assert limits.usage_limit("items") == 1_100  # the overage cap on top
    assert limits.usage_limit("traces.items") == 600  # no overage: a hard limit
    assert limits.usage_limit("logs.bytes") is None  # an uncapped overage: no bound
    assert limits.overage_cap("logs.bytes") is None


def test_an_override_is_a_number_or_null_for_unlimited() -> None:
    own = Limits.from_overrides(
        {"traces.items": 900, "logs.bytes": None, "requests": 5, "rate_requests": None}
    )
    limits = effective_limits(PRO, own)
    assert limits.as_dict() == {"requests": 5, "items": 1_000, "traces.items": 900}
    assert limits.usage_limit("logs.bytes") is None and limits.unlimited == ()
    assert dict(limits.metered())["items"] == 1_100  # the plan's overage stays on its meter


def test_an_override_of_a_limit_the_plan_lacks_is_the_org_s_own() -> None:
    limits = effective_limits(PRO, Limits.from_overrides({"metrics.items": 7}))
    assert limits.as_dict()["metrics.items"] == 7


def test_no_plan_or_an_unknown_plan_is_the_org_s_own_limits_alone() -> None:
    # An org whose plan is not in the catalog has no plan limits (the store passes None):
    # its own limits apply, and its unlimited overrides mean what no limit means.
    own = Limits.from_overrides({"bytes": 10, "items": None})
    limits = effective_limits(None, own)
    assert limits.as_dict() == {"bytes": 10} and limits.unlimited == ()
    assert effective_limits(None, Limits()) == Limits()


def test_changes_to_an_org_s_own_limits_set_lift_or_return_to_the_plan() -> None:
    own = Limits.from_overrides({"items": 5, "bytes": None})
    assert own.overrides() == {"items": 5, "bytes": None}
    changed = own.overridden({"items": "plan", "traces.items": None, "requests": 3})
    assert changed.overrides() == {"requests": 3, "bytes": None, "traces.items": None}
    assert effective_limits(PRO, changed).as_dict() == {
        "requests": 3, "items": 1_000, "logs.bytes": 10_000, "rate_requests": 50
    }  # fmt: skip


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
    for name in ("", " ", " pro", "pro\n", "x" * 65):
        with pytest.raises(EntitlementError):
            parse_plan(name, {})


def test_rates_are_limits_only_where_asked() -> None:
    assert parse_limits({"rate_bytes": 100}, rates=True) == {"rate_bytes": 100}
    with pytest.raises(EntitlementError):
        parse_limits({"rate_bytes": 100})


@given(
    plan=st.dictionaries(st.sampled_from((*LIMITED_METERS, *RATES)), st.integers(1, 10**9)),
    overrides=st.dictionaries(
        st.sampled_from((*LIMITED_METERS, *RATES)), st.none() | st.integers(1, 10**9)
    ),
)
def test_an_override_always_wins_and_absent_means_the_plan(
    plan: dict[str, int], overrides: dict[str, int | None]
) -> None:
    limits = effective_limits(Limits.from_dict(plan), Limits.from_overrides(overrides))
    for meter in (*LIMITED_METERS, *RATES):
        expected = overrides[meter] if meter in overrides else plan.get(meter)
        assert limits.as_dict().get(meter) == expected
