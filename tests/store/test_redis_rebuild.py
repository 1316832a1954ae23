"""Rebuilds of a lost Redis quota hash that race a grant's write-through or a commit.

Each test replays one interleaving step by step: a gate stops one call of the truth
where the race happens, the test makes Redis lose the hash (as a restart, flush or
eviction does) and has another instance rebuild it, then opens the gate. Without the
fix each of these ends with Redis counting less than was handed out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from gateway.store.base import (
    Exhausted,
    Granted,
    QuotaSnapshot,
    ReserveRequest,
    Store,
    UsageBatch,
)
from gateway.store.redis_quota import RedisQuotaStore
from policies.model import Limits
from policies.reservations import ChunkPolicy
from tests.store.conftest import MakeStore, NewStore

PERIOD = "2024-05-01T00:00:00+00:00"
NOW = time.time()
LIMITS = Limits(requests=10)


class Gate:
    """Where a call waits until the test opens it; ``reached`` tells the test it is there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def wait(self) -> None:
        self.reached.set()
        await self.opened.wait()


class GatedTruth:
    """A truth whose first call of each gated method stops at its gate.

    ``add_reservation`` stops before it writes; ``commit`` and ``quota_snapshot`` after
    they have written or read.
    """

    def __init__(self, inner: Store, **gates: Gate) -> None:
        self.inner = inner
        self.gates = gates

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _gate(self, name: str) -> None:
        gate = self.gates.pop(name, None)
        if gate is not None:
            await gate.wait()

    async def add_reservation(
        self, request: ReserveRequest, amounts: Mapping[str, int], generation: int | None = None
    ) -> bool:
        await self._gate("add_reservation")
        return await self.inner.add_reservation(request, amounts, generation)

    async def commit_many(self, batches: Sequence[UsageBatch]) -> list[bool]:
        applied = await self.inner.commit_many(batches)
        await self._gate("commit")
        return applied

    async def quota_snapshot(self, org_id: str, period_start: str, now: float) -> QuotaSnapshot:
        snapshot = await self.inner.quota_snapshot(org_id, period_start, now)
        await self._gate("quota_snapshot")
        return snapshot


def ask(org: str, holder: str, requests: int) -> ReserveRequest:
    return ReserveRequest(
        holder,
        org,
        PERIOD,
        {"requests": requests},
        ChunkPolicy(strict=True),
        NOW,
        60.0,
        limits=LIMITS,
        period_end=NOW + 86400,
    )


async def quota_hash(raw: aioredis.Redis, store: RedisQuotaStore, org: str) -> dict[str, str]:
    fields = await raw.hgetall(store.quota_key(org, PERIOD))
    return {str(name): str(value) for name, value in fields.items()}


async def gated(make_store: MakeStore, new_truth: NewStore, **gates: Gate) -> RedisQuotaStore:
    return await make_store(truth=GatedTruth(new_truth(), **gates))


# a grant written through while the hash is lost


async def test_grant_written_through_across_a_rebuild_is_added_to_the_new_hash(
    make_store: MakeStore, new_truth: NewStore, raw: aioredis.Redis, org: str
) -> None:
    gate = Gate()
    a = await gated(make_store, new_truth, add_reservation=gate)
    b = await make_store()

    reserving = asyncio.create_task(a.reserve(ask(org, "a", 6)))
    await gate.reached.wait()  # Redis granted 6; the truth has not recorded them yet
    await raw.delete(a.quota_key(org, PERIOD))
    assert await b.reserve(ask(org, "b", 1)) == Granted({"requests": 1})  # rebuilt without them
    gate.opened.set()
    assert await reserving == Granted({"requests": 6})

    state = await quota_hash(raw, b, org)
    assert (state["res:a:requests"], state["res:b:requests"]) == ("6", "1")
    assert await b.reserve(ask(org, "b", 4)) == Exhausted("requests", 10, 7)
    assert await b.reserve(ask(org, "b", 3)) == Granted({"requests": 3})


