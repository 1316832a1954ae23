import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.limits.budgets import Admission, lanes_of
from gateway.limits.guard import StoreGuard
from gateway.limits.spool import Spool, read_orphan
from gateway.limits.usage import UsageGate
from gateway.store.base import OrgChanges, Store, UsageBatch
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SQLiteStore
from policies.decisions import Refusal
from policies.model import Limits, Prices, Quantities
from policies.reservations import ChunkPolicy
from tests.fakes import Clock, FlakyStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store = (
        MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "gw.db"))
    )
    await backend.open()
    yield backend
    await backend.close()


# Stores fail here on purpose, never by being slow: a budget no scheduling delay reaches.
BUDGET = 30.0


def gate(
    store: object,
    tmp_path: Path | None = None,
    *,
    breaker: Callable[[], float] = time.monotonic,
    **kwargs: object,
) -> UsageGate:
    guard = StoreGuard(timeout=BUDGET, clock=breaker)
    spool = Spool(tmp_path / "spool" if tmp_path else None, holder="h1")
    spool.open()
    return UsageGate(store, guard, spool, holder="h1", **kwargs)  # type: ignore[arg-type]


async def org_with(store: Store, **limits: int):  # type: ignore[no-untyped-def]
    return (await store.create_org("acme", Limits.from_dict(limits), None)).routing()


async def test_thousand_concurrent_requests_admit_exactly_the_remaining_hundred(
    store: Store,
) -> None:
    routing = await org_with(store, requests=150)
    usage = gate(store)
    period = usage.current_period(time.time())
    await store.commit(
        UsageBatch("pre", "other", routing.org_id, period.key, used={"requests": 50})
    )
    outcomes = await asyncio.gather(
        *(usage.admit(routing, Quantities(1, 10, 1)) for _ in range(1000))
    )
    admitted = [o for o in outcomes if isinstance(o, Admission)]
    refused = [o for o in outcomes if isinstance(o, Refusal)]
    assert len(admitted) == 100
    assert {r.code for r in refused} == {"usage_limit_exceeded"}
    assert refused[0].detail["meter"] == "requests" and refused[0].detail["limit"] == 150
    await usage.close()
    counters = await store.usage(routing.org_id, period.key)
    assert counters["requests"] == 150
    assert counters["bytes"] == 1000 and counters["items"] == 100


async def test_far_from_the_limit_one_reservation_serves_many_requests(store: Store) -> None:
    routing = await org_with(store, requests=1_000_000)
    usage = gate(store)
    for _ in range(500):
        assert isinstance(await usage.admit(routing, Quantities()), Admission)
    assert usage.stats.refills == 1


async def test_strict_mode_reserves_per_request(store: Store) -> None:
    routing = await org_with(store, requests=1_000_000)
    usage = gate(store, policy=ChunkPolicy(strict=True))
    for _ in range(5):
        await usage.admit(routing, Quantities())
    assert usage.stats.refills == 5


async def test_all_meters_fit_or_none_is_counted(store: Store) -> None:
    routing = await org_with(store, requests=100, bytes=1000)
    usage = gate(store, policy=ChunkPolicy(strict=True))
    assert isinstance(await usage.admit(routing, Quantities(1, 900, 0)), Admission)
    refusal = await usage.admit(routing, Quantities(1, 200, 0))
    assert isinstance(refusal, Refusal) and refusal.detail["meter"] == "bytes"
    assert isinstance(await usage.admit(routing, Quantities(1, 100, 0)), Admission)
    await usage.close()
    period = usage.current_period(time.time())
    counters = await store.usage(routing.org_id, period.key)
    assert (counters["requests"], counters["bytes"], counters.get("items", 0)) == (2, 1000, 0)


