from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policies.billing import BillingEvent, MalformedEvent, parse_autumn
from tests.policies.billing.samples import (
    JUNE,
    MAY,
    NOW,
    SECRET,
    SVIX_ID,
    autumn_change,
    autumn_payload,
    millis,
    mutated,
)


def test_autumn_past_due_with_plan_and_period() -> None:
    payload = autumn_payload(autumn_change("updated", past_due=True), occurred_at=millis(NOW))
    parsed = parse_autumn(payload, SVIX_ID)
    assert parsed == BillingEvent(
        provider="autumn",
        event_id=SVIX_ID,
        type="billing.updated",
        kind="past_due_changed",
        customer_id="org_1",
        occurred_at=NOW,
        subscription_status="active",
        plan="pro",
        period=JUNE,
        past_due=True,
    )


def test_autumn_timestamp_field_is_used_when_occurred_at_is_absent() -> None:
    payload = autumn_payload(autumn_change("activated"), timestamp=millis(NOW) + 250)
    assert parse_autumn(payload, SVIX_ID).occurred_at == NOW + timedelta(milliseconds=250)


def test_autumn_without_a_timestamp_uses_the_latest_start_not_the_period_end() -> None:
    payload = autumn_payload(
        autumn_change("expired", "pro", period=MAY), autumn_change("activated", "team")
    )
    assert parse_autumn(payload, SVIX_ID).occurred_at == JUNE.start


def test_autumn_without_any_timestamp_is_the_epoch() -> None:
    assert parse_autumn(autumn_payload(), SVIX_ID).occurred_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_autumn_upgrade_picks_the_activated_plan_and_ignores_the_expired_one() -> None:
    payload = autumn_payload(
        autumn_change("expired", "pro", past_due=True, status="expired"),
        autumn_change("activated", "team"),
    )
    parsed = parse_autumn(payload, SVIX_ID)
    assert (parsed.plan, parsed.past_due, parsed.subscription_status) == ("team", False, "active")


def test_autumn_scheduled_change_counts_for_past_due_but_is_not_the_plan() -> None:
    payload = autumn_payload(autumn_change("scheduled", "team", past_due=True))
    parsed = parse_autumn(payload, SVIX_ID)
    assert (parsed.past_due, parsed.plan, parsed.period) == (True, None, None)


def test_autumn_only_expired_reports_the_expired_plan() -> None:
    parsed = parse_autumn(autumn_payload(autumn_change("expired", "pro")), SVIX_ID)
    assert (parsed.plan, parsed.subscription_status, parsed.past_due) == ("pro", "expired", False)


def test_autumn_other_types_are_ignored() -> None:
    parsed = parse_autumn({"type": "customer.products.updated", "data": {}}, SVIX_ID)
    assert (parsed.kind, parsed.event_id) == ("ignored", SVIX_ID)


_AUTUMN = autumn_payload(autumn_change("activated"))
_ASUB = ("data", "plan_changes", 0, "subscription")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("type",), ..., id="no-type"),
        pytest.param(("data",), ..., id="no-data"),
        pytest.param(("data", "customer_id"), ..., id="no-customer"),
        pytest.param(("data", "plan_changes"), SECRET, id="changes-not-list"),
        pytest.param(("data", "plan_changes", 0, "action"), ..., id="no-action"),
        pytest.param((*_ASUB, "plan_id"), 5, id="int-plan"),
        pytest.param((*_ASUB, "past_due"), "true", id="string-past-due"),
        pytest.param((*_ASUB, "started_at"), 1.5e12, id="float-ms"),
        pytest.param((*_ASUB, "current_period_end"), 0, id="period-backwards"),
    ],
)
def test_autumn_malformed(path: tuple[str | int, ...], value: Any) -> None:
    with pytest.raises(MalformedEvent) as excinfo:
        parse_autumn(mutated(_AUTUMN, path, value), SVIX_ID)
    assert SECRET not in str(excinfo.value)


def test_autumn_needs_the_svix_id() -> None:
    with pytest.raises(MalformedEvent):
        parse_autumn(_AUTUMN, "")
