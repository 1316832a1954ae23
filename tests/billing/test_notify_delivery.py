"""Usage notifications end to end in process: two replicas on one store drive an org across
50/80/100% and its limit (and a forecast that it will get there) while the receiver is down;
both restart; once the receiver is up, every event arrives exactly once, each verified with
the svix library."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from svix.webhooks import Webhook

from gateway.admin.app import build_admin_app
from gateway.errors import ConfigError, StoreError
from gateway.ingest.app import IngestApp
from gateway.ingest.keys import generate_key
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.records import UsageBatch
from policies.billing import BillingChange, BillingState
from policies.model import Limits
from tests.fakes import Clock, FlakyStore, MemoryUpstream
from tests.store.conftest import DURABLE_BACKENDS, Backend

SECRET = "whsec_" + base64.b64encode(b"notification signing secret, 32b").decode()
SPANS = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{},{}]}]}]}'
TOKEN = "notify-admin-token"


class Receiver:
    """The receiver's HTTP endpoint: down (503) or up, verifying every delivery."""

    def __init__(self) -> None:
        self.up = False
        self.attempts = 0
        self.events: list[dict[str, Any]] = []
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if not self.up:
            return httpx.Response(503)
        Webhook(SECRET).verify(request.content, dict(request.headers))
        event = json.loads(request.content)
        assert event["id"] == request.headers["webhook-id"]
        self.events.append(event)
        self.urls.append(str(request.url))
        return httpx.Response(204)


async def until(check: Callable[[], Any], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture(params=DURABLE_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    made: Backend = request.param(tmp_path)
    return made


async def test_each_threshold_and_the_limit_arrive_once_through_an_outage_and_restarts(
    backend: Backend, tmp_path: Path
) -> None:
    receiver = Receiver()
    clock = Clock(time.time())
    # 2 spans of 10 in the first seconds: at the weighted 24 h rate that is at most about 2.1
    # days to the limit, so a forecast is sent unless the month ends sooner.
    month_end = datetime.fromtimestamp(clock(), UTC).replace(day=28) + timedelta(days=4)
    month_end = month_end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    forecast = (month_end.timestamp() - clock()) > 3 * 86400
    expected = 5 if forecast else 4
    settings = Settings(
        data_dir=tmp_path,
        key_secret="s" * 32,
        admin_token=TOKEN,
        upstream_url="http://upstream.test",
        flush_interval=0.05,
        notify_url="http://receiver.test/hooks",
        notify_secret=SECRET,
        notify_interval=0.05,
    )

    def replica() -> Runtime:
        transport = httpx.MockTransport(receiver)
        return Runtime(
            settings,
            store=backend.new(),
            upstream=MemoryUpstream(),
            spool_dir=None,
            clock=clock,
            notify_transport=transport,
        )

    try:
        a, b = replica(), replica()
        await a.start()
        await b.start()
        store: Store = a.store
        org = await store.create_org("acme", Limits(items=10), None)
        key = generate_key()
        await store.create_key(org.id, a.hasher(key))
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=IngestApp(r)), base_url="http://gw")
            for r in (a, b)
        ]
        # 2 spans a request: 6 spans cross 50%, 8 cross 80%, 10 reach the limit, then 402.
        for n, expect in enumerate([200, 200, 200, 200, 200, 402, 402]):
            sent = await clients[n % 2].post("/v1/traces", content=SPANS, headers=headers)
            assert sent.status_code == expect, (n, sent.text)
            await a.usage.flush()
            await b.usage.flush()
            await asyncio.sleep(0.15)  # the notifiers look at what was used
        for client in clients:
            await client.aclose()

        async def all_events() -> bool:
            return len(await store.notifications(org.id, 100)) == expected

        await until(all_events)
        await until(lambda: _true(receiver.attempts >= expected))  # every one tried, refused
        assert receiver.events == []
        await a.close()
        await b.close()

        # Both replicas restart; the receiver is up; the retries come due.
        receiver.up = True
        clock.advance(60)
        c, d = replica(), replica()
        await c.start()
        await d.start()
        try:

            async def delivered() -> bool:
                rows = await c.store.notifications(org.id, 100)
                return all(row["delivered_at"] is not None for row in rows)

            await until(delivered)
            kinds = sorted((e["type"], e["data"]["threshold"]) for e in receiver.events)
            assert kinds == [
                *([("usage.forecast", 100)] if forecast else []),
                ("usage.limit_reached", 100),
                ("usage.threshold", 50),
                ("usage.threshold", 80),
                ("usage.threshold", 100),
            ]
            assert len({e["id"] for e in receiver.events}) == expected  # once each
            for ahead in (e for e in receiver.events if e["type"] == "usage.forecast"):
                assert ahead["data"]["forecast_exhausted_at"] <= ahead["data"]["period_end"]
            reached = next(e for e in receiver.events if e["type"] == "usage.limit_reached")
            assert reached["data"] | {"used": 0} == {
                **reached["data"],
                "org_id": org.id,
                "key_id": None,
                "meter": "items",
                "limit": 10,
                "used": 0,
            }
            admin = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=build_admin_app(c)),
                base_url="http://admin",
                headers={"authorization": f"Bearer {TOKEN}"},
            )
            async with admin:
                listed = (await admin.get("/admin/notifications", params={"org_id": org.id})).json()
            rows = listed["notifications"]
            assert len(rows) == expected and all(row["attempts"] >= 2 for row in rows)
            assert {row["event"]["id"] for row in rows} == {e["id"] for e in receiver.events}
            metric = c.metrics.notifications.labels("delivered")._value.get()
            assert metric + d.metrics.notifications.labels("delivered")._value.get() == expected
        finally:
            await c.close()
            await d.close()
    finally:
        await backend.cleanup()