async def test_refund_returns_quantity_to_the_budget_and_uncounts_it(store: Store) -> None:
    routing = await org_with(store, requests=3)
    usage = gate(store)
    first = await usage.admit(routing, Quantities(1, 5, 2))
    assert isinstance(first, Admission)
    usage.refund(first)
    admitted = [await usage.admit(routing, Quantities()) for _ in range(4)]
    assert sum(isinstance(a, Admission) for a in admitted) == 3
    await usage.close()
    period = usage.current_period(time.time())
    assert (await store.usage(routing.org_id, period.key))["requests"] == 3


async def test_refund_after_flush_still_reaches_the_store(store: Store) -> None:
    routing = await org_with(store)
    usage = gate(store)
    admission = await usage.admit(routing, Quantities(1, 100, 4))
    assert isinstance(admission, Admission)
    await usage.flush()
    usage.refund(admission)
    await usage.flush()
    period = usage.current_period(time.time())
    assert await store.usage(routing.org_id, period.key) == {"requests": 0, "bytes": 0, "items": 0}


async def test_close_releases_unspent_reservations(store: Store) -> None:
    routing = await org_with(store, requests=10)
    first, second = gate(store), gate(store)
    second.holder = "h2"
    assert isinstance(await first.admit(routing, Quantities()), Admission)
    await first.close()
    admitted = [await second.admit(routing, Quantities()) for _ in range(10)]
    assert sum(isinstance(a, Admission) for a in admitted) == 9


async def test_fail_open_admits_known_orgs_and_replays_usage_exactly(tmp_path: Path) -> None:
    flaky = FlakyStore(SQLiteStore(str(tmp_path / "gw.db")))
    await flaky.open()
    routing = await org_with(flaky, requests=1_000)
    breaker = Clock(0.0)
    usage = gate(flaky, tmp_path, breaker=breaker, policy=ChunkPolicy(max_requests=2))
    for _ in range(3):
        assert isinstance(await usage.admit(routing, Quantities(1, 10, 1)), Admission)
    flaky.down = True
    results = [await usage.admit(routing, Quantities(1, 10, 1)) for _ in range(200)]
    assert all(isinstance(r, Admission) for r in results)
    assert usage.stats.fail_open >= 1
    assert await usage.flush() > 0  # spooled, not lost
    assert read_orphan(tmp_path / "spool" / "h1.jsonl").batches
    flaky.down = False
    breaker.now += 60  # past any cooldown (at most 5 s), however long the outage took
    assert await usage.flush() == 0
    await usage.close()
    period = usage.current_period(time.time())
    assert await flaky.inner.usage(routing.org_id, period.key) == {
        "requests": 203,
        "bytes": 2030,
        "items": 203,
    }
    usage._spool.close()
    await flaky.close()


async def test_a_down_store_is_not_asked_again_for_every_request(tmp_path: Path) -> None:
    flaky = FlakyStore(MemoryStore())
    routing = await org_with(flaky, requests=10**9)
    # The breaker's clock stands still: a slow loop cannot let a probe through meanwhile.
    usage = gate(flaky, breaker=Clock(0.0), policy=ChunkPolicy(strict=True))
    flaky.down = True
    for _ in range(100):
        await usage.admit(routing, Quantities())
    assert flaky.calls["reserve"] == 1


async def test_fail_open_still_refuses_an_org_known_to_be_over_its_limit() -> None:
    flaky = FlakyStore(MemoryStore())
    routing = await org_with(flaky, requests=2)
    usage = gate(flaky, policy=ChunkPolicy(strict=True), known_ttl=0.0)
    assert isinstance(await usage.admit(routing, Quantities()), Admission)
    assert isinstance(await usage.admit(routing, Quantities()), Admission)
    assert isinstance(await usage.admit(routing, Quantities()), Refusal)
    flaky.down = True
    assert isinstance(await usage.admit(routing, Quantities()), Refusal)


