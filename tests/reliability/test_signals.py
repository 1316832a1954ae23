"""SIGTERM and SIGKILL of a gateway process under load.

SIGTERM: the listener closes at once (new connections are refused), requests already in
the gateway finish, reservations go back and usage is flushed before a clean exit.
SIGKILL: the spool written as requests are admitted is adopted by the next process on the
same data folder, so no usage a client was told about is lost, and the dead process's
reservations never let an org past its limit.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from urllib.parse import urlsplit

from tests.harness import Gateway
from tests.reliability.drivers import (
    Answer,
    FaultUpstream,
    Load,
    Outcome,
    counted,
    drive,
    usage,
)

LISTENER_CLOSES = 5.0  # uvicorn looks at its exit flag every 0.1 s; the rest is load margin
SLOW = LISTENER_CLOSES + 5.0


async def one_request(url: str, key: str) -> Outcome:
    load = Load(url, key, concurrency=1, requests=1, seconds=10, request_timeout=60)
    await load.run()
    return load.outcomes[0]


async def connect(url: str) -> str:
    """What a new TCP connection to ``url`` meets: "connected", or the error's name."""
    parts = urlsplit(url)
    try:
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except OSError as exc:
        return type(exc).__name__
    writer.close()
    await writer.wait_closed()
    return "connected"


async def until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


def history(gateway: Gateway, org_id: str) -> dict[str, int]:
    """The org's usage history summed over every hour, per meter, read from the SQLite file."""
    with closing(sqlite3.connect(gateway.data_dir / "gw.db")) as db:
        rows = db.execute(
            "SELECT meter, SUM(value) FROM usage_history WHERE org_id = ? GROUP BY meter",
            (org_id,),
        ).fetchall()
    return {m: int(total) for m, total in rows if total and m in {"requests", "bytes", "items"}}


def stored(gateway: Gateway, org_id: str) -> tuple[dict[str, int], int]:
    """The org's committed usage and every live reservation, read from the SQLite file."""
    with closing(sqlite3.connect(gateway.data_dir / "gw.db")) as db:
        rows = db.execute(
            "SELECT meter, SUM(used) FROM usage_counters WHERE org_id = ? GROUP BY meter",
            (org_id,),
        ).fetchall()
        (reserved,) = db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM quota_reservations WHERE expires_at > ?",
            (time.time(),),
        ).fetchone()
    return {m: n for m, n in rows if m in {"requests", "bytes", "items"}}, reserved


def test_sigterm_under_load_drains_in_flight_requests_and_flushes_usage(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    fault_upstream.default = Answer(delay=0.2)
    gateway = gateways(fault_upstream.url, GATEWAY_UPSTREAM_TIMEOUT="60")
    org, key = gateway.new_tenant("sigterm", limits={"requests": 100_000})
    slow_org, slow_key = gateway.new_tenant("sigterm-slow")
    # Held far longer than the listener may take to close on a loaded machine (5 s).
    fault_upstream.answers[slow_org] = Answer(delay=SLOW)
    # A new connection per request: a refused connect is then the only way to be turned away.
    # Each worker stops at its first refusal; the time cap only stops a hang.
    load = Load(gateway.url, key, concurrency=30, requests=5000, seconds=60, force_close=True)
    load.until_refused = True

    async def scenario() -> tuple[Outcome, float, bool, str]:
        running = asyncio.create_task(load.run())
        await until(lambda: len(load.outcomes) >= 150, 30)
        slow = asyncio.create_task(one_request(gateway.url, slow_key))
        await until(lambda: fault_upstream.received(slow_org) == 1, 20)
        sent = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        # The slow request holds the process open: the listener must be closed meanwhile.
        while (probe := await connect(gateway.url)) == "connected":
            assert time.monotonic() < sent + LISTENER_CLOSES, "the listener stayed open"
            await asyncio.sleep(0.05)
        draining = gateway.process.poll() is None
        slow_outcome = await slow
        await running
        return slow_outcome, sent, draining, probe

    slow_outcome, sent, draining, probe = asyncio.run(scenario())
    assert gateway.process.wait(10) == 0

    assert draining and probe == "ConnectionRefusedError"
    assert slow_outcome.status == 200 and slow_outcome.ended - sent > 1.0
    in_flight = [o for o in load.outcomes if o.started < sent]
    assert len(in_flight) >= 150
    assert {o.status for o in in_flight} == {200}, load.statuses()
    # Whatever reached the upstream came back to its client: no batch was cut mid-way.
    assert fault_upstream.received(org) == load.ok()
    # Connections caught in the listener's backlog or not yet read when it closed (uvicorn
    # looks at its exit flag every 0.1 s) are closed unanswered; once one connect has been
    # refused (the listener is gone, whenever that was), every later one is refused cleanly.
    unanswered = [o for o in load.outcomes if o.status is None]
    assert all(o.started >= sent for o in unanswered), [
        (round(o.started - sent, 3), o.error) for o in unanswered
    ]
    closed = min(o.ended for o in load.outcomes if o.refused)
    assert {o.error for o in unanswered if o.started > closed} <= {"ConnectionRefusedError"}

    committed, reserved = stored(gateway, org)
    assert committed == counted(load.ok())
    assert reserved == 0
    assert not list((gateway.data_dir / "spool").glob("*.jsonl"))

    restarted = gateways(fault_upstream.url)
    assert usage(restarted, org) == counted(load.ok())
    assert usage(restarted, slow_org) == counted(1)


def test_sigkill_under_load_loses_no_usage_and_admits_no_one_over_the_limit(
    gateways: Callable[..., Gateway], fault_upstream: FaultUpstream
) -> None:
    limit = 300
    gateway = gateways(fault_upstream.url)
    org, key = gateway.new_tenant("sigkill", limits={"requests": limit})
    load = Load(gateway.url, key, concurrency=30, requests=1000, seconds=6, until_refused=True)

    async def scenario() -> None:
        running = asyncio.create_task(load.run())
        await until(lambda: len(load.outcomes) >= 120, 30)
        gateway.process.kill()
        await running

    asyncio.run(scenario())
    assert gateway.process.wait(5) == -signal.SIGKILL
    seen_ok = load.ok()
    cut = sum(1 for o in load.outcomes if o.status is None and not o.refused)
    assert 0 < seen_ok < limit
    assert {o.status for o in load.outcomes if o.status is not None} == {200}, load.statuses()

    restarted = gateways(fault_upstream.url)  # same store and data folder: adopts the spool
    adopted = usage(restarted, org)["requests"]
    # Every 2xx a client saw is counted; at most the requests cut by the kill are added.
    assert seen_ok <= adopted <= seen_ok + cut, (seen_ok, cut, adopted)
    assert history(restarted, org) == stored(restarted, org)[0]  # the adopted spool, once
    assert fault_upstream.received(org) <= adopted

    # Bounded by its request count; the time cap only stops a hang.
    more = drive(restarted.url, key, concurrency=30, requests=2 * limit, seconds=60)
    assert more.statuses().keys() == {200, 402}, more.statuses()
    assert fault_upstream.received(org) <= limit
    assert seen_ok + more.ok() <= limit
    # Exactly the limit: the dead process's reservations were released, not stranded.
    assert usage(restarted, org)["requests"] == limit
    assert history(restarted, org) == stored(restarted, org)[0]
