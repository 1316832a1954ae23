"""The billing control plane end to end: signed webhooks, the reconciler, the data plane."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.harness import Gateway, Upstream, start_gateway
from tests.refusals import error_of
from tests.security.signing import stripe_headers
from tests.services import postgres_url, unique_name

SECRET = "whsec_e2e_stripe_secret"


def stripe_header(body: bytes, secret: str = SECRET, at: int | None = None) -> str:
    t = int(time.time()) if at is None else at
    signature = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={signature}"


def invoice_event(kind: str, event_id: str, customer: str, created: int) -> bytes:
    invoice = {
        "id": f"in_{event_id}",
        "object": "invoice",
        "customer": customer,
        "subscription": "sub_1",
        "billing_reason": "subscription_cycle",
        "lines": {"data": [{"price": {"recurring": {"usage_type": "licensed"}}}]},
    }
    event = {"id": event_id, "type": kind, "created": created, "data": {"object": invoice}}
    return json.dumps(event).encode()


@pytest.fixture(params=["sqlite", "postgresql"])
def billing_gateway(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: Upstream
) -> Iterator[Gateway]:
    store_url = None
    if request.param == "postgresql":
        store_url = f"{postgres_url()}?schema={unique_name('bill')}"
    gateway = start_gateway(
        tmp_path,
        upstream.url,
        {"GATEWAY_STRIPE_WEBHOOK_SECRET": SECRET, "GATEWAY_CACHE_TTL": "1"},
        store_url=store_url,
    )
    yield gateway
    gateway.terminate()


def send(gateway: Gateway, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/traces",
        content=b"{}",
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )


def webhook(gateway: Gateway, body: bytes, header: str | None = None) -> httpx.Response:
    headers = {
        "content-type": "application/json",
        "stripe-signature": header or stripe_header(body),
    }
    return httpx.post(f"{gateway.url}/webhooks/stripe", content=body, headers=headers)


def reconcile(gateway: Gateway, now: datetime) -> list[dict[str, str]]:
    result = gateway.cli("reconcile", "--now", now.isoformat())
    assert result.returncode == 0, result.stderr.decode()
    changed: list[dict[str, str]] = json.loads(result.stdout)["changed"]
    return changed


def until(check: object, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_overdue_three_days_suspends_and_paying_restores(billing_gateway: Gateway) -> None:
    gw = billing_gateway
    org_id, key = gw.new_tenant("acme")
    assert (
        gw.admin(
            "PATCH", f"/admin/orgs/{org_id}", {"billing_customers": {"stripe": "cus_e2e"}}
        ).status_code
        == 200
    )
    assert send(gw, key).status_code == 200

    failed_at = datetime.now(UTC)
    body = invoice_event(
        "invoice.payment_failed", "evt_fail_1", "cus_e2e", int(failed_at.timestamp())
    )
    response = webhook(gw, body)
    assert (response.status_code, response.json()) == (200, {"status": "applied"})
    billing = gw.admin("GET", f"/admin/orgs/{org_id}/billing").json()
    assert billing["payment_status"] == "past_due" and billing["never_paid"] is True
    assert send(gw, key).status_code == 200, "past_due alone does not block"
    overdue_since = datetime.fromisoformat(billing["overdue_since"].replace("Z", "+00:00"))
    assert abs((overdue_since - failed_at).total_seconds()) < 60

    assert reconcile(gw, overdue_since + timedelta(days=2, hours=23, minutes=59)) == []
    assert send(gw, key).status_code == 200
    suspended = reconcile(gw, overdue_since + timedelta(days=3))
    assert suspended == [{"org_id": org_id, "action": "suspended"}]
    assert until(lambda: send(gw, key).status_code == 402)
    refused = send(gw, key)
    assert error_of(refused) == ("billing_suspended", {})

    paid = invoice_event("invoice.paid", "evt_paid_1", "cus_e2e", int(time.time()))
    assert webhook(gw, paid).json() == {"status": "applied"}
    assert until(lambda: send(gw, key).status_code == 200)
    billing = gw.admin("GET", f"/admin/orgs/{org_id}/billing").json()
    assert (billing["payment_status"], billing["suspended_at"], billing["never_paid"]) == (
        "ok",
        None,
        False,
    )
    audit = gw.admin("GET", f"/admin/audit?org_id={org_id}").json()["entries"]
    assert any(e["actor"] == "reconciler" and e["field"] == "suspended_at" for e in audit)


def test_forged_stale_and_duplicate_webhooks(billing_gateway: Gateway) -> None:
    gw = billing_gateway
    org_id, _key = gw.new_tenant("acme")
    gw.admin("PATCH", f"/admin/orgs/{org_id}", {"billing_customers": {"stripe": "cus_dup"}})
    body = invoice_event("invoice.payment_failed", "evt_dup", "cus_dup", int(time.time()))
    forged = webhook(gw, body, stripe_header(body, secret="whsec_wrong"))
    assert (forged.status_code, forged.json()["error"]) == (400, "invalid_signature")
    stale = webhook(gw, body, stripe_header(body, at=int(time.time()) - 301))
    assert (stale.status_code, stale.json()["reason"]) == (400, "stale_timestamp")
    assert gw.admin("GET", "/admin/webhooks/events").json()["events"] == []
    assert webhook(gw, body).json() == {"status": "applied"}
    assert webhook(gw, body).json() == {"status": "duplicate"}
    events = gw.admin("GET", "/admin/webhooks/events").json()["events"]
    assert [e["event_id"] for e in events] == ["evt_dup"]
    assert httpx.post(f"{gw.url}/webhooks/paddle", content=b"{}").status_code == 404


def checkout_event(event_id: str, customer: str, amount: int) -> bytes:
    session = {
        "id": f"cs_{event_id}",
        "object": "checkout.session",
        "customer": customer,
        "mode": "payment",
        "payment_status": "paid",
        "amount_total": amount,
        "currency": "usd",
    }
    event = {"id": event_id, "type": "checkout.session.completed", "created": int(time.time())}
    return json.dumps({**event, "data": {"object": session}}).encode()


def test_a_top_up_sent_before_the_link_is_credited_once(billing_gateway: Gateway) -> None:
    gw = billing_gateway
    org_id, _key = gw.new_tenant("acme")
    body = checkout_event("evt_early_topup", "cus_not_yet", 700)

    def deliver() -> httpx.Response:
        headers = stripe_headers(body, secret=SECRET)
        return httpx.post(f"{gw.url}/webhooks/stripe", content=body, headers=headers)

    def statuses() -> list[tuple[str, str | None]]:
        events = gw.admin("GET", "/admin/webhooks/events").json()["events"]
        return [(e["status"], e["org_id"]) for e in events if e["event_id"] == "evt_early_topup"]

    def balance() -> int:
        return int(gw.admin("GET", f"/admin/orgs/{org_id}/billing").json()["balance_minor"])

    first = deliver()
    assert (first.status_code, first.json()) == (200, {"status": "unlinked"})
    assert statuses() == [("unlinked", None)] and balance() == 0

    link = {"billing_customers": {"stripe": "cus_not_yet"}}
    assert gw.admin("PATCH", f"/admin/orgs/{org_id}", link).status_code == 200
    assert balance() == 700
    assert statuses() == [("applied", org_id)]

    assert gw.admin("PATCH", f"/admin/orgs/{org_id}", link).status_code == 200
    assert deliver().json() == {"status": "duplicate"}
    assert balance() == 700
