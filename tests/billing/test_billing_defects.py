"""Billing defects seen on a running gateway, each reproduced through signed provider webhooks.

In process, on every store backend: the ingest app (webhooks, data plane) and the admin app
share one Runtime. A test that changes the settings starts a second Runtime on the same data,
as an operator's restart would. Bodies are shaped like the providers' own (trimmed to the
fields that matter); the pure decisions are in tests/policies/billing/.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.ingest.app import IngestApp
from gateway.runtime import Runtime
from gateway.settings import Settings
from tests.security.signing import STRIPE_SECRET, stripe_headers
from tests.store.conftest import BACKENDS, Backend

TOKEN = "admin-token-for-tests"
DAY = 86400
INT64_MAX = 2**63 - 1


@dataclass
class Gateway:
    runtime: Runtime
    ingest: httpx.AsyncClient
    admin: httpx.AsyncClient

    async def webhook(self, body: bytes) -> httpx.Response:
        return await self.ingest.post(
            "/webhooks/stripe", content=body, headers=stripe_headers(body)
        )

    async def org(self, customer: str, *, priced: bool = False) -> tuple[str, str]:
        """A new org linked to ``customer``, and an ingest key of it."""
        org = (await self.admin.post("/admin/orgs", json={"name": customer})).json()
        patch: dict[str, Any] = {"billing_customers": {"stripe": customer}}
        if priced:
            patch |= {"prices": {"requests": 1_000_000}, "block_over_balance": True}
        linked = await self.admin.patch(f"/admin/orgs/{org['id']}", json=patch)
        assert linked.status_code == 200, linked.text
        key = (await self.admin.post(f"/admin/orgs/{org['id']}/keys")).json()["key"]
        return org["id"], key

    async def billing(self, org_id: str) -> dict[str, Any]:
        response = await self.admin.get(f"/admin/orgs/{org_id}/billing")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def events(self) -> dict[str, tuple[str, str | None]]:
        rows = (await self.admin.get("/admin/webhooks/events")).json()["events"]
        return {row["event_id"]: (row["status"], row["reason"]) for row in rows}

    async def audit(self, org_id: str) -> list[tuple[str, str | None, str | None]]:
        entries = (await self.admin.get(f"/admin/audit?org_id={org_id}")).json()["entries"]
        return [(row["field"], row["old"], row["new"]) for row in entries]

    async def send(self, key: str) -> int:
        headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        response = await self.ingest.post("/v1/traces", content=b"{}", headers=headers)
        return response.status_code


Start = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture(params=BACKENDS)
async def start(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Start]:
    """Starts gateways on one backend's data; keyword arguments override the settings."""
    backend: Backend = request.param(tmp_path)

    @asynccontextmanager
    async def running(**overrides: Any) -> AsyncIterator[Gateway]:
        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "key_secret": "k" * 32,
            "admin_token": TOKEN,
            "stripe_webhook_secret": STRIPE_SECRET,
            "plans": "pro",
            "plan_grants": "pro=1000",
            "cache_ttl": 3600,  # only an invalidation can show the routing a change
            "flush_interval": 3600,
            "gate_timeout": 30,  # a loaded machine must not turn a slow store into fail-open
            "lookup_timeout": 30,
        }
        runtime = Runtime(Settings(**(values | overrides)), store=backend.new(), spool_dir=None)
        await runtime.start()
        try:
            async with (
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=IngestApp(runtime)), base_url="http://gw"
                ) as ingest,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=build_admin_app(runtime)),
                    base_url="http://admin",
                    headers={"authorization": f"Bearer {TOKEN}"},
                ) as admin,
            ):
                yield Gateway(runtime, ingest, admin)
        finally:
            await runtime.close()

    try:
        yield running
    finally:
        await backend.cleanup()


# --- Stripe bodies ---------------------------------------------------------------------------


def stripe(event_id: str, type_: str, obj: dict[str, Any], created: int) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "livemode": False,
        "type": type_,
        "data": {"object": obj, "previous_attributes": {}},
    }
    return json.dumps(event).encode()


def line(start: int, *, metered: bool = False, plan: str = "pro") -> dict[str, Any]:
    usage = "metered" if metered else "licensed"
    return {
        "id": f"il_{usage}_{start}",
        "object": "line_item",
        "type": "subscription",
        "subscription": "sub_1",
        "amount": 0 if metered else 2900,
        "period": {"start": start, "end": start + 30 * DAY},
        "price": {
            "id": f"price_{plan}_{usage}",
            "lookup_key": plan if not metered else f"{plan}_usage",
            "recurring": {"interval": "month", "usage_type": usage},
        },
    }


