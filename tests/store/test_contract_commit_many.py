"""Group commits: many orgs' usage batches in one store call, each exactly as ``commit``
would apply it, on every backend (see conftest.py)."""

from __future__ import annotations

import asyncio

from gateway.store import Exhausted, Granted, Store, UsageBatch
from gateway.store.records import rounds
from tests.store.conftest import NewStore
from tests.store.test_contract import NEXT_PERIOD, PERIOD, ask, org_with

AT = 1_717_200_000.0  # an hour of the usage history


async def test_a_group_applies_each_new_batch_once_across_orgs_and_periods(store: Store) -> None:
    orgs = [await org_with(store, requests=100) for _ in range(3)]
    for org in orgs:
        assert await store.reserve(ask(org, holder="a", requests=10)) == Granted({"requests": 10})
    old = UsageBatch("old", "a", orgs[0].id, PERIOD, {"requests": 1}, at=AT)
    assert await store.commit(old) is True
    group = [
        UsageBatch(
            f"b{i}", "a", org.id, PERIOD, {"requests": i + 2, "bytes": 7}, {"requests": -10}, at=AT
        )
        for i, org in enumerate(orgs)
    ]
    group += [old, UsageBatch("next", "a", orgs[1].id, NEXT_PERIOD, {"requests": 4}, at=AT)]

    assert await store.commit_many(group) == [True, True, True, False, True]
    assert await store.commit_many(group) == [False] * 5
    assert await store.usage(orgs[0].id, PERIOD) == {"requests": 3, "bytes": 7}
    assert await store.usage(orgs[1].id, PERIOD) == {"requests": 3, "bytes": 7}
    assert await store.usage(orgs[1].id, NEXT_PERIOD) == {"requests": 4}
    assert await store.usage(orgs[2].id, PERIOD) == {"requests": 4, "bytes": 7}
    # Each reservation went back with its batch: the rest of the limit is free again.
    free = 100 - 4
    assert await store.reserve(ask(orgs[2], holder="b", requests=free)) == Granted(
        {"requests": free}
    )
    hours = await store.usage_history(orgs[0].id, "requests", AT - 3600, AT + 3600)
    assert [n for _, n in hours] == [3]


async def test_batches_of_one_holder_and_org_apply_in_order_like_single_commits(
    store: Store,
) -> None:
    # Clamped at zero after the first, grown by the second: summed first, it would clamp once.
    org = await org_with(store, requests=10)
    await store.reserve(ask(org, holder="a", requests=4))
    group = [
        UsageBatch("b1", "a", org.id, PERIOD, {"requests": 1}, {"requests": -9}),
        UsageBatch("b2", "a", org.id, PERIOD, {"requests": 1}, {"requests": 3}),
        UsageBatch("b1", "a", org.id, PERIOD, {"requests": 1}, {"requests": -9}),  # twice
    ]
    assert await store.commit_many(group) == [True, True, False]
    assert await store.usage(org.id, PERIOD) == {"requests": 2}
    # 10 - 2 used - 3 still reserved by a.
    assert await store.reserve(ask(org, holder="b", requests=5)) == Granted({"requests": 5})
    assert isinstance(await store.reserve(ask(org, holder="b", requests=1)), Exhausted)


def test_rounds_hold_each_holder_and_org_once_and_keep_the_order() -> None:
    def b(i: str, holder: str, org: str) -> UsageBatch:
        return UsageBatch(i, holder, org, PERIOD)

    group = [
        b("1", "a", "x"),
        b("2", "a", "y"),
        b("3", "b", "x"),
        b("4", "a", "x"),
        b("5", "a", "z"),
    ]
    assert [[x.batch_id for x in r] for r in rounds(group)] == [["1", "2", "3"], ["4", "5"]]
    assert rounds([]) == []


async def test_replicas_committing_overlapping_groups_while_reserving_count_each_batch_once(
    durable: NewStore,
) -> None:
    first, second = durable(), durable()
    await first.open()
    await second.open()
    try:
        orgs = [await org_with(first, requests=10_000) for _ in range(20)]
        groups = [
            [
                UsageBatch(f"{org.id}-{n}", "a", org.id, PERIOD, {"requests": 1, "bytes": 3})
                for org in (orgs if n % 2 else orgs[::-1])
            ]
            for n in range(6)
        ]

        async def commits(store: Store) -> None:
            for group in groups:
                await store.commit_many(group)

        async def reserves(store: Store) -> None:
            for org in orgs:
                await store.reserve(ask(org, holder="a", requests=2))

        await asyncio.wait_for(
            asyncio.gather(commits(first), commits(second), reserves(first), reserves(second)),
            timeout=60,
        )
        for org in orgs:
            assert await first.usage(org.id, PERIOD) == {"requests": 6, "bytes": 18}
    finally:
        await first.close()
        await second.close()