async def test_a_zero_limit_is_refused_before_any_store_call() -> None:
    flaky = FlakyStore(MemoryStore())
    routing = await org_with(flaky, requests=0)
    usage = gate(flaky)
    for _ in range(3):
        refusal = await usage.admit(routing, Quantities(1, 0, 0))
        assert isinstance(refusal, Refusal) and refusal.code == "usage_limit_exceeded"
        assert refusal.detail["limit"] == 0
    assert flaky.calls.get("reserve", 0) == 0


async def test_an_empty_prepaid_balance_that_blocks_is_refused_before_any_store_call() -> None:
    flaky = FlakyStore(MemoryStore())
    routing = await org_with(flaky)
    prices = Prices(requests=1_000_000, block_over_balance=True)
    routing = replace(routing, limits=replace(routing.limits, credit=0), prices=prices)
    usage = gate(flaky)
    refusal = await usage.admit(routing, Quantities(1, 0, 0).priced(prices))
    assert isinstance(refusal, Refusal) and refusal.code == "prepaid_credit_exhausted"
    assert flaky.calls.get("reserve", 0) == 0
    # What costs nothing still passes: only a need the balance cannot meet is refused.
    assert isinstance(await usage.admit(routing, Quantities(1, 0, 0)), Admission)


async def test_a_refusal_after_a_flush_still_reports_what_was_used() -> None:
    # Regression: a flush between two refusals made the second report "used": 0 (e2e flake).
    store = MemoryStore()
    routing = await org_with(store, requests=2)
    usage = gate(store, policy=ChunkPolicy(strict=True), known_ttl=60.0)
    for _ in range(2):
        assert isinstance(await usage.admit(routing, Quantities(1, 0, 0)), Admission)
    first = await usage.admit(routing, Quantities(1, 0, 0))
    await usage.flush()
    second = await usage.admit(routing, Quantities(1, 0, 0))
    assert isinstance(first, Refusal) and isinstance(second, Refusal)
    assert first.detail["used"] == second.detail["used"] == 2


def die(usage: UsageGate) -> None:
    """What SIGKILL leaves behind: the file as written, its lock released, no flush."""
    os.close(usage._spool._fd)  # type: ignore[arg-type]
    usage._spool._fd = None


async def test_spooled_batches_of_a_dead_process_are_adopted_and_committed(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "gw.db"))
    await store.open()
    routing = await org_with(store)
    dead = gate(FlakyStore(store), tmp_path)
    assert isinstance(await dead.admit(routing, Quantities(1, 7, 1)), Admission)
    dead._store.down = True  # type: ignore[attr-defined]
    await dead.flush()  # spooled as a batch; the store never confirmed it
    die(dead)
    spool = Spool(tmp_path / "spool", holder="h-new")
    spool.open()
    heir = UsageGate(store, StoreGuard(timeout=BUDGET), spool, holder="h-new")
    assert await heir.flush() == 0
    period = heir.current_period(time.time())
    assert (await store.usage(routing.org_id, period.key))["bytes"] == 7
    await heir.flush()
    assert (await store.usage(routing.org_id, period.key))["bytes"] == 7
    spool.close()
    await store.close()


async def test_a_killed_process_loses_no_admitted_usage_and_its_quota_comes_back(
    tmp_path: Path,
) -> None:
    """Regression: spends after the last flush were lost and the quota freed twice."""
    store = SQLiteStore(str(tmp_path / "gw.db"))
    await store.open()
    routing = await org_with(store, requests=10)
    dead = gate(store, tmp_path)
    await dead.flush()
    admitted = [await dead.admit(routing, Quantities(1, 3, 1)) for _ in range(4)]
    assert all(isinstance(a, Admission) for a in admitted)
    await asyncio.sleep(0)  # the spends reach the file, then the process is killed
    die(dead)
    spool = Spool(tmp_path / "spool", holder="h2")
    spool.open()
    heir = UsageGate(store, StoreGuard(timeout=BUDGET), spool, holder="h2")
    assert await heir.flush() == 0
    period = heir.current_period(time.time())
    assert await store.usage(routing.org_id, period.key) == {"requests": 4, "bytes": 12, "items": 4}
    # The dead holder's reservation was released: exactly the rest of the limit is left.
    outcomes = [await heir.admit(routing, Quantities()) for _ in range(10)]
    assert sum(isinstance(o, Admission) for o in outcomes) == 6
    await heir.close()
    spool.close()
    await store.close()