def invoice(
    event_id: str,
    type_: str,
    customer: str,
    lines: list[dict[str, Any]],
    created: int,
    *,
    invoice_id: str = "in_1",
    billing_reason: str = "subscription_cycle",
) -> bytes:
    obj = {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "subscription": "sub_1",
        "billing_reason": billing_reason,
        "currency": "usd",
        "amount_due": 2900,
        "amount_paid": 2900 if type_ == "invoice.paid" else 0,
        "status": "paid" if type_ == "invoice.paid" else "open",
        "lines": {"object": "list", "data": lines, "has_more": False},
    }
    return stripe(event_id, type_, obj, created)


def subscription(
    event_id: str,
    customer: str,
    plan: str,
    start: int,
    created: int,
    *,
    status: str = "active",
    cancel_at_period_end: bool = False,
) -> bytes:
    item = {
        "id": "si_1",
        "object": "subscription_item",
        "price": {"id": f"price_{plan}", "lookup_key": plan},
        "quantity": 1,
        "current_period_start": start,
        "current_period_end": start + 30 * DAY,
    }
    obj = {
        "id": "sub_1",
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "latest_invoice": "in_1",
        "items": {"object": "list", "data": [item]},
    }
    return stripe(event_id, "customer.subscription.updated", obj, created)


def checkout(event_id: str, customer: str, amount: int, currency: str) -> bytes:
    session = {
        "id": f"cs_{event_id}",
        "object": "checkout.session",
        "customer": customer,
        "mode": "payment",
        "payment_status": "paid",
        "status": "complete",
        "amount_total": amount,
        "currency": currency,
    }
    return stripe(event_id, "checkout.session.completed", session, int(time.time()))


def refund(event_id: str, customer: str, refunded: int, currency: str) -> bytes:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "amount": 5000,
        "amount_refunded": refunded,
        "currency": currency,
        "customer": customer,
        "refunded": False,
    }
    return stripe(event_id, "charge.refunded", charge, int(time.time()))


