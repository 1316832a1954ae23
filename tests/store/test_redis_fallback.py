"""Redis failing while the truth answers: reservations fall back to the truth, and Redis
never grants again from a hash that misses what the truth granted or applied meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StoreError
from gateway.store.base import Exhausted, Granted, Store, UsageBatch
from gateway.store.redis_quota import RedisQuotaStore
from policies.model import Limits
from tests.fakes import FlakyStore
from tests.services import free_port
from tests.store.conftest import MakeStore
from tests.store.test_redis_quota import NOW, PERIOD, ask, granted

LIMITS = Limits(requests=5)


async def cut_off(make_store: MakeStore) -> RedisQuotaStore:
    """A replica on the same truth whose Redis does not answer (a partition, a dead node)."""
    return await make_store(f"redis://127.0.0.1:{free_port()}/0")


async def test_a_replica_cut_off_from_redis_reserves_in_the_truth_and_the_others_see_it(
    make_store: MakeStore, truth: Store, org: str
) -> None:
    a = await make_store()
    b = await cut_off(make_store)
    assert await a.reserve(ask(org, LIMITS, holder="a", requests=2)) == Granted({"requests": 2})
    assert await b.reserve(ask(org, LIMITS, holder="b", requests=2)) == Granted({"requests": 2})
    assert b.fallbacks == 1
    # A's hash never saw B's grant: its next grant finds the mark and rebuilds first.
    results = [await a.reserve(ask(org, LIMITS, holder="a", requests=1)) for _ in range(3)]
    assert granted(results) == 1 and isinstance(results[-1], Exhausted)
    snapshot = await truth.quota_snapshot(org, PERIOD, NOW)
    assert sum(row.amount for row in snapshot.reservations) == 5


async def test_concurrent_grants_from_redis_and_the_truth_never_pass_the_limit(
    make_store: MakeStore, truth: Store, org: str
) -> None:
    limits = Limits(requests=40)
    a, b = await make_store(), await cut_off(make_store)
    await a.reserve(ask(org, limits, holder="a", requests=1))  # the hash is loaded
    asks = [(a, "a"), (b, "b")] * 50
    results = await asyncio.gather(
        *(store.reserve(ask(org, limits, holder=holder, requests=1)) for store, holder in asks)
    )
    assert granted(list(results)) == 39
    snapshot = await truth.quota_snapshot(org, PERIOD, NOW)
    assert sum(row.amount for row in snapshot.reservations) == 40


async def test_a_commit_redis_did_not_take_marks_the_hash_and_the_flush_succeeds(
    make_store: MakeStore, truth: Store, org: str
) -> None:
    a = await make_store()
    assert await a.reserve(ask(org, LIMITS, holder="a", requests=5)) == Granted({"requests": 5})
    spent = UsageBatch("b1", "a", org, PERIOD, {"requests": 5}, {"requests": -5})
    broken = await cut_off(make_store)  # its commits reach the truth, not Redis
    assert await broken.commit_many([spent]) == [True]
    assert (await truth.quota_snapshot(org, PERIOD, NOW)).stale
    # A's hash still counts the 5 as reserved by a: released, Redis would give them again.
    await a.release("a")
    assert isinstance(await a.reserve(ask(org, LIMITS, holder="c", requests=1)), Exhausted)


async def test_with_the_truth_down_too_the_reserve_fails_for_the_gate_to_decide(
    make_store: MakeStore, truth: Store, org: str
) -> None:
    flaky = FlakyStore(truth)
    b = await make_store(f"redis://127.0.0.1:{free_port()}/0", truth=flaky)
    flaky.down = True
    with pytest.raises(StoreError):
        await b.reserve(ask(org, LIMITS, holder="b", requests=1))