async def test_rebuild_that_read_the_truth_before_a_grant_landed_reads_it_again(
    make_store: MakeStore, new_truth: NewStore, raw: aioredis.Redis, org: str
) -> None:
    grant, snapshot = Gate(), Gate()
    a = await gated(make_store, new_truth, add_reservation=grant)
    b = await gated(make_store, new_truth, quota_snapshot=snapshot)

    reserving = asyncio.create_task(a.reserve(ask(org, "a", 6)))
    await grant.reached.wait()
    await raw.delete(a.quota_key(org, PERIOD))
    rebuilding = asyncio.create_task(b.reserve(ask(org, "b", 1)))
    await snapshot.reached.wait()  # b has read a truth without a's grant, not loaded it yet
    grant.opened.set()
    assert await reserving == Granted({"requests": 6})  # the hash is still missing
    snapshot.opened.set()
    assert await rebuilding == Granted({"requests": 1})

    state = await quota_hash(raw, b, org)
    assert (state["res:a:requests"], state["res:b:requests"]) == ("6", "1")
    assert "loading" not in state
    assert await b.reserve(ask(org, "b", 4)) == Exhausted("requests", 10, 7)


async def test_grant_written_through_while_the_hash_is_missing_comes_back_from_the_truth(
    make_store: MakeStore, new_truth: NewStore, raw: aioredis.Redis, org: str
) -> None:
    gate = Gate()
    a = await gated(make_store, new_truth, add_reservation=gate)
    reserving = asyncio.create_task(a.reserve(ask(org, "a", 6)))
    await gate.reached.wait()
    await raw.delete(a.quota_key(org, PERIOD))
    gate.opened.set()
    assert await reserving == Granted({"requests": 6})

    assert await a.reserve(ask(org, "b", 5)) == Exhausted("requests", 10, 6)
    assert (await quota_hash(raw, a, org))["res:a:requests"] == "6"


# a commit and a rebuild crossing


async def test_batch_the_rebuild_loaded_is_not_applied_again(
    make_store: MakeStore, new_truth: NewStore, raw: aioredis.Redis, org: str
) -> None:
    gate = Gate()
    a = await gated(make_store, new_truth, commit=gate)
    b = await make_store()
    assert await a.reserve(ask(org, "a", 6)) == Granted({"requests": 6})
    # a spent 1 and gives 2 back: 3 stay in its local budget.
    batch = UsageBatch("batch-1", "a", org, PERIOD, {"requests": 1}, {"requests": -3})

    committing = asyncio.create_task(a.commit(batch))
    await gate.reached.wait()  # the truth holds the batch, Redis has not seen it
    await raw.delete(a.quota_key(org, PERIOD))
    assert await b.reserve(ask(org, "b", 1)) == Granted({"requests": 1})
    gate.opened.set()
    assert await committing is True

    state = await quota_hash(raw, b, org)
    assert (state["used:requests"], state["res:a:requests"]) == ("1", "3")
    # The load's marker lives as long as apply.lua's would.
    assert await raw.ttl(a.batch_key(org, "batch-1")) > 13 * 86400
    assert await a.commit(batch) is False  # a replay from the spool
    assert await quota_hash(raw, b, org) == state
    assert await b.reserve(ask(org, "b", 6)) == Exhausted("requests", 10, 5)
    assert await b.reserve(ask(org, "b", 5)) == Granted({"requests": 5})


async def test_batch_applied_while_a_rebuild_reads_the_truth_makes_it_read_again(
    make_store: MakeStore, new_truth: NewStore, raw: aioredis.Redis, org: str
) -> None:
    gate = Gate()
    a = await make_store()
    b = await gated(make_store, new_truth, quota_snapshot=gate)
    assert await a.reserve(ask(org, "a", 3)) == Granted({"requests": 3})
    await raw.delete(a.quota_key(org, PERIOD))

    rebuilding = asyncio.create_task(b.reserve(ask(org, "b", 1)))
    await gate.reached.wait()  # b has read used 0, not loaded it yet
    # Usage admitted while the store was unreachable, replayed: no reservation behind it.
    assert await a.commit(UsageBatch("replayed", "a", org, PERIOD, {"requests": 5})) is True
    gate.opened.set()
    assert await rebuilding == Granted({"requests": 1})

    state = await quota_hash(raw, b, org)
    assert (state["used:requests"], state["res:a:requests"], state["res:b:requests"]) == (
        "5",
        "3",
        "1",
    )
    assert not any(name.startswith(("loading", "applied:")) for name in state)
    assert await b.reserve(ask(org, "b", 2)) == Exhausted("requests", 10, 9)
