"""Slow clients (slowloris headers, slow or stalled bodies) beside normal clients.

The body timeout is ``GATEWAY_BODY_TIMEOUT`` and the header timeout ``GATEWAY_HEADER_TIMEOUT``
(1 s each here; 30 s and 10 s by default); a 408 closes the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.harness import Gateway
from tests.reliability.drivers import (
    BODY,
    NOTHING,
    FaultUpstream,
    Footprint,
    Load,
    usage,
)

BODY_TIMEOUT = 1.0  # drivers.FAULT_ENV, and the header timeout too
SWEEP = 1.0  # the gateway checks deadlines once a second
# What a loaded 2-core machine may add to any bound below. A normal request takes
# milliseconds; one starved by slow clients waits whole timeouts.
MARGIN = 5.0
NORMAL_LATENCY_BOUND = MARGIN
UVICORN_KEEP_ALIVE = 5.0


@dataclass(frozen=True)
class SlowEnd:
    """How a slow connection ended, seconds after it opened; ``None`` while still open."""

    answered: float | None
    closed: float | None
    status_line: bytes


async def slow_connection(
    url: str, head: bytes, drip: bytes, *, interval: float, seconds: float, after_answer: bool
) -> SlowEnd:
    """Send ``head``, then one byte of ``drip`` every ``interval`` for at most ``seconds``.

    Stops dripping at the first byte of an answer unless ``after_answer``; stops at EOF.
    """
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    opened = time.monotonic()
    answered = closed = None
    first = b""
    try:
        writer.write(head)
        reading = asyncio.ensure_future(reader.read(65536))
        for i in range(int(seconds / interval)):
            done, _ = await asyncio.wait({reading}, timeout=interval)
            if done:
                try:
                    data = reading.result()
                except ConnectionError:
                    data = b""  # the gateway ended the connection
                if not data:
                    closed = time.monotonic() - opened
                    break
                if answered is None:
                    answered, first = time.monotonic() - opened, data
                if not after_answer:
                    break
                reading = asyncio.ensure_future(reader.read(65536))
            if drip and not writer.is_closing():
                writer.write(drip[i % len(drip) : i % len(drip) + 1])
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    finally:
        writer.transport.abort()
    return SlowEnd(answered, closed, first.split(b"\r\n", 1)[0])


def body_head(key: str, length: int) -> bytes:
    return (
        f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


SLOWLORIS_HEAD = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: "


def assert_served_promptly(load: Load) -> None:
    assert load.statuses() == {200: len(load.outcomes)}
    assert len(load.outcomes) >= 100
    slowest = max(o.ended - o.started for o in load.outcomes)
    assert slowest < NORMAL_LATENCY_BOUND, f"a normal request took {slowest:.2f} s"


def test_slow_and_stalled_bodies_get_408_in_time_while_normal_clients_are_served(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    gateway = gateways(fault_upstream.url)
    slow_org, slow_key = gateway.new_tenant("slow-body")
    _, key = gateway.new_tenant("normal")
    head = body_head(slow_key, len(BODY))

    async def scenario() -> tuple[list[SlowEnd], Load]:
        slow = [
            slow_connection(
                gateway.url,
                head,
                BODY if i % 2 else b"",
                interval=0.1,
                seconds=BODY_TIMEOUT + SWEEP + MARGIN + 1,
                after_answer=False,
            )
            for i in range(40)
        ]
        normal = Load(gateway.url, key, concurrency=20, requests=3000, seconds=3)
        ends, served = await asyncio.gather(asyncio.gather(*slow), normal.run())
        return ends, served

    ends, served = asyncio.run(scenario())

    assert_served_promptly(served)
    assert {end.status_line for end in ends} == {b"HTTP/1.1 408 Request Timeout"}
    for end in ends:
        assert end.answered is not None
        assert BODY_TIMEOUT <= end.answered < BODY_TIMEOUT + SWEEP + MARGIN
    assert usage(gateway, slow_org) == NOTHING


def test_a_slow_body_that_keeps_trickling_after_its_408_is_disconnected(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    gateway = gateways(fault_upstream.url)
    _, key = gateway.new_tenant("slow-body-after-408")
    head = body_head(key, 10_000)

    # Trickle on for longer than uvicorn's keep-alive timeout (5 s) after the 408.
    seconds = BODY_TIMEOUT + SWEEP + UVICORN_KEEP_ALIVE + MARGIN
    end = asyncio.run(
        slow_connection(
            gateway.url, head, b"x" * 100, interval=0.1, seconds=seconds, after_answer=True
        )
    )

    assert end.status_line == b"HTTP/1.1 408 Request Timeout"
    assert end.answered is not None
    after = seconds - end.answered
    assert end.closed is not None, f"the connection was still open {after:.1f} s after its 408"


def test_slowloris_does_not_starve_normal_clients(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    gateway = gateways(fault_upstream.url)
    _, key = gateway.new_tenant("beside-slowloris")
    before = Footprint.of(gateway)

    async def scenario() -> tuple[Load, Footprint]:
        drips = [
            asyncio.ensure_future(
                slow_connection(
                    gateway.url,
                    SLOWLORIS_HEAD,
                    b"abcdefgh",
                    interval=0.25,
                    seconds=BODY_TIMEOUT + SWEEP + MARGIN + 1,  # until the gateway closes it
                    after_answer=False,
                )
            )
            for _ in range(300)
        ]
        await asyncio.sleep(0.5)
        normal = await Load(gateway.url, key, concurrency=20, requests=3000, seconds=3).run()
        await asyncio.gather(*drips)
        return normal, Footprint.of(gateway)

    served, after = asyncio.run(scenario())

    assert_served_promptly(served)
    # The header deadline closed the dripping connections: their descriptors are back.
    assert after.fds - before.fds < 50


def test_slowloris_connections_are_closed_within_a_bound(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    gateway = gateways(fault_upstream.url)
    bound = BODY_TIMEOUT + SWEEP + MARGIN

    async def scenario() -> list[SlowEnd]:
        drips = [
            slow_connection(
                gateway.url,
                SLOWLORIS_HEAD,
                b"abcdefgh",
                interval=0.25,
                seconds=bound + 1,
                after_answer=False,
            )
            for _ in range(50)
        ]
        return list(await asyncio.gather(*drips))

    ends = asyncio.run(scenario())

    still_open = sum(1 for end in ends if end.answered is None and end.closed is None)
    assert still_open == 0, f"{still_open} of {len(ends)} slowloris connections outlived {bound} s"