async def test_shadow_and_refusal_counters_are_meters_of_their_own(store: Store) -> None:
    routing = await org_with(store)
    usage = gate(store)
    usage.record(routing, {"shadow_refused:bytes": 30, "refused:rate_limited": 1})
    usage.admit_unmetered(routing, Quantities(1, 30, 3))
    await usage.flush()
    period = usage.current_period(time.time())
    counters = await store.usage(routing.org_id, period.key)
    assert counters["shadow_refused:bytes"] == 30 and counters["requests"] == 1
    assert counters["refused:rate_limited"] == 1
    hours = await store.usage_history(routing.org_id, "refused:rate_limited", 0, time.time() + 1)
    assert sum(n for _, n in hours) == 1


async def test_lowered_limits_seen_in_fresh_routing_return_the_old_reservation(
    store: Store,
) -> None:
    """Regression: an unspent chunk reserved under the old limit kept being spent."""
    routing = await org_with(store, requests=100)
    usage = gate(store)
    assert isinstance(await usage.admit(routing, Quantities()), Admission)
    org = await store.update_org(routing.org_id, OrgChanges(limits=Limits(requests=2)))
    assert org is not None
    outcomes = [await usage.admit(org.routing(), Quantities()) for _ in range(4)]
    assert [isinstance(o, Admission) for o in outcomes] == [True, False, False, False]


async def test_a_request_with_nothing_on_a_limited_meter_is_admitted(store: Store) -> None:
    """Regression: an empty batch for an org with an items limit raised KeyError (a 500)."""
    routing = await org_with(store, requests=10, items=5)
    usage = gate(store)
    assert isinstance(await usage.admit(routing, Quantities(1, 20, 0)), Admission)
    assert isinstance(await usage.admit(routing, Quantities(1, 20, 5)), Admission)
    assert isinstance(await usage.admit(routing, Quantities(1, 20, 0)), Admission)
    assert isinstance(await usage.admit(routing, Quantities(1, 20, 1)), Refusal)


async def test_a_budget_running_low_is_refilled_before_a_request_has_to_wait() -> None:
    """Regression: every org's requests all waited for the store each time its chunk ran out."""
    flaky = FlakyStore(MemoryStore())
    routing = await org_with(flaky, requests=10**6)
    usage = gate(flaky, policy=ChunkPolicy(max_requests=100))
    for _ in range(80):
        assert isinstance(await usage.admit(routing, Quantities()), Admission)
    # Below a quarter of the chunk: refilled in the background, once.
    await usage.settled()
    assert flaky.calls["reserve"] == 2, "no background refill, or more than one"
    flaky.delay = 3600  # the store now hangs: any request waiting for it would never finish

    async def next_hundred() -> None:
        for _ in range(100):
            assert isinstance(await usage.admit(routing, Quantities()), Admission)

    await asyncio.wait_for(next_hundred(), timeout=30)
    for task in list(usage._background):
        task.cancel()


async def test_a_background_refill_never_overlaps_a_requests_own_refill() -> None:
    """Regression: two refills of one budget at once broke single-flight (and exactness)."""
    store = MemoryStore()
    routing = await org_with(store, requests=100, bytes=1000)
    usage = gate(store)
    assert isinstance(await usage.admit(routing, Quantities(1, 900, 0)), Admission)
    assert isinstance(await usage.admit(routing, Quantities(1, 200, 0)), Refusal)
    assert isinstance(await usage.admit(routing, Quantities(1, 100, 0)), Admission)
    assert isinstance(await usage.admit(routing, Quantities(1, 1, 0)), Refusal)


