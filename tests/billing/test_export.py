"""Usage export against a local stub of the Stripe meter-event and Autumn track APIs."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from gateway.billing.export import ExportReport, UsageExporter, export_periods
from gateway.settings import Settings
from gateway.store.base import UsageBatch
from gateway.store.memory import MemoryStore
from policies.billing import BillingState
from policies.model import Limits, Period
from policies.periods import calendar_month
from tests.fakes import Clock

STRIPE_KEY = "sk_test_stripe_secret_0123456789"
AUTUMN_KEY = "am_sk_autumn_secret_9876543210"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


JAN = calendar_month(datetime(2025, 1, 10, tzinfo=UTC))
FEB = calendar_month(datetime(2025, 2, 10, tzinfo=UTC))


async def new_org(store: MemoryStore, name: str, **customers: str) -> str:
    org = await store.create_org(name, Limits(), None)
    await store.set_billing_customers(org.id, customers)
    return org.id


def fail_record_export(store: MemoryStore, times: int) -> None:
    """The provider accepted the event, but writing the cursor fails ``times`` times."""
    real = store.record_export
    left = times

    async def record_export(
        org_id: str, provider: str, period_start: str, meter: str, value: int
    ) -> None:
        nonlocal left
        if left:
            left -= 1
            raise ConnectionError("store went away")
        await real(org_id, provider, period_start, meter, value)

    store.record_export = record_export  # type: ignore[method-assign]


_batch = itertools.count()


async def add_usage(store: MemoryStore, org_id: str, period: Period, **used: int) -> None:
    batch = UsageBatch(f"b{next(_batch)}", "test", org_id, period.key, used=used)
    assert await store.commit(batch)


@dataclass
class Event:
    provider: str
    key: str
    customer: str
    name: str
    value: int
    fields: dict[str, str]  # everything the request said, to compare retries


@dataclass
class ProviderStub:
    """Speaks both request shapes and dedupes by key like the real APIs.

    ``mode``: ok; fail (500, nothing processed); hang (past the client's timeout);
    lost_answer (processes the event, then answers 500).
    """

    mode: str = "ok"
    url: str = ""
    requests: list[Event] = field(default_factory=list)
    events: dict[tuple[str, str], Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def sent(self, provider: str) -> list[Event]:
        return [e for e in self.requests if e.provider == provider]

    def total(self, provider: str, customer: str, name: str) -> int:
        return sum(
            e.value
            for e in self.events.values()
            if (e.provider, e.customer, e.name) == (provider, customer, name)
        )

    async def stripe(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {STRIPE_KEY}":
            return web.json_response({"error": {"type": "authentication_error"}}, status=401)
        assert request.content_type == "application/x-www-form-urlencoded"
        form = {k: str(v) for k, v in (await request.post()).items()}
        assert request.headers["Idempotency-Key"] == form["identifier"]
        event = Event(
            "stripe",
            form["identifier"],
            form["payload[stripe_customer_id]"],
            form["event_name"],
            int(form["payload[value]"]),
            form,
        )
        int(form["timestamp"])
        return await self._handle(event, request)

    async def autumn(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {AUTUMN_KEY}":
            return web.json_response({"message": "unauthorized"}, status=401)
        body = await request.json()
        assert set(body) == {"customer_id", "feature_id", "value", "idempotency_key"}
        event = Event(
            "autumn",
            body["idempotency_key"],
            body["customer_id"],
            body["feature_id"],
            body["value"],
            {k: str(v) for k, v in body.items()},
        )
        return await self._handle(event, request)

    async def _handle(self, event: Event, request: web.Request) -> web.Response:
        self.requests.append(event)
        if self.mode == "fail":
            # Echoes the credentials, as a badly behaved proxy might: the log must not.
            return web.Response(status=500, text=f"down ({request.headers['Authorization']})")
        if self.mode == "hang":
            await asyncio.wait_for(self.release.wait(), 60)  # released by the test or teardown
        seen = self.events.get((event.provider, event.key))
        if seen is not None and seen.fields != event.fields:
            return web.json_response({"error": {"type": "idempotency_error"}}, status=400)
        self.events.setdefault((event.provider, event.key), event)
        if self.mode == "lost_answer":
            return web.Response(status=500)
        return web.json_response({"identifier": event.key})


@pytest.fixture
async def stub() -> AsyncIterator[ProviderStub]:
    server = ProviderStub()
    app = web.Application()
    app.router.add_post("/v1/billing/meter_events", server.stripe)
    app.router.add_post("/v1/track", server.autumn)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    yield server
    server.release.set()
    await runner.cleanup()


@pytest.fixture
def clock() -> Clock:
    return Clock(at(2025, 1, 20, 12, 0))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def org(store: MemoryStore) -> str:
    return await new_org(store, "a", stripe="cus_a", autumn="aut_a")


@pytest.fixture
def settings(stub: ProviderStub) -> Settings:
    return Settings(
        stripe_api_key=STRIPE_KEY,
        stripe_api_url=stub.url,
        stripe_meters="items=otel_items,bytes=otel_bytes",
        autumn_api_key=AUTUMN_KEY,
        autumn_api_url=stub.url,
        autumn_features="items=otel_items",
        export_interval=60.0,
    )


MakeExporter = Callable[..., UsageExporter]


@pytest.fixture
async def exporter_for(
    store: MemoryStore, settings: Settings, clock: Clock
) -> AsyncIterator[MakeExporter]:
    made: list[UsageExporter] = []

    def make(**overrides: Any) -> UsageExporter:
        options: dict[str, Any] = {
            "holder": "replica-a",
            "clock": clock,
            # A hang is 60 s; a loopback answer, milliseconds: 3 s splits them under any load.
            "request_timeout": 3.0,
        }
        options.update(overrides)
        exporter = UsageExporter(
            options.pop("store", store), options.pop("settings", settings), **options
        )
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        await exporter.close()


@pytest.fixture
def exporter(exporter_for: MakeExporter) -> UsageExporter:
    return exporter_for()


def key(org_id: str, period: Period, meter: str, total: int) -> str:
    return f"{org_id}:{period.key}:{meter}:{total}"


async def test_first_export_sends_the_delta_and_records_it(
    store: MemoryStore, org: str, stub: ProviderStub, exporter: UsageExporter, clock: Clock
) -> None:
    await add_usage(store, org, JAN, items=100, bytes=2048, requests=3)

    assert await exporter.run_once() == ExportReport(sent=3, failed=0, skipped_lease=False)

    stripe = {e.name: e for e in stub.sent("stripe")}
    assert stripe["otel_items"].fields == {
        "event_name": "otel_items",
        "payload[stripe_customer_id]": "cus_a",
        "payload[value]": "100",
        "identifier": key(org, JAN, "items", 100),
        "timestamp": str(int(clock.now)),
    }
    assert stripe["otel_bytes"].value == 2048
    [autumn] = stub.sent("autumn")
    assert autumn.fields == {
        "customer_id": "aut_a",
        "feature_id": "otel_items",
        "value": "100",
        "idempotency_key": key(org, JAN, "items", 100),
    }
    assert await store.exported(org, "stripe", JAN.key) == {"items": 100, "bytes": 2048}
    assert await store.exported(org, "autumn", JAN.key) == {"items": 100}


async def test_a_second_run_without_new_usage_sends_nothing(
    store: MemoryStore, org: str, stub: ProviderStub, exporter: UsageExporter
) -> None:
    await add_usage(store, org, JAN, items=100)
    await exporter.run_once()
    before = len(stub.requests)

    assert await exporter.run_once() == ExportReport(sent=0, failed=0, skipped_lease=False)
    assert len(stub.requests) == before


async def test_new_usage_sends_only_the_difference(
    store: MemoryStore, org: str, stub: ProviderStub, exporter: UsageExporter
) -> None:
    await add_usage(store, org, JAN, items=100)
    await exporter.run_once()
    await add_usage(store, org, JAN, items=50)

    await exporter.run_once()

    last = stub.sent("stripe")[-1]
    assert (last.key, last.value) == (key(org, JAN, "items", 150), 50)
    assert stub.total("stripe", "cus_a", "otel_items") == 150
    assert stub.total("autumn", "aut_a", "otel_items") == 150


@pytest.mark.parametrize("outage", ["fail", "hang"])
async def test_a_failed_request_is_resent_unchanged_before_any_new_delta(
    store: MemoryStore,
    org: str,
    stub: ProviderStub,
    exporter: UsageExporter,
    clock: Clock,
    outage: str,
) -> None:
    await add_usage(store, org, JAN, items=100)
    stub.mode = outage

    report = await exporter.run_once()

    assert report.sent == 0 and report.failed >= 1
    assert await store.exported(org, "stripe", JAN.key) == {}
    first = {e.provider: e for e in stub.requests}
    assert {(e.provider, e.key) for e in exporter.pending} == {
        (provider, e.key) for provider, e in first.items()
    }

    stub.mode = "ok"
    stub.release.set()  # a hung request may still be processed late: the retry must dedupe
    stub.requests.clear()
    clock.now += 60
    await add_usage(store, org, JAN, items=7)
    assert (await exporter.run_once()).failed == 0

    for provider, attempt in first.items():
        retry, new = stub.sent(provider)[0], stub.sent(provider)[-1]
        assert retry.fields == attempt.fields  # same key, value and timestamp
        assert (new.key, new.value) == (key(org, JAN, "items", 107), 7)
    assert stub.total("stripe", "cus_a", "otel_items") == 107
    assert await store.exported(org, "stripe", JAN.key) == {"items": 107}
    assert exporter.pending == []


async def test_a_lost_answer_is_retried_with_the_same_key_and_never_counted_twice(
    store: MemoryStore, org: str, stub: ProviderStub, exporter: UsageExporter
) -> None:
    await add_usage(store, org, JAN, items=100, bytes=10)
    stub.mode = "lost_answer"
    assert (await exporter.run_once()).failed == 3
    assert stub.total("stripe", "cus_a", "otel_items") == 100  # processed, answer lost
    assert await store.exported(org, "stripe", JAN.key) == {}

    stub.mode = "ok"
    await add_usage(store, org, JAN, items=20)
    await exporter.run_once()

    keys = [e.key for e in stub.sent("stripe") if e.name == "otel_items"]
    assert keys == [key(org, JAN, "items", n) for n in (100, 100, 120)]
    assert stub.total("stripe", "cus_a", "otel_items") == 120
    assert stub.total("stripe", "cus_a", "otel_bytes") == 10
    assert stub.total("autumn", "aut_a", "otel_items") == 120
    assert await exporter.run_once() == ExportReport(sent=0, failed=0, skipped_lease=False)


async def test_a_cursor_write_lost_after_acceptance_is_retried_with_the_same_key(
    store: MemoryStore, org: str, stub: ProviderStub, exporter_for: MakeExporter, settings: Settings
) -> None:
    exporter = exporter_for(
        settings=replace(settings, autumn_api_key=None, stripe_meters="items=otel_items")
    )
    await add_usage(store, org, JAN, items=100)
    fail_record_export(store, 1)
    assert await exporter.run_once() == ExportReport(sent=0, failed=1, skipped_lease=False)

    await add_usage(store, org, JAN, items=1)
    await exporter.run_once()

    assert [e.key for e in stub.requests] == [key(org, JAN, "items", n) for n in (100, 100, 101)]
    assert stub.total("stripe", "cus_a", "otel_items") == 101


async def test_only_the_lease_holder_exports(
    store: MemoryStore, org: str, stub: ProviderStub, exporter_for: MakeExporter
) -> None:
    a, b = exporter_for(holder="replica-a"), exporter_for(holder="replica-b")
    await add_usage(store, org, JAN, items=100)

    assert (await a.run_once()).sent == 2
    await add_usage(store, org, JAN, items=1)
    assert await b.run_once() == ExportReport(sent=0, failed=0, skipped_lease=True)
    assert len(stub.requests) == 2

    await a.close()  # releases the lease: the other replica takes over at once
    assert (await b.run_once()).sent == 2
    assert stub.total("stripe", "cus_a", "otel_items") == 101


async def test_concurrent_runs_of_two_replicas_send_each_event_once(
    store: MemoryStore, stub: ProviderStub, exporter_for: MakeExporter
) -> None:
    for n in range(40):
        await add_usage(store, await new_org(store, f"o{n}", stripe=f"cus_{n}"), JAN, items=n + 1)
    a, b = exporter_for(holder="replica-a"), exporter_for(holder="replica-b")

    reports = await asyncio.gather(a.run_once(), b.run_once())

    assert sorted(r.skipped_lease for r in reports) == [False, True]
    assert len({e.key for e in stub.requests}) == len(stub.requests)
    for n in range(40):
        assert stub.total("stripe", f"cus_{n}", "otel_items") == n + 1


async def test_an_org_without_a_customer_for_a_provider_is_skipped(
    store: MemoryStore, stub: ProviderStub, exporter: UsageExporter
) -> None:
    other = await new_org(store, "b", autumn="aut_b")
    await add_usage(store, other, JAN, items=5)

    await exporter.run_once()

    assert [(e.provider, e.customer) for e in stub.requests] == [("autumn", "aut_b")]
    assert await store.exported(other, "stripe", JAN.key) == {}


async def test_the_previous_month_tail_is_sent_after_the_rollover(
    store: MemoryStore, org: str, stub: ProviderStub, exporter: UsageExporter, clock: Clock
) -> None:
    clock.now = at(2025, 1, 31, 23, 59, 30)
    await add_usage(store, org, JAN, items=100)
    await exporter.run_once()

    clock.now = at(2025, 2, 1, 0, 0, 30)
    await add_usage(store, org, JAN, items=10)  # spent before midnight, flushed after
    await add_usage(store, org, FEB, items=5)
    await exporter.run_once()

    sent = {(e.key, e.value, e.fields["timestamp"]) for e in stub.sent("stripe")[1:]}
    assert sent == {
        (key(org, JAN, "items", 110), 10, str(int(JAN.end.timestamp()) - 1)),
        (key(org, FEB, "items", 5), 5, str(int(clock.now))),
    }
    assert stub.total("autumn", "aut_a", "otel_items") == 115


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "restarted"])
async def test_a_closed_billing_period_tail_is_sent_after_renewal(
    store: MemoryStore,
    org: str,
    stub: ProviderStub,
    exporter_for: MakeExporter,
    clock: Clock,
    restarted: bool,
) -> None:
    old = Period(datetime(2025, 1, 15, tzinfo=UTC), datetime(2025, 2, 15, tzinfo=UTC))
    new = Period(old.end, datetime(2025, 3, 15, tzinfo=UTC))
    store.billing[org] = BillingState(plan="pro", period=old)
    clock.now = at(2025, 2, 14, 23, 59)
    await add_usage(store, org, old, items=100)
    first = exporter_for()
    await first.run_once()

    store.billing[org] = BillingState(plan="pro", period=new)
    clock.now = at(2025, 2, 15, 0, 5)
    await add_usage(store, org, old, items=10)
    await add_usage(store, org, new, items=3)
    if restarted:
        store.leases.clear()  # the first process died holding it
    exporter = exporter_for(holder="replica-b") if restarted else first
    await exporter.run_once()

    assert stub.total("stripe", "cus_a", "otel_items") == 113
    assert await store.exported(org, "stripe", old.key) == {"items": 110}
    assert await store.exported(org, "stripe", new.key) == {"items": 3}


async def test_an_ended_billing_period_that_was_not_renewed_keeps_its_tail(
    store: MemoryStore, org: str, stub: ProviderStub, exporter: UsageExporter, clock: Clock
) -> None:
    ended = Period(datetime(2025, 1, 10, tzinfo=UTC), datetime(2025, 2, 10, tzinfo=UTC))
    store.billing[org] = BillingState(period=ended)
    clock.now = at(2025, 2, 11)
    await add_usage(store, org, ended, items=4)
    await add_usage(store, org, FEB, items=6)  # counted on calendar months since

    await exporter.run_once()

    assert stub.total("stripe", "cus_a", "otel_items") == 10


async def test_the_api_keys_never_reach_the_logs(
    store: MemoryStore,
    org: str,
    stub: ProviderStub,
    exporter: UsageExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await add_usage(store, org, JAN, items=100)
    for mode in ("fail", "lost_answer", "hang"):
        stub.mode = mode
        await exporter.run_once()
    stub.mode = "ok"
    stub.release.set()
    await exporter.run_once()
    await exporter.close()
    fail_record_export(store, 1)
    await add_usage(store, org, JAN, items=1)
    await exporter.run_once()

    assert any(r.name == "gateway.billing.export" for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + repr(record.args)
        assert STRIPE_KEY not in text and AUTUMN_KEY not in text
    assert "[redacted]" in caplog.text


async def test_a_store_failure_for_one_org_does_not_stop_the_others(
    store: MemoryStore, org: str, stub: ProviderStub, exporter: UsageExporter
) -> None:
    broken = await new_org(store, "broken", stripe="cus_broken")
    real = store.billing_state

    async def billing_state(org_id: str) -> BillingState | None:
        if org_id == broken:
            raise ConnectionError("row locked")
        return await real(org_id)

    store.billing_state = billing_state  # type: ignore[method-assign]
    await add_usage(store, org, JAN, items=1)

    assert await exporter.run_once() == ExportReport(sent=2, failed=1, skipped_lease=False)


async def test_run_forever_logs_and_keeps_going(
    store: MemoryStore, exporter_for: MakeExporter, settings: Settings
) -> None:
    calls = 0

    async def billing_orgs() -> list[tuple[str, dict[str, str]]]:
        nonlocal calls
        calls += 1
        raise ConnectionError("store down")

    store.billing_orgs = billing_orgs  # type: ignore[method-assign]
    exporter = exporter_for(settings=replace(settings, export_interval=0.01))
    task = asyncio.create_task(exporter.run_forever())
    await wait_for(lambda: calls >= 3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


@pytest.mark.parametrize(
    ("changes", "enabled"),
    [
        ({}, True),
        ({"stripe_api_key": None, "autumn_api_key": None}, False),
        ({"stripe_meters": "", "autumn_features": ""}, False),
        ({"stripe_api_key": None, "autumn_features": ""}, False),
        ({"stripe_api_key": None}, True),
    ],
)
def test_enabled_needs_a_key_and_a_mapped_meter(
    settings: Settings, changes: dict[str, Any], enabled: bool
) -> None:
    exporter = UsageExporter(MemoryStore(), replace(settings, **changes), holder="h")
    assert exporter.enabled is enabled


def test_export_periods_cover_the_current_and_the_previous_ones() -> None:
    billing = Period(datetime(2025, 3, 31, tzinfo=UTC), datetime(2025, 4, 30, tzinfo=UTC))
    now = datetime(2025, 4, 2, tzinfo=UTC)
    assert [p.key for p in export_periods(now, billing)] == [
        billing.key,
        calendar_month(datetime(2025, 3, 1, tzinfo=UTC)).key,
        datetime(2025, 2, 28, tzinfo=UTC).isoformat(),
    ]
    assert export_periods(datetime(2025, 1, 5, tzinfo=UTC), None) == [
        JAN,
        calendar_month(datetime(2024, 12, 5, tzinfo=UTC)),
    ]


async def test_a_replica_that_loses_the_lease_mid_run_stops_sending(
    store: MemoryStore, stub: ProviderStub, exporter_for: MakeExporter, clock: Clock
) -> None:
    for n in range(3):
        await add_usage(store, await new_org(store, f"o{n}", stripe=f"cus_{n}"), JAN, items=1)
    real = store.usage

    async def usage(org_id: str, period_start: str) -> dict[str, int]:
        # The run outlasts a third of the lease and another replica takes it over.
        clock.now += 100
        store.leases["usage-export"] = ("replica-b", clock.now + 1000)
        return await real(org_id, period_start)

    store.usage = usage  # type: ignore[method-assign]
    exporter = exporter_for(max_connections=1)

    report = await exporter.run_once()

    assert len(stub.requests) == report.sent == 1
    assert exporter.pending == []