async def _true(value: bool) -> bool:
    return value


async def test_a_billing_suspension_is_delivered_to_the_configured_url(
    backend: Backend, tmp_path: Path
) -> None:
    receiver = Receiver()
    receiver.up = True
    settings = Settings(
        data_dir=tmp_path,
        key_secret="s" * 32,
        upstream_url="http://upstream.test",
        notify_url="http://receiver.test/hooks",
        notify_secret=SECRET,
        notify_interval=0.05,
        reconcile_interval=3600,  # its first pass runs at start, before the suspension
    )
    runtime = Runtime(
        settings,
        store=backend.new(),
        upstream=MemoryUpstream(),
        spool_dir=None,
        notify_transport=httpx.MockTransport(receiver),
    )
    await runtime.start()
    try:
        await asyncio.sleep(0.2)  # the reconciler's first pass is over
        org = await runtime.store.create_org("late payer", Limits(), None)
        began = datetime(2026, 12, 1, tzinfo=UTC)

        def suspend(state: BillingState) -> BillingChange:
            return BillingChange(replace(state, suspended_at=began, suspension_reason="overdue"))

        await runtime.store.update_billing(org.id, suspend, actor="reconciler", now=began)
        await until(lambda: _true(len(receiver.events) == 1))
        (event,) = receiver.events
        assert (event["type"], event["data"]["org_id"]) == ("billing.suspended", org.id)
    finally:
        await runtime.close()
        await backend.cleanup()


async def test_an_org_s_own_notify_url_gets_its_events_and_is_checked_like_an_upstream(
    backend: Backend, tmp_path: Path
) -> None:
    receiver = Receiver()
    receiver.up = True
    settings = Settings(
        data_dir=tmp_path,
        key_secret="s" * 32,
        admin_token=TOKEN,
        upstream_url="http://upstream.test",
        upstream_allowlist="http://hooks.acme.test",
        flush_interval=0.05,
        notify_url="http://receiver.test/hooks",
        notify_secret=SECRET,
        notify_interval=0.05,
        reconcile_interval=3600,
    )
    runtime = Runtime(
        settings,
        store=backend.new(),
        upstream=MemoryUpstream(),
        spool_dir=None,
        notify_transport=httpx.MockTransport(receiver),
    )
    await runtime.start()
    admin = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_admin_app(runtime)),
        base_url="http://admin",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    ingest = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=IngestApp(runtime)), base_url="http://gw"
    )
    try:
        made = await admin.post("/admin/orgs", json={"name": "acme", "limits": {"items": 4}})
        org_id = made.json()["id"]
        for bad in ("http://evil.test/x", "ftp://hooks.acme.test/", "http://hooks.acme.test/#x", 5):
            refused = await admin.patch(f"/admin/orgs/{org_id}", json={"notify_url": bad})
            assert (refused.status_code, refused.json()["error"]) == (400, "bad_request"), bad
        own = "http://hooks.acme.test/usage?source=gw"
        patched = await admin.patch(f"/admin/orgs/{org_id}", json={"notify_url": own})
        assert patched.status_code == 200 and patched.json()["notify_url"] == own
        key = (await admin.post(f"/admin/orgs/{org_id}/keys")).json()["key"]
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        assert (await ingest.post("/v1/traces", content=SPANS, headers=headers)).status_code == 200
        await runtime.usage.flush()
        await until(lambda: _true(any(e["type"] == "usage.threshold" for e in receiver.events)))
        assert set(receiver.urls) == {own}  # 2 of 4 spans: 50%, to the org's own URL
    finally:
        await admin.aclose()
        await ingest.aclose()
        await runtime.close()
        await backend.cleanup()


async def test_what_a_store_failure_interrupts_is_claimed_on_the_next_look(tmp_path: Path) -> None:
    store = FlakyStore(MemoryStore())
    settings = Settings(
        data_dir=tmp_path,
        key_secret="s" * 32,
        upstream_url="http://upstream.test",
        notify_url="http://receiver.test/hooks",
        notify_secret=SECRET,
    )
    runtime = Runtime(settings, store=store, upstream=MemoryUpstream(), spool_dir=None)
    org = await store.create_org("acme", Limits(items=10), None)
    period = runtime.usage.current_period(time.time())
    await store.commit(UsageBatch("b1", "h", org.id, period.key, used={"items": 6}))
    runtime.notifier.observe(org.routing(), None)
    store.failing.add("usage")
    with pytest.raises(StoreError):
        await runtime.notifier.detect()
    store.failing.clear()
    assert await runtime.notifier.detect() >= 1  # the 50% crossing, though nobody sent since
    kinds = {json.loads(row["body"])["type"]: row for row in await store.notifications(org.id, 10)}
    assert json.loads(kinds["usage.threshold"]["body"])["data"]["threshold"] == 50


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"notify_url": "http://127.0.0.1:99999/hook"}, "port"),
        ({"notify_url": "http://[::1/x"}, "GATEWAY_NOTIFY_URL"),
        ({"notify_url": "ftp://hooks.test/x"}, "GATEWAY_NOTIFY_URL"),
        ({"notify_interval": 0.0}, "GATEWAY_NOTIFY_INTERVAL"),
        ({"notify_secret": "whsec_abc"}, "GATEWAY_NOTIFY_SECRET"),
    ],
)
def test_notification_settings_that_cannot_work_refuse_to_start(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    base = {"notify_url": "http://receiver.test/hooks", "notify_secret": SECRET}
    settings = Settings(data_dir=tmp_path, key_secret="s" * 32, **{**base, **changes})
    with pytest.raises(ConfigError, match=message):
        Runtime(settings, store=MemoryStore(), upstream=MemoryUpstream(), spool_dir=None)
