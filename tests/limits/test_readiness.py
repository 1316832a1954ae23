"""/readyz cannot trip fail-open: readiness pings the store on a guard of its own, at most once
a second for all callers, and reads the reservation breaker without touching it.

Regression: ``Runtime.ready()`` pinged through the reservations' StoreGuard, so a flood of
/readyz against a slow store opened that breaker and every request was admitted fail-open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import StoreError
from gateway.ingest.app import IngestApp
from gateway.limits.guard import StoreGuard
from gateway.limits.readiness import Readiness
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from policies.model import Limits
from tests.fakes import Clock, FlakyStore, MemoryUpstream


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings(
        data_dir=tmp_path,
        key_secret="k" * 32,
        upstream_url="http://upstream.test",
        flush_interval=3600,  # no flusher between the probes and the assertions
    )
    store = FlakyStore(MemoryStore())  # its pings are counted, slowed or failed
    running = Runtime(settings, store=store, upstream=MemoryUpstream(), spool_dir=None)
    await running.start()
    yield running
    await running.close()


def flaky(runtime: Runtime) -> FlakyStore:
    store = runtime.store
    assert isinstance(store, FlakyStore)
    return store


def pings(runtime: Runtime) -> int:
    return flaky(runtime).calls.get("ping", 0)


async def test_a_readyz_flood_against_a_slow_store_never_opens_the_reservation_breaker(
    runtime: Runtime,
) -> None:
    store = flaky(runtime)
    store.delays["ping"] = 5.0  # far past the 0.25 s budget
    started = time.monotonic()
    answers: list[bool] = []
    while time.monotonic() - started < 2.5:
        answers += await asyncio.gather(*(runtime.ready() for _ in range(50)))
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started

    assert answers and not any(answers)
    assert not runtime.guard.is_open
    # One ping in flight, its answer kept a second: never more than one a second, plus the first.
    assert 1 <= pings(runtime) <= elapsed + 1


async def test_a_readyz_flood_against_a_failing_store_lets_no_one_over_a_limit(
    runtime: Runtime,
) -> None:
    store = flaky(runtime)
    store.failing.add("ping")
    org = await store.create_org("acme", Limits(requests=5), None)
    await store.create_key(org.id, runtime.hasher("igk_readiness"))
    headers = {"authorization": "Bearer igk_readiness", "content-type": "application/json"}
    app = IngestApp(runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

        async def status(method: str, path: str, **request: Any) -> int:
            return (await client.request(method, path, **request)).status_code

        statuses: list[int] = []
        ready: list[int] = []
        for _ in range(20):
            probes = [status("GET", "/readyz") for _ in range(20)]
            ingest = status("POST", "/v1/traces", content=b"{}", headers=headers)
            *answers, admitted = await asyncio.gather(*probes, ingest)
            statuses.append(admitted)
            ready += answers
            await asyncio.sleep(0.01)

    assert set(ready) == {503}
    assert statuses.count(200) == 5
    assert set(statuses[5:]) == {402}  # usage_limit_exceeded, never 503 store_unavailable
    assert runtime.metrics.registry.get_sample_value("gateway_fail_open_admissions_total") == 0
    assert not runtime.guard.is_open


async def test_an_open_reservation_breaker_is_not_ready_and_costs_no_ping(
    runtime: Runtime,
) -> None:
    assert await runtime.ready()
    before = pings(runtime)

    async def failing() -> None:
        raise StoreError("reservation failed (injected)")

    with pytest.raises(StoreError):
        await runtime.guard.call(failing)

    assert runtime.guard.is_open
    assert not await runtime.ready()
    assert pings(runtime) == before


async def test_concurrent_callers_share_one_ping_and_its_answer_for_a_second() -> None:
    clock = Clock(1000.0)
    calls = 0
    release = asyncio.Event()

    async def ping() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    readiness = Readiness(ping, StoreGuard(clock=clock), timeout=5.0, clock=clock)
    waiting = [asyncio.ensure_future(readiness.ready()) for _ in range(100)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # a caller that goes away does not cancel the others' ping
    release.set()
    answers = await asyncio.gather(*waiting[1:])
    assert answers == [True] * 99 and calls == 1

    clock.now += 0.9
    assert await readiness.ready() and calls == 1
    clock.now += 0.2
    assert await readiness.ready() and calls == 2


async def test_a_failed_ping_is_not_ready_until_a_later_ping_answers() -> None:
    clock = Clock(1000.0)
    down = True

    async def ping() -> None:
        if down:
            raise OSError("connection refused")

    readiness = Readiness(ping, StoreGuard(clock=clock), timeout=1.0, clock=clock)
    assert not await readiness.ready()
    down = False
    assert not await readiness.ready()  # the failed answer is kept a second
    clock.now += 1.0
    assert await readiness.ready()
