from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.decisions import (
    BILLING_SUSPENDED,
    INVALID_INGEST_KEY,
    Refusal,
    rate_limited,
    store_unavailable,
    suspension_refusal,
    usage_exceeded,
)
from policies.model import OrgRouting, PaymentStatus


def test_refusal_body_puts_the_code_first_then_details() -> None:
    refusal = Refusal(400, "bad_request", detail={"message": "no"})
    assert refusal.body() == {"error": "bad_request", "message": "no"}
    assert list(refusal.body()) == ["error", "message"]


def test_refusal_is_retryable_only_with_retry_after() -> None:
    assert Refusal(503, "x", retry_after=1).retryable
    assert not Refusal(402, "x").retryable


def test_fixed_refusals() -> None:
    assert (INVALID_INGEST_KEY.status, INVALID_INGEST_KEY.code) == (401, "invalid_ingest_key")
    assert (BILLING_SUSPENDED.status, BILLING_SUSPENDED.code) == (402, "billing_suspended")
    assert not BILLING_SUSPENDED.retryable


def test_store_unavailable() -> None:
    assert store_unavailable() == Refusal(503, "store_unavailable", retry_after=1)
    assert store_unavailable(7).retry_after == 7
    assert store_unavailable().body() == {"error": "store_unavailable"}


@pytest.mark.parametrize("status", get_args(PaymentStatus))
def test_suspended_org_is_refused_whatever_it_pays(status: PaymentStatus) -> None:
    refusal = suspension_refusal(OrgRouting("org_1", suspended=True, payment_status=status))
    assert refusal is not None
    assert (refusal.status, refusal.code) == (402, "billing_suspended")


def test_blocked_payment_is_refused() -> None:
    refusal = suspension_refusal(OrgRouting("org_1", payment_status="blocked"))
    assert refusal == BILLING_SUSPENDED


@pytest.mark.parametrize("status", ["ok", "past_due"])
def test_unsuspended_org_that_is_not_blocked_is_admitted(status: PaymentStatus) -> None:
    assert suspension_refusal(OrgRouting("org_1", payment_status=status)) is None


def test_usage_exceeded() -> None:
    refusal = usage_exceeded("bytes", 1000, 1200, datetime(2024, 7, 1, tzinfo=UTC))
    assert refusal.status == 402
    assert not refusal.retryable
    assert refusal.body() == {
        "error": "usage_limit_exceeded",
        "meter": "bytes",
        "scope": "org",
        "limit": 1000,
        "used": 1200,
        "resets_at": "2024-07-01T00:00:00Z",
    }


def test_a_key_s_meter_is_refused_in_the_key_s_scope() -> None:
    body = usage_exceeded("key/key_abc/logs.items", 5, 5, datetime(2024, 7, 1, tzinfo=UTC)).body()
    assert (body["meter"], body["scope"], body["key_id"]) == ("logs.items", "key", "key_abc")


def test_usage_exceeded_resets_at_ends_in_z() -> None:
    resets_at = datetime(2025, 1, 1, 0, 0, 0, 123, tzinfo=UTC)
    body = usage_exceeded("items", 1, 1, resets_at).body()
    assert body["resets_at"] == "2025-01-01T00:00:00.000123Z"
    assert datetime.fromisoformat(body["resets_at"]) == resets_at


@pytest.mark.parametrize(
    ("wait", "retry_after"),
    [(0.0, 1), (0.01, 1), (1.0, 1), (1.01, 2), (2.5, 3), (60.0, 60)],
)
def test_rate_limited_rounds_the_wait_up(wait: float, retry_after: int) -> None:
    refusal = rate_limited("requests", wait)
    assert refusal.retry_after == retry_after


def test_rate_limited_body() -> None:
    refusal = rate_limited("bytes", 0.3)
    assert refusal.status == 429
    assert refusal.retryable
    assert refusal.body() == {"error": "rate_limited", "meter": "bytes"}


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_rate_limited_retry_after_is_the_ceiling_and_at_least_one(wait: float) -> None:
    retry_after = rate_limited("requests", wait).retry_after
    assert retry_after is not None
    assert retry_after >= 1
    assert retry_after >= wait
    assert retry_after == 1 or retry_after - wait < 1
