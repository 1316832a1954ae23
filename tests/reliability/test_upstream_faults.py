"""Upstream faults under load: what clients see, that nothing is counted, that nothing leaks.

Each test runs a real gateway process against a real loopback upstream that fails one way
(nothing listening, stalling past the timeout, resetting every connection, answering 5xx
or 429), drives a few thousand requests through it, and checks the answers, the org's
usage after the flush, and the process's RSS and open descriptors before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.harness import Gateway
from tests.reliability.drivers import (
    NOTHING,
    Answer,
    FaultUpstream,
    Footprint,
    Load,
    closed_port,
    counted,
    drive,
    settled_footprint,
    usage,
)

RSS_BOUND = 50 * 1024 * 1024
FD_BOUND = 100


def failing_load(
    gateway: Gateway, key: str, **options: object
) -> tuple[Load, Footprint, Footprint]:
    """A warm-up, then the measured load; the footprint before and after the measured one."""
    drive(gateway.url, key, concurrency=30, requests=200, seconds=3)
    before = Footprint.of(gateway)
    load = drive(gateway.url, key, **options)
    after = settled_footprint(gateway, before, FD_BOUND)
    return load, before, after


def assert_bounded(before: Footprint, after: Footprint) -> None:
    grown = (after.rss - before.rss) / 2**20
    assert after.rss - before.rss < RSS_BOUND, f"RSS grew by {grown:.1f} MiB"
    assert after.fds - before.fds < FD_BOUND, f"open fds grew from {before.fds} to {after.fds}"


def test_upstream_down_is_503_with_retry_after_and_counts_nothing(
    gateways: Callable[..., Gateway],
) -> None:
    gateway = gateways(f"http://127.0.0.1:{closed_port()}")
    org, key = gateway.new_tenant("down")

    load, before, after = failing_load(gateway, key, concurrency=40, requests=3000, seconds=6)

    assert len(load.outcomes) >= 1000, load.statuses()
    assert load.statuses() == {503: len(load.outcomes)}
    assert {o.code for o in load.outcomes} == {"upstream_unavailable"}
    assert all(o.retry_after and o.retry_after.isdigit() for o in load.outcomes)
    assert usage(gateway, org) == NOTHING
    assert_bounded(before, after)


def test_upstream_slower_than_the_timeout_is_504_and_counts_nothing(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    fault_upstream.default = Answer(hang=30.0)
    gateway = gateways(fault_upstream.url, GATEWAY_UPSTREAM_TIMEOUT="0.25")
    org, key = gateway.new_tenant("slow")

    load, before, after = failing_load(gateway, key, concurrency=50, requests=3000, seconds=4)

    assert len(load.outcomes) >= 400, load.statuses()
    assert load.statuses() == {504: len(load.outcomes)}
    assert {o.code for o in load.outcomes} == {"upstream_timeout"}
    # The gateway gave up on every one, promptly: 0.25 s budget, 5 s of slack for a loaded
    # machine, far short of the 30 s hang.
    assert max(o.ended - o.started for o in load.outcomes) < 5.25
    assert fault_upstream.received(org) >= len(load.outcomes)
    assert usage(gateway, org) == NOTHING
    assert_bounded(before, after)


def test_upstream_resetting_connections_is_503_with_retry_after_and_counts_nothing(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    fault_upstream.reset_all = True
    gateway = gateways(fault_upstream.url)
    org, key = gateway.new_tenant("reset")

    load, before, after = failing_load(gateway, key, concurrency=40, requests=3000, seconds=6)

    assert len(load.outcomes) >= 1000, load.statuses()
    assert load.statuses() == {503: len(load.outcomes)}
    assert {o.code for o in load.outcomes} == {"upstream_unavailable"}
    assert all(o.retry_after and o.retry_after.isdigit() for o in load.outcomes)
    assert fault_upstream.connections >= len(load.outcomes)
    assert usage(gateway, org) == NOTHING
    assert_bounded(before, after)


def test_upstream_500_and_429_pass_through_uncounted_while_a_healthy_org_is_counted(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    gateway = gateways(fault_upstream.url)
    broken, broken_key = gateway.new_tenant("answers-500")
    throttled, throttled_key = gateway.new_tenant("answers-429")
    healthy, healthy_key = gateway.new_tenant("answers-200")
    fault_upstream.answers[broken] = Answer(500)
    fault_upstream.answers[throttled] = Answer(429, headers=(("Retry-After", "7"),))
    drive(gateway.url, broken_key, concurrency=20, requests=200, seconds=3)  # warm-up
    before = Footprint.of(gateway)

    async def together() -> list[Load]:
        loads = [
            Load(gateway.url, k, concurrency=15, requests=1000, seconds=6)
            for k in (broken_key, throttled_key, healthy_key)
        ]
        return list(await asyncio.gather(*(load.run() for load in loads)))

    five_hundreds, four_twenty_nines, oks = asyncio.run(together())
    after = settled_footprint(gateway, before, FD_BOUND)

    assert five_hundreds.statuses() == {500: len(five_hundreds.outcomes)}
    assert {o.code for o in five_hundreds.outcomes} == {"upstream says no"}
    assert four_twenty_nines.statuses() == {429: len(four_twenty_nines.outcomes)}
    assert {o.retry_after for o in four_twenty_nines.outcomes} == {"7"}
    assert oks.statuses() == {200: len(oks.outcomes)}
    assert len(oks.outcomes) >= 300

    assert usage(gateway, broken) == NOTHING
    assert usage(gateway, throttled) == NOTHING
    assert usage(gateway, healthy) == counted(len(oks.outcomes))
    assert fault_upstream.received(healthy) == len(oks.outcomes)
    assert_bounded(before, after)
