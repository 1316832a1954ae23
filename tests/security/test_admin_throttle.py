"""Failed admin authentications are counted, logged without what was sent, and throttled per
client address: past 10 failures within a second, 429 ``rate_limited`` with Retry-After.
The right token is never throttled, and never counted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.app import AdminAuth, build_admin_app
from gateway.admin.throttle import AuthFailures
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.memory import MemoryStore
from gateway.types import Receive, Scope, Send
from tests.fakes import Clock
from tests.harness import ADMIN_TOKEN, Gateway

TOKEN = "throttle-admin-token-0123456789"
GUESS = "guessed-token-9f8e7d6c5b4a"


def test_the_eleventh_failure_within_a_second_is_throttled_until_the_window_passes() -> None:
    clock = Clock(100.0)
    failures = AuthFailures(clock=clock)
    for _ in range(10):
        assert failures.fail("10.0.0.1") is None
        clock.now += 0.05
    first = failures.fail("10.0.0.1")
    assert first is not None and first.started
    assert 0 < first.wait <= 1.0
    again = failures.fail("10.0.0.1")
    assert again is not None and not again.started
    assert failures.fail("10.0.0.2") is None  # per address
    clock.now += 1.0
    assert failures.fail("10.0.0.1") is None


def test_failures_spread_over_more_than_a_second_are_never_throttled() -> None:
    clock = Clock(100.0)
    failures = AuthFailures(clock=clock)
    for _ in range(100):
        assert failures.fail("10.0.0.1") is None
        clock.now += 0.11


def test_a_flood_of_addresses_cannot_grow_the_table() -> None:
    clock = Clock(100.0)
    failures = AuthFailures(clock=clock, max_addresses=100)
    for _ in range(10):
        failures.fail("10.0.0.1")
    assert failures.fail("10.0.0.1") is not None
    for i in range(100):
        failures.fail(f"10.1.{i // 256}.{i % 256}")
    # The least recently failing address was dropped to make room: it starts over.
    assert failures.fail("10.0.0.1") is None


def client_from(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 4242))
    return httpx.AsyncClient(transport=transport, base_url="http://admin")


def failures_counted(metrics: Metrics, answer: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_admin_auth_failures_total", {"answer": answer}
    )


async def test_failures_get_401_then_429_while_the_right_token_still_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reached: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    metrics = Metrics()
    app = AdminAuth(inner, TOKEN, metrics, AuthFailures(clock=Clock(100.0)))  # one instant
    wrong = {"authorization": f"Bearer {GUESS}"}
    right = {"authorization": f"Bearer {TOKEN}"}
    with caplog.at_level(logging.DEBUG):
        async with client_from(app, "192.0.2.7") as client:
            statuses = [(await client.get("/", headers=wrong)).status_code for _ in range(10)]
            throttled = await client.post("/admin/orgs", headers=wrong, json={"name": "x"})
            missing = await client.get("/metrics")
            served = [(await client.get("/", headers=right)).status_code for _ in range(30)]
        async with client_from(app, "192.0.2.8") as elsewhere:
            other = await elsewhere.get("/", headers=wrong)

    assert statuses == [401] * 10
    assert (throttled.status_code, throttled.json()) == (429, {"error": "rate_limited"})
    assert throttled.headers["retry-after"] == "1"
    assert missing.status_code == 429
    assert served == [200] * 30
    assert other.status_code == 401
    assert reached == ["/"] * 30
    assert failures_counted(metrics, "unauthorized") == 11
    assert failures_counted(metrics, "rate_limited") == 2
    assert "192.0.2.7" in caplog.text and "throttled" in caplog.text
    assert GUESS not in caplog.text and TOKEN not in caplog.text


@pytest.fixture
async def untokened(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings(data_dir=tmp_path, key_secret="k" * 32, admin_token=None)
    running = Runtime(settings, store=MemoryStore(), spool_dir=None)
    await running.start()
    yield running
    await running.close()


async def test_without_a_token_set_every_request_is_refused_and_counted(
    untokened: Runtime,
) -> None:
    async with client_from(build_admin_app(untokened), "192.0.2.9") as client:
        answer = await client.get("/metrics", headers={"authorization": "Bearer "})
    assert answer.status_code == 401
    assert failures_counted(untokened.metrics, "unauthorized") == 1


def test_a_real_gateway_throttles_one_address_and_reports_it_in_metrics(gateway: Gateway) -> None:
    wrong = {"authorization": f"Bearer {GUESS}"}
    with httpx.Client(base_url=gateway.admin_url, timeout=10) as client:
        statuses = [client.get("/metrics", headers=wrong).status_code for _ in range(30)]
        refused = client.post("/admin/orgs", headers=wrong, json={"name": "intruder"})
    assert statuses[0] == 401 and 429 in statuses, statuses
    assert set(statuses) <= {401, 429}
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    metrics = gateway.admin("GET", "/metrics")  # the right token, same address: not throttled
    assert metrics.status_code == 200
    assert 'gateway_admin_auth_failures_total{answer="rate_limited"}' in metrics.text
    assert "intruder" not in str(gateway.admin("GET", "/admin/audit?limit=1000").json())
    logs = gateway.logs()
    assert GUESS not in logs and ADMIN_TOKEN not in logs
    assert "admin request refused" in logs and "throttled" in logs
