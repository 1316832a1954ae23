"""Prepaid credit through the real ingest app: top-ups by webhook, spending by the gates."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.ingest.app import IngestApp
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.sqlite import SQLiteStore
from tests.refusals import code_of

SECRET = "whsec_credit_tests"
TOKEN = "admin-token"


def signed(event: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(event).encode()
    t = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "stripe-signature": f"t={t},v1={digest}"}
    return {"content": body, "headers": headers}


def topup(event_id: str, session: str, amount: int) -> dict[str, Any]:
    obj = {
        "id": session,
        "object": "checkout.session",
        "customer": "cus_credit",
        "mode": "payment",
        "payment_status": "paid",
        "amount_total": amount,
        "currency": "usd",
        "metadata": {"credit_minor": "999999"},
    }
    return {
        "id": event_id,
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": obj},
    }


@pytest.fixture
async def env(
    tmp_path: Path,
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient, httpx.AsyncClient]]:
    settings = Settings(
        data_dir=tmp_path,
        key_secret="k" * 32,
        admin_token=TOKEN,
        stripe_webhook_secret=SECRET,
        flush_interval=3600,
        # SQLite works in a thread: a loaded machine must not turn a slow write into fail-open.
        gate_timeout=30,
        lookup_timeout=30,
    )
    runtime = Runtime(settings, store=SQLiteStore(str(tmp_path / "gw.db")), spool_dir=None)
    await runtime.start()
    ingest = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=IngestApp(runtime)), base_url="http://gw"
    )
    admin = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_admin_app(runtime)),
        base_url="http://admin",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    yield runtime, ingest, admin
    await ingest.aclose()
    await admin.aclose()
    await runtime.close()


async def priced_org(admin: httpx.AsyncClient) -> tuple[str, str]:
    org = (await admin.post("/admin/orgs", json={"name": "prepaid"})).json()
    patch = {
        "billing_customers": {"stripe": "cus_credit"},
        # 1 minor unit per request (1,000,000 per million), bytes and items free.
        "prices": {"requests": 1_000_000},
        "block_over_balance": True,
    }
    r = await admin.patch(f"/admin/orgs/{org['id']}", json=patch)
    assert r.status_code == 200, r.text
    assert r.json()["prices"] == {"requests": 1_000_000}
    key = (await admin.post(f"/admin/orgs/{org['id']}/keys")).json()["key"]
    return org["id"], key


def otlp(key: str) -> dict[str, Any]:
    return {"content": b"{}", "headers": {"content-type": "application/json", "x-ingest-key": key}}


async def test_spending_stops_at_the_balance_and_a_topup_restores_it(env: Any) -> None:
    _, ingest, admin = env
    org_id, key = await priced_org(admin)
    r = await ingest.post("/v1/traces", **otlp(key))
    assert (r.status_code, code_of(r)) == (402, "prepaid_credit_exhausted")

    r = await ingest.post("/webhooks/stripe", **signed(topup("evt_top_1", "cs_1", 5)))
    assert r.json() == {"status": "applied"}
    statuses = [(await ingest.post("/v1/traces", **otlp(key))).status_code for _ in range(7)]
    assert statuses == [200] * 5 + [402] * 2
    billing = (await admin.get(f"/admin/orgs/{org_id}/billing")).json()
    assert billing["balance_minor"] == 0

    # amount_total wins over metadata; the same event again changes nothing.
    await ingest.post("/webhooks/stripe", **signed(topup("evt_top_2", "cs_2", 3)))
    await ingest.post("/webhooks/stripe", **signed(topup("evt_top_2", "cs_2", 3)))
    statuses = [(await ingest.post("/v1/traces", **otlp(key))).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 402]


async def test_a_refund_takes_the_money_out_of_the_balance(env: Any) -> None:
    _, ingest, admin = env
    org_id, _ = await priced_org(admin)
    await ingest.post("/webhooks/stripe", **signed(topup("evt_t", "cs_r", 1000)))
    charge = {"id": "ch_1", "object": "charge", "customer": "cus_credit", "amount_refunded": 400}
    event = {
        "id": "evt_ref_1",
        "type": "charge.refunded",
        "created": int(time.time()),
        "data": {"object": charge},
    }
    assert (await ingest.post("/webhooks/stripe", **signed(event))).json() == {"status": "applied"}
    assert (await admin.get(f"/admin/orgs/{org_id}/billing")).json()["balance_minor"] == 600


async def test_fifty_concurrent_deliveries_of_one_event_credit_once(env: Any) -> None:
    runtime, ingest, admin = env
    org_id, _ = await priced_org(admin)
    request = signed(topup("evt_once", "cs_once", 70))
    responses = await asyncio.gather(
        *(ingest.post("/webhooks/stripe", **request) for _ in range(50))
    )
    outcomes = sorted(r.json()["status"] for r in responses)
    assert outcomes == ["applied"] + ["duplicate"] * 49
    assert await runtime.store.balance(org_id) == 70