async def test_requests_of_several_keys_share_the_org_s_reservation() -> None:
    """Regression: each request of another key than the last looked like a change of limits,
    so the org's whole reservation was given back and flushed, once a request: a store round
    trip each, and replicas refusing one another with 429 for quota neither could spend."""
    flaky = FlakyStore(MemoryStore())
    org = await flaky.create_org("acme", Limits(requests=10**6), None)
    keys = [
        await flaky.create_key(org.id, f"hash-{n}".encode(), limits=Limits(items=10**6))
        for n in range(3)
    ]
    routings = [key.routing(org) for key in keys]
    usage = gate(flaky)
    for n in range(300):
        admitted = await usage.admit(routings[n % 3], Quantities(1, 10, 1))
        assert isinstance(admitted, Admission)
    await usage.settled()
    assert flaky.calls.get("commit_many", 0) == 0  # nothing was given back
    assert flaky.calls["reserve"] <= 12  # a few chunks for 300 requests, not one each


async def test_a_flushed_key_leaves_nothing_behind_in_its_org_s_budget(store: Store) -> None:
    # Each key of an org has meters of its own in the org's budget; once flushed, a key that
    # sends no more must hold no memory there (100,000 keys held 90 MB before this).
    routing = await org_with(store, requests=1_000_000)
    usage = gate(store)
    for n in range(200):
        keyed = replace(routing, key_id=f"key_{n}")
        assert isinstance(
            await usage.admit(keyed, Quantities(1, 10, 1, signal="traces")), Admission
        )
    await usage.flush()
    (budget,) = usage._budgets.values()
    assert budget.committing == {} and budget.used == {}
    period = usage.current_period(time.time())
    counters = await store.usage(routing.org_id, period.key)
    assert counters["key/key_7/items"] == 1 and counters["requests"] == 200
    await usage.close()


async def test_a_flush_of_many_active_orgs_commits_them_in_a_few_group_calls() -> None:
    # A flush committed one transaction per active org: 2,000 orgs took 2.37 s on PostgreSQL.
    flaky = FlakyStore(MemoryStore())
    routings = [
        (await flaky.create_org(f"o{n}", Limits(requests=10), None)).routing() for n in range(2_500)
    ]
    breaker = Clock()
    usage = gate(flaky, breaker=breaker)
    for routing in routings:
        assert isinstance(await usage.admit(routing, Quantities(1, 10, 1)), Admission)
    flaky.failing = {"commit_many"}
    assert await usage.flush() == 2_500  # every batch stays pending in the spool
    flaky.failing = set()
    breaker.advance(3600)  # past the breaker's wait: one probe, then the rest
    assert await usage.flush() < 2_500
    assert await usage.flush() == 0
    assert flaky.calls.get("commit", 0) == 0
    # Two lanes by org, each in groups of FLUSH_GROUP: at most 2 calls failed, then 4 or 5
    # landed, and a lane the half-open breaker held back once.
    assert flaky.calls["commit_many"] <= 2 + 5 + 1
    period = usage.current_period(time.time()).key
    used = [(await flaky.usage(r.org_id, period)).get("requests") for r in routings]
    assert used == [1] * 2_500


def test_lanes_split_batches_by_org_and_keep_each_org_s_order() -> None:
    batches = [UsageBatch(str(n), "h", f"org{n % 7}", "p") for n in range(50)]
    lanes = lanes_of(batches)
    assert sorted(b.batch_id for lane in lanes for b in lane) == sorted(b.batch_id for b in batches)
    for lane in lanes:
        assert [int(b.batch_id) for b in lane] == sorted(int(b.batch_id) for b in lane)
    orgs = [b.org_id for lane in lanes for b in {b.org_id: b for b in lane}.values()]
    assert len(lanes) == 2 and sorted(orgs) == sorted(set(orgs))  # no org in both lanes
