"""Provider events sent before their customer was linked are applied when it is, once.

In process, on every store backend: the ingest app (webhooks, data plane) and the admin app
share one Runtime, so a link's effect on the balance, the event list and the routing is seen
at once. The contract of the store underneath is in tests/store/test_contract_billing.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
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


@dataclass
class Gateway:
    runtime: Runtime
    ingest: httpx.AsyncClient
    admin: httpx.AsyncClient

    async def webhook(self, body: bytes) -> httpx.Response:
        return await self.ingest.post(
            "/webhooks/stripe", content=body, headers=stripe_headers(body)
        )

    async def link(self, org_id: str, customer: str) -> httpx.Response:
        body = {"billing_customers": {"stripe": customer}}
        return await self.admin.patch(f"/admin/orgs/{org_id}", json=body)

    async def billing(self, org_id: str) -> dict[str, Any]:
        response = await self.admin.get(f"/admin/orgs/{org_id}/billing")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def events(self) -> dict[str, tuple[str, str | None]]:
        rows = (await self.admin.get("/admin/webhooks/events")).json()["events"]
        return {row["event_id"]: (row["status"], row["org_id"]) for row in rows}


@pytest.fixture(params=BACKENDS)
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    backend: Backend = request.param(tmp_path)
    settings = Settings(
        data_dir=tmp_path,
        key_secret="k" * 32,
        admin_token=TOKEN,
        stripe_webhook_secret=STRIPE_SECRET,
        plans="pro",
        plan_grants="pro=1000",
        currency="eur",
        cache_ttl=3600,  # only an invalidation can show the routing a new balance
        flush_interval=3600,
    )
    runtime = Runtime(settings, store=backend.new(), spool_dir=None)
    try:
        await runtime.start()
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
        await runtime.close()
    finally:
        await backend.cleanup()


def checkout(event_id: str, customer: str, amount: int, created: int | None = None) -> bytes:
    session = {
        "id": f"cs_{event_id}",
        "object": "checkout.session",
        "customer": customer,
        "mode": "payment",
        "payment_status": "paid",
        "amount_total": amount,
        "currency": "eur",
    }
    at = int(time.time()) if created is None else created
    event = {"id": event_id, "type": "checkout.session.completed", "created": at}
    return json.dumps({**event, "data": {"object": session}}).encode()


def subscription(event_id: str, customer: str, plan: str, start: int) -> bytes:
    item = {
        "price": {"lookup_key": plan},
        "current_period_start": start,
        "current_period_end": start + 30 * 86400,
    }
    sub = {"id": "sub_1", "customer": customer, "status": "active", "items": {"data": [item]}}
    event = {"id": event_id, "type": "customer.subscription.updated", "created": start}
    return json.dumps({**event, "data": {"object": sub}}).encode()


async def priced_org(gw: Gateway) -> tuple[str, str]:
    """An org whose every request costs 1 minor unit of credit, and a key of it."""
    body = {"name": "acme"}
    org = (await gw.admin.post("/admin/orgs", json=body)).json()
    priced = {"prices": {"requests": 1_000_000}, "block_over_balance": True}
    assert (await gw.admin.patch(f"/admin/orgs/{org['id']}", json=priced)).status_code == 200
    key = (await gw.admin.post(f"/admin/orgs/{org['id']}/keys")).json()["key"]
    return org["id"], key


async def send(gw: Gateway, key: str) -> int:
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    return (await gw.ingest.post("/v1/traces", content=b"{}", headers=headers)).status_code


async def test_a_top_up_sent_before_the_link_is_credited_once_the_customer_is_linked(
    gateway: Gateway,
) -> None:
    gw = gateway
    org_id, key = await priced_org(gw)
    assert await send(gw, key) == 402  # nothing credited yet

    body = checkout("evt_topup", "cus_new", 500)
    answer = await gw.webhook(body)
    assert (answer.status_code, answer.json()) == (200, {"status": "unlinked"})
    assert await gw.events() == {"evt_topup": ("unlinked", None)}
    assert (await gw.billing(org_id))["balance_minor"] == 0

    linked = await gw.link(org_id, "cus_new")
    assert linked.status_code == 200, linked.text
    assert linked.json()["billing_customers"] == {"stripe": "cus_new"}
    assert (await gw.billing(org_id))["balance_minor"] == 500
    assert await gw.events() == {"evt_topup": ("applied", org_id)}
    assert await send(gw, key) == 200  # the link invalidated the cached routing
    assert (await gw.billing(org_id))["balance_minor"] == 499  # a request costs 1

    # Linking again, and the provider delivering the event again, credit nothing more.
    assert (await gw.link(org_id, "cus_new")).status_code == 200
    again = await gw.webhook(body)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert (await gw.billing(org_id))["balance_minor"] == 499


async def test_two_links_at_once_credit_once(gateway: Gateway) -> None:
    gw = gateway
    org_id, _key = await priced_org(gw)
    for n in range(3):
        await gw.webhook(checkout(f"evt_{n}", "cus_new", 100))
    links = await asyncio.gather(*(gw.link(org_id, "cus_new") for _ in range(2)))
    assert [link.status_code for link in links] == [200, 200]
    assert (await gw.billing(org_id))["balance_minor"] == 300
    assert set((await gw.events()).values()) == {("applied", org_id)}


async def test_the_link_decides_with_the_settings_plans_and_grants(gateway: Gateway) -> None:
    """As the webhook would have: "pro" is a plan here and grants 1000; "gold" is not one."""
    gw = gateway
    org_id, _key = await priced_org(gw)
    start = int(time.time()) - 3600
    for body in (
        subscription("evt_pro", "cus_sub", "pro", start),
        subscription("evt_gold", "cus_sub", "gold", start + 60),
    ):
        assert (await gw.webhook(body)).json() == {"status": "unlinked"}

    assert (await gw.link(org_id, "cus_sub")).status_code == 200
    billing = await gw.billing(org_id)
    assert (billing["plan"], billing["balance_minor"]) == ("pro", 1000)
    rows = (await gw.admin.get("/admin/webhooks/events")).json()["events"]
    outcomes = {row["event_id"]: (row["status"], row["reason"]) for row in rows}
    assert outcomes == {"evt_pro": ("applied", None), "evt_gold": ("applied", "plan_refused")}
