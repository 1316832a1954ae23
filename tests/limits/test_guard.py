"""StoreGuard: a time budget and a breaker around every data-plane store call."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StoreError, StoreUnavailable
from gateway.limits.guard import StoreGuard
from tests.fakes import Clock


class BackendDown(StoreError):
    """What a backend raises after mapping its driver's error."""


async def test_a_backends_store_error_is_re_raised_as_it_is_and_trips_the_breaker() -> None:
    guard = StoreGuard(clock=Clock())
    raised = BackendDown("redis: connection refused")

    async def failing() -> None:
        raise raised

    with pytest.raises(BackendDown) as caught:
        await guard.call(failing)
    assert caught.value is raised  # not wrapped: its type and message reach the caller
    assert guard.is_open


@pytest.mark.parametrize("foreign", [ConnectionResetError("reset"), RuntimeError("driver bug")])
async def test_a_foreign_exception_is_wrapped_in_a_store_error_from_it(
    foreign: Exception,
) -> None:
    guard = StoreGuard(clock=Clock())

    async def failing() -> None:
        raise foreign

    with pytest.raises(StoreError) as caught:
        await guard.call(failing)
    assert type(caught.value) is StoreError
    assert caught.value.__cause__ is foreign
    assert guard.is_open


async def test_a_call_past_its_budget_is_a_store_error_and_the_next_is_not_even_tried() -> None:
    clock = Clock()
    guard = StoreGuard(timeout=0.01, clock=clock)
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    with pytest.raises(StoreError) as caught:
        await guard.call(slow)
    assert isinstance(caught.value.__cause__, TimeoutError)
    with pytest.raises(StoreUnavailable):
        await guard.call(slow)
    assert calls == 1
    clock.advance(1.0)  # past the cooldown: one probe goes through, and succeeds

    async def fine() -> int:
        return 7

    assert await guard.call(fine) == 7
    assert not guard.is_open


@pytest.mark.parametrize("mistake", [AttributeError("max_logs.items"), KeyError("meter")])
async def test_a_programming_error_is_no_store_failure_and_opens_no_circuit(
    mistake: Exception,
) -> None:
    """Regression: a bug on the reservation path tripped the breaker, and every request was
    admitted unlimited (fail-open) instead of failing loudly."""
    guard = StoreGuard(clock=Clock())

    async def buggy() -> None:
        raise mistake

    with pytest.raises(type(mistake)) as caught:
        await guard.call(buggy)
    assert caught.value is mistake
    assert not guard.is_open


async def test_each_store_call_is_timed_by_result_and_the_breaker_is_a_gauge() -> None:
    """What the dashboard's store latency and breaker panels read."""
    from prometheus_client import generate_latest

    from gateway.metrics import Metrics

    metrics = Metrics()
    guard = StoreGuard(clock=Clock(), observe=metrics.store_call("quota"))
    metrics.watch_breaker("quota", lambda: guard.is_open)

    async def answering() -> int:
        return 1

    async def failing() -> None:
        raise BackendDown("postgres: connection refused")

    assert await guard.call(answering) == 1
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_store_seconds_count{guard="quota",result="ok"} 1.0' in text
    assert 'gateway_store_breaker_open{guard="quota"} 0.0' in text
    with pytest.raises(BackendDown):
        await guard.call(failing)
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_store_seconds_count{guard="quota",result="error"} 1.0' in text
    assert 'gateway_store_breaker_open{guard="quota"} 1.0' in text


async def test_a_cancelled_caller_is_not_timed_as_a_store_result() -> None:
    seen: list[str] = []
    guard = StoreGuard(clock=Clock(), observe=lambda result, _: seen.append(result))

    async def slow() -> None:
        await asyncio.sleep(10)

    call = asyncio.create_task(guard.call(slow, budget=30))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert seen == []