async def status_of(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()


# --- (3) an unknown plan refuses the plan change only ----------------------------------------


async def test_past_due_with_an_unknown_plan_is_applied_and_a_resend_after_the_fix_applies_the_plan(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: past_due with an unknown plan left payment_status ok, and the resend after
    fixing GATEWAY_PLANS answered duplicate."""
    now = int(time.time())
    first, second = now - 40 * DAY, now - 10 * DAY
    past_due = subscription(
        "evt_enterprise", "cus_1", "enterprise", second, now, status="past_due",
        cancel_at_period_end=True,
    )  # fmt: skip
    async with start() as gw:
        org_id, key = await gw.org("cus_1")
        pro = subscription("evt_pro", "cus_1", "pro", first, now - 60)
        assert await status_of(await gw.webhook(pro)) == (200, {"status": "applied"})
        caplog.set_level(logging.WARNING, logger="gateway.billing")
        assert await status_of(await gw.webhook(past_due)) == (200, {"status": "applied"})
        billing = await gw.billing(org_id)
        assert (billing["payment_status"], billing["plan"]) == ("past_due", "pro")
        assert billing["overdue_since"] is not None and billing["cancel_at_period_end"] is True
        assert billing["period_start"].startswith(time.strftime("%Y-%m-%d", time.gmtime(second)))
        assert billing["balance_minor"] == 1000  # the new period's grant waits for its plan
        assert (await gw.events())["evt_enterprise"] == ("applied", "plan_refused")
        assert ("plan_refused", "pro", "enterprise") in await gw.audit(org_id)
        assert "'enterprise' is not in GATEWAY_PLANS" in caplog.text
        assert await gw.send(key) == 200  # past_due has its grace

    # The operator adds the plan and resends the event from the provider's dashboard.
    async with start(plans="pro,enterprise", plan_grants="pro=1000,enterprise=5000") as gw:
        assert await status_of(await gw.webhook(past_due)) == (200, {"status": "applied"})
        billing = await gw.billing(org_id)
        assert (billing["payment_status"], billing["plan"]) == ("past_due", "enterprise")
        assert billing["balance_minor"] == 6000
        assert (await gw.events())["evt_enterprise"] == ("applied", None)
        assert ("plan", "pro", "enterprise") in await gw.audit(org_id)
        # Applied now: one more delivery is a duplicate and grants nothing more.
        assert await status_of(await gw.webhook(past_due)) == (200, {"status": "duplicate"})
        assert (await gw.billing(org_id))["balance_minor"] == 6000


async def test_a_resend_while_the_plan_is_still_unknown_changes_nothing(start: Start) -> None:
    now = int(time.time())
    body = subscription("evt_gold", "cus_1", "gold", now - DAY, now)
    async with start() as gw:
        org_id, _key = await gw.org("cus_1")
        await gw.webhook(body)
        before = await gw.billing(org_id)
        assert await status_of(await gw.webhook(body)) == (200, {"status": "refused"})
        assert await gw.billing(org_id) == before
        assert (await gw.events())["evt_gold"] == ("applied", "plan_refused")


# --- (4) plan grants are per org and granted once --------------------------------------------


async def test_two_orgs_whose_periods_start_at_the_same_second_each_get_their_grant(
    start: Start,
) -> None:
    """Regression: the grant's key named the period alone, so the second org got 0."""
    now = int(time.time())
    async with start() as gw:
        orgs = [(await gw.org(customer))[0] for customer in ("cus_a", "cus_b")]
        for n, customer in enumerate(("cus_a", "cus_b")):
            body = subscription(f"evt_{n}", customer, "pro", now - DAY, now)
            assert await status_of(await gw.webhook(body)) == (200, {"status": "applied"})
        assert [(await gw.billing(org_id))["balance_minor"] for org_id in orgs] == [1000, 1000]


@pytest.mark.parametrize("at_once", [False, True], ids=["one-then-the-other", "at-once"])
async def test_a_first_subscription_grants_the_new_plan_once_whichever_event_lands_first(
    start: Start, at_once: bool
) -> None:
    """Regression: with invoice.paid first, the period was claimed on the free plan and the
    subscription update found it claimed: no grant (0 in 3 of 8 trials)."""
    now = int(time.time())
    period = now - 3600
    async with start() as gw:
        for invoice_first in (True, False):
            customer = f"cus_{invoice_first}"
            org_id, _key = await gw.org(customer)
            paid = invoice(f"evt_paid_{customer}", "invoice.paid", customer, [line(period)], now)
            updated = subscription(f"evt_sub_{customer}", customer, "pro", period, now)
            bodies = [paid, updated] if invoice_first else [updated, paid]
            if at_once:
                answers = list(await asyncio.gather(*(gw.webhook(body) for body in bodies)))
            else:
                answers = [await gw.webhook(body) for body in bodies]
            assert [answer.json() for answer in answers] == [{"status": "applied"}] * 2
            billing = await gw.billing(org_id)
            assert (billing["plan"], billing["balance_minor"]) == ("pro", 1000), invoice_first
            # The events delivered again grant nothing more.
            for body in bodies:
                assert (await gw.webhook(body)).json() == {"status": "duplicate"}
            assert (await gw.billing(org_id))["balance_minor"] == 1000


# --- (7) invoices, currencies, amounts --------------------------------------------------------


async def test_a_failed_renewal_with_a_licensed_and_a_metered_line_is_past_due_with_grace(
    start: Start,
) -> None:
    """Regression: any metered line made the invoice a usage invoice, blocked at once (402)."""
    now = int(time.time())
    mixed = [line(now - 3600), line(now - 3600 - 30 * DAY, metered=True)]
    async with start() as gw:
        org_id, key = await gw.org("cus_1")
        body = invoice("evt_failed", "invoice.payment_failed", "cus_1", mixed, now)
        assert (await gw.webhook(body)).json() == {"status": "applied"}
        assert (await gw.billing(org_id))["payment_status"] == "past_due"
        assert await gw.send(key) == 200

        # An invoice whose lines are all metered still blocks at once.
        usage = [line(now - 30 * DAY, metered=True)]
        body = invoice("evt_usage", "invoice.payment_failed", "cus_1", usage, now + 1,
                       invoice_id="in_usage")  # fmt: skip
        assert (await gw.webhook(body)).json() == {"status": "applied"}
        assert (await gw.billing(org_id))["payment_status"] == "blocked"
        assert await gw.send(key) == 402


async def test_a_same_second_failure_of_a_paid_invoice_is_ignored(start: Start) -> None:
    """Regression: invoice.paid, then a same-second invoice.payment_failed for the same
    invoice, left the org blocked and 402."""
    now = int(time.time())
    usage = [line(now - 30 * DAY, metered=True)]
    async with start() as gw:
        org_id, key = await gw.org("cus_1")
        paid = invoice("evt_paid", "invoice.paid", "cus_1", usage, now)
        failed = invoice("evt_failed", "invoice.payment_failed", "cus_1", usage, now)
        assert (await gw.webhook(paid)).json() == {"status": "applied"}
        assert (await gw.webhook(failed)).json() == {"status": "refused"}
        assert (await gw.billing(org_id))["payment_status"] == "ok"
        assert await gw.send(key) == 200
        assert (await gw.events())["evt_failed"] == ("refused", "invoice already paid")
        # Another invoice failing the same second loses the tie to the payment as well.
        other = invoice("evt_other", "invoice.payment_failed", "cus_1", usage, now,
                        invoice_id="in_2")  # fmt: skip
        assert (await gw.webhook(other)).json() == {"status": "refused"}
        assert (await gw.billing(org_id))["payment_status"] == "ok"


async def test_a_top_up_or_refund_in_another_currency_is_refused_logged_and_audited(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a ¥1000 top-up was credited as 1000 cents."""
    caplog.set_level(logging.WARNING, logger="gateway.billing")
    async with start() as gw:
        org_id, _key = await gw.org("cus_1")
        answer = await gw.webhook(checkout("evt_yen", "cus_1", 1000, "jpy"))
        assert await status_of(answer) == (200, {"status": "refused"})
        assert (await gw.billing(org_id))["balance_minor"] == 0
        assert (await gw.events())["evt_yen"] == ("refused", "other currency")
        assert ("credit_refused", None, "1000 jpy") in await gw.audit(org_id)
        assert "currency 'jpy' is not GATEWAY_CURRENCY (usd)" in caplog.text

        # The ledger's own currency, in any case, is credited; a refund in yen is refused.
        assert (await gw.webhook(checkout("evt_usd", "cus_1", 5000, "USD"))).status_code == 200
        assert (await gw.billing(org_id))["balance_minor"] == 5000
        answer = await gw.webhook(refund("evt_refund", "cus_1", 1000, "jpy"))
        assert await status_of(answer) == (200, {"status": "refused"})
        assert (await gw.billing(org_id))["balance_minor"] == 5000


async def test_the_ledger_currency_is_gateway_currency(start: Start) -> None:
    async with start(currency="JPY") as gw:
        org_id, _key = await gw.org("cus_1")
        assert (await gw.webhook(checkout("evt_yen", "cus_1", 1000, "jpy"))).json() == {
            "status": "applied"
        }
        assert (await gw.webhook(checkout("evt_usd", "cus_1", 1000, "usd"))).json() == {
            "status": "refused"
        }
        assert (await gw.billing(org_id))["balance_minor"] == 1000


@pytest.mark.parametrize("amount", [2**63, 10**30], ids=["int64-max+1", "10e30"])
async def test_a_top_up_beyond_the_integer_range_is_refused_with_400_and_recorded(
    start: Start, amount: int
) -> None:
    """Regression: a 500 on SQLite (OverflowError) and a 503 retry loop on PostgreSQL."""
    async with start() as gw:
        org_id, _key = await gw.org("cus_1")
        body = checkout("evt_huge", "cus_1", amount, "usd")
        answer = await gw.webhook(body)
        assert await status_of(answer) == (
            400,
            {"error": "bad_request", "message": "amount out of range"},
        )
        assert (await gw.events())["evt_huge"] == ("refused", "amount out of range")
        assert next(row[0] for row in await gw.audit(org_id)) == "credit_refused"
        assert (await gw.billing(org_id))["balance_minor"] == 0
        # Recorded: the provider's retry is a duplicate, not another failure.
        assert (await gw.webhook(body)).json() == {"status": "duplicate"}


async def test_a_balance_beyond_the_integer_range_is_refused_with_400_and_recorded(
    start: Start,
) -> None:
    half = 2**62
    async with start() as gw:
        org_id, key = await gw.org("cus_1", priced=True)
        assert (await gw.webhook(checkout("evt_1", "cus_1", half, "usd"))).status_code == 200
        assert (await gw.webhook(checkout("evt_2", "cus_1", half - 1, "usd"))).status_code == 200
        assert (await gw.billing(org_id))["balance_minor"] == INT64_MAX
        answer = await gw.webhook(checkout("evt_3", "cus_1", 1, "usd"))
        assert await status_of(answer) == (
            400,
            {"error": "bad_request", "message": "balance out of range"},
        )
        assert (await gw.events())["evt_3"] == ("refused", "balance out of range")
        assert (await gw.billing(org_id))["balance_minor"] == INT64_MAX
        # A refund still comes out of it; the balance is spendable, and the spending counted
        # (in millionths, a balance this large is capped at the counters' range).
        assert (await gw.webhook(refund("evt_4", "cus_1", 5, "usd"))).status_code == 200
        assert (await gw.billing(org_id))["balance_minor"] == INT64_MAX - 5
        assert await gw.send(key) == 200
        assert await gw.runtime.usage.flush() == 0
        assert (await gw.billing(org_id))["balance_minor"] == INT64_MAX - 6
