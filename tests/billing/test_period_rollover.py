"""A provider period is granted once, whatever the order of its end and its renewal event.

Regression: limit 3; [200, 200, 200, 402] in the period, again in the gap before the renewal
webhook (a calendar-month counter), and again after it: 9 admitted against 3. Now the gap is
the next period (same length, starting at the old end) and the renewal continues it.
Driven in process through signed Stripe webhooks, with the gateway's clock in the test's hand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ingest.app import IngestApp
from gateway.runtime import Runtime
from gateway.settings import Settings
from policies.model import Limits
from tests.fakes import Clock
from tests.security.signing import STRIPE_SECRET, stripe_headers
from tests.store.conftest import BACKENDS, Backend

DAY = 86_400
START = 1_799_971_200  # 2027-01-15T00:00:00Z: periods that are not calendar months
END = START + 30 * DAY
SPAN = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{}]}]}]}'


def stripe(event_id: str, type_: str, obj: dict[str, Any], created: int) -> bytes:
    body = {"id": event_id, "type": type_, "created": created, "data": {"object": obj}}
    return json.dumps(body).encode()


def subscribed(event_id: str, start: int, created: int, end: int | None = None) -> bytes:
    item = {"price": {"lookup_key": "pro"}, "current_period_start": start,
            "current_period_end": end or start + 30 * DAY}  # fmt: skip
    obj = {"id": "sub_1", "customer": "cus_roll", "status": "active",
           "items": {"data": [item]}}  # fmt: skip
    return stripe(event_id, "customer.subscription.updated", obj, created)


def renewed(event_id: str, start: int, created: int, end: int | None = None) -> bytes:
    line = {"type": "subscription", "subscription": "sub_1", "amount": 2900,
            "period": {"start": start, "end": end or start + 30 * DAY},
            "price": {"lookup_key": "pro", "recurring": {"usage_type": "licensed"}}}  # fmt: skip
    obj = {"id": f"in_{event_id}", "customer": "cus_roll", "subscription": "sub_1",
           "billing_reason": "subscription_cycle", "currency": "usd", "amount_paid": 2900,
           "lines": {"data": [line]}}  # fmt: skip
    return stripe(event_id, "invoice.paid", obj, created)


class Rig:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, clock: Clock) -> None:
        self.runtime, self.client, self.clock = runtime, client, clock

    async def webhook(self, body: bytes) -> None:
        headers = stripe_headers(body, int(self.clock.now))
        response = await self.client.post("/webhooks/stripe", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "applied", response.text

    async def statuses(self, key: str, n: int) -> list[int]:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        seen = [
            (await self.client.post("/v1/traces", content=SPAN, headers=headers)).status_code
            for _ in range(n)
        ]
        await self.runtime.usage.flush()  # committed, as every flush interval would
        return seen


@pytest.fixture(params=BACKENDS)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    backend: Backend = request.param(tmp_path)
    clock = Clock(START + DAY)
    settings = Settings(
        data_dir=tmp_path,
        key_secret="q" * 32,
        stripe_webhook_secret=STRIPE_SECRET,
        plans="pro",
        strict_limits=True,
        flush_interval=3600,
    )
    runtime = Runtime(settings, store=backend.new(), spool_dir=None, clock=clock)
    try:
        await runtime.start()
        transport = httpx.ASGITransport(app=IngestApp(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Rig(runtime, client, clock)
        await runtime.close()
    finally:
        await backend.cleanup()


async def tenant(rig: Rig) -> tuple[str, str]:
    store = rig.runtime.store
    org = await store.create_org("roll", Limits(requests=3), None)
    await store.set_billing_customers(org.id, {"stripe": "cus_roll"})
    key = f"igk_{org.id}"
    await store.create_key(org.id, rig.runtime.hasher(key))
    return org.id, key


async def test_the_gap_before_a_late_renewal_is_the_next_period(rig: Rig) -> None:
    _, key = await tenant(rig)
    await rig.webhook(subscribed("evt_sub", START, START + DAY))
    assert await rig.statuses(key, 4) == [200, 200, 200, 402]
    rig.clock.now = END + 60  # the period is over; its renewal event is late
    assert await rig.statuses(key, 4) == [200, 200, 200, 402]
    rig.clock.now = END + 120
    await rig.webhook(renewed("evt_paid", END, END + 100))
    assert await rig.statuses(key, 2) == [402, 402]  # the renewal continues that same counter


async def test_a_renewal_before_the_end_starts_the_next_period_once(rig: Rig) -> None:
    _, key = await tenant(rig)
    await rig.webhook(subscribed("evt_sub", START, START + DAY))
    assert await rig.statuses(key, 4) == [200, 200, 200, 402]
    rig.clock.now = END - 60
    await rig.webhook(renewed("evt_paid", END, END - 100))  # paid a minute early
    assert await rig.statuses(key, 1) == [402]  # still the old period
    rig.clock.now = END + 60
    assert await rig.statuses(key, 4) == [200, 200, 200, 402]
    await rig.webhook(subscribed("evt_sub2", END, END + 30))
    assert await rig.statuses(key, 1) == [402]


async def test_an_early_renewal_into_a_shorter_month_keeps_the_old_counter(rig: Rig) -> None:
    # Regression (adversarial review): Jan 15-Feb 15 (31 days) renewed 5 s early into Feb 15-
    # Mar 15 (28 days) opened a fresh counter for the last seconds: 10 admitted against 5.
    jan15, feb15, mar15 = 1_799_971_200, 1_802_649_600, 1_805_068_800
    _, key = await tenant(rig)
    rig.clock.now = jan15 + DAY
    await rig.webhook(subscribed("evt_sub", jan15, jan15 + DAY, end=feb15))
    assert await rig.statuses(key, 4) == [200, 200, 200, 402]
    rig.clock.now = feb15 - 5
    await rig.webhook(renewed("evt_paid", feb15, feb15 - 10, end=mar15))
    assert await rig.statuses(key, 2) == [402, 402]
    rig.clock.now = feb15 + 1
    assert await rig.statuses(key, 4) == [200, 200, 200, 402]
