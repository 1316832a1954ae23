"""Unspent quota goes back: two usage gates (two replicas) on one store, with one clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.guard import StoreGuard
from gateway.spool import Spool
from gateway.store.base import Store
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SQLiteStore
from gateway.usage import Admission, UsageGate
from policies.decisions import Refusal
from policies.model import Limits, OrgRouting, Quantities
from tests.fakes import Clock

ONE = Quantities(1, 0, 0)
START = 1_800_000_000.0  # mid-month, far from a period boundary


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    backend: Store = (
        MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "gw.db"))
    )
    await backend.open()
    yield backend  # type: ignore[misc]
    await backend.close()


def replica(store: Store, clock: Clock, name: str, **kwargs: object) -> UsageGate:
    spool = Spool(None, holder=name)
    spool.open()
    guard = StoreGuard(timeout=30.0)
    return UsageGate(store, guard, spool, holder=name, clock=clock, **kwargs)  # type: ignore[arg-type]


async def admitted(gate: UsageGate, routing: OrgRouting, n: int) -> int:
    count = 0
    for _ in range(n):
        count += isinstance(await gate.admit(routing, ONE), Admission)
    return count


async def test_a_budget_idle_for_two_flush_intervals_goes_back(store: Store) -> None:
    clock = Clock(START)
    routing = (await store.create_org("uneven", Limits(requests=100), None)).routing()
    a = replica(store, clock, "a", idle_after=2.0)
    b = replica(store, clock, "b", idle_after=2.0)
    assert await admitted(b, routing, 1) == 1
    await b.flush()
    first = await admitted(a, routing, 120)
    assert first < 99  # B still holds an unspent chunk
    clock.now += 1.0
    await b.flush()  # one interval: B keeps its chunk
    clock.now += 1.0
    await b.flush()  # two intervals without a spend: B's unspent part goes back
    clock.now += 1.5  # A's cached refusal (1 s) is over
    more = await admitted(a, routing, 120)
    assert first + more == 99
    await a.flush()
    period = a.current_period(clock.now)
    assert (await store.usage(routing.org_id, period.key))["requests"] == 100


async def test_a_busy_budget_is_kept(store: Store) -> None:
    clock = Clock(START)
    routing = (await store.create_org("busy", Limits(requests=1000), None)).routing()
    b = replica(store, clock, "b", idle_after=2.0)
    for _ in range(5):
        assert await admitted(b, routing, 1) == 1
        clock.now += 1.0
        await b.flush()
    assert b.give_back(routing.org_id)  # it still held quota after five busy intervals


async def test_a_refused_holder_asks_the_others_to_give_back_at_once(store: Store) -> None:
    clock = Clock(START)
    routing = (await store.create_org("contended", Limits(requests=100), None)).routing()
    asked: list[str] = []
    a = replica(store, clock, "a", on_contention=asked.append)
    b = replica(store, clock, "b")
    assert await admitted(b, routing, 1) == 1
    await b.flush()
    refused = await a.admit(routing, Quantities(1, 0, 0))
    while isinstance(refused, Admission):
        refused = await a.admit(routing, ONE)
    assert isinstance(refused, Refusal) and asked == [routing.org_id]
    # B gets the message, returns its chunk and flushes; A's next ask is granted.
    assert b.give_back(routing.org_id)
    await b.flush()
    clock.now += 1.5
    assert isinstance(await a.admit(routing, ONE), Admission)
    # Asked at most once a second, however many refusals.
    for _ in range(3):
        await a.admit(routing, ONE)
    assert len(asked) <= 2


async def test_the_refusal_reports_committed_usage_not_reservations(store: Store) -> None:
    clock = Clock(START)
    routing = (await store.create_org("report", Limits(requests=50), None)).routing()
    a = replica(store, clock, "a")
    b = replica(store, clock, "b")
    assert await admitted(b, routing, 3) == 3
    await b.flush()  # 3 committed; B still reserves a chunk it has not spent
    refusal = None
    spent = 0
    while refusal is None:
        outcome = await a.admit(routing, ONE)
        if isinstance(outcome, Refusal):
            refusal = outcome
        else:
            spent += 1
    # Seen: used reported used + every reservation (46 while usage was 37).
    assert refusal.detail["used"] == 3 + spent
    assert refusal.detail["limit"] == 50
