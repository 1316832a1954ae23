"""What the API and refusals say: billing suspensions on the org, balances that are left."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gateway.admin.app import build_admin_app
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from policies.billing import BillingChange
from policies.decisions import usage_exceeded
from policies.model import Limits

TOKEN = "refusal-bodies-admin-token"


def test_prepaid_credit_exhausted_reports_what_is_left() -> None:
    # Regression: balance_minor was everything ever credited, not what remains.
    refusal = usage_exceeded("credit", 5_000_000, 3_500_000, datetime(2027, 1, 1, tzinfo=UTC))
    assert refusal.detail == {"balance_minor": 1, "credited_minor": 5, "used_minor": 4}
    spent = usage_exceeded("credit", 5_000_000, 5_000_000, datetime(2027, 1, 1, tzinfo=UTC))
    assert spent.detail["balance_minor"] == 0
    assert "balance 0" in spent.message


async def test_an_org_under_a_billing_suspension_says_so(tmp_path: Path) -> None:
    runtime = Runtime(
        Settings(data_dir=tmp_path, key_secret="b" * 32, admin_token=TOKEN),
        store=MemoryStore(),
        spool_dir=None,
    )
    await runtime.start()
    try:
        org = await runtime.store.create_org("late", Limits(), None)
        moment = datetime(2026, 11, 20, tzinfo=UTC)

        def suspend(state):  # type: ignore[no-untyped-def]
            return BillingChange(
                replace(state, suspended_at=moment, suspension_reason="3 days overdue")
            )

        await runtime.store.update_billing(org.id, suspend, actor="test", now=moment)
        transport = httpx.ASGITransport(app=build_admin_app(runtime))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://admin",
            headers={"authorization": f"Bearer {TOKEN}"},
        ) as admin:
            shown = (await admin.get(f"/admin/orgs/{org.id}")).json()
        # Regression: GET /admin/orgs/{id} showed only the admin's suspension.
        assert shown["suspended"] is False
        assert shown["billing_suspended"] is True
        assert shown["billing_suspension_reason"] == "3 days overdue"
    finally:
        await runtime.close()


async def test_an_org_whose_payment_is_blocked_shows_billing_suspended(tmp_path: Path) -> None:
    # Seen in review: refused with 402 billing_suspended, but the org said billing_suspended false.
    runtime = Runtime(
        Settings(data_dir=tmp_path, key_secret="b" * 32, admin_token=TOKEN),
        store=MemoryStore(),
        spool_dir=None,
    )
    await runtime.start()
    try:
        org = await runtime.store.create_org("metered", Limits(), None)
        moment = datetime(2026, 11, 20, tzinfo=UTC)

        def block(state):  # type: ignore[no-untyped-def]
            return BillingChange(replace(state, payment_status="blocked"))

        await runtime.store.update_billing(org.id, block, actor="test", now=moment)
        transport = httpx.ASGITransport(app=build_admin_app(runtime))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://admin",
            headers={"authorization": f"Bearer {TOKEN}"},
        ) as admin:
            shown = (await admin.get(f"/admin/orgs/{org.id}")).json()
        assert (shown["payment_status"], shown["billing_suspended"]) == ("blocked", True)
        assert shown["billing_suspension_reason"] == "payment blocked by the provider"
    finally:
        await runtime.close()
