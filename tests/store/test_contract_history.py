"""The Store contract, usage history part: every backend must pass every test here."""

from __future__ import annotations

from gateway.store import Store
from gateway.store.records import UsageBatch
from policies.model import Limits

PERIOD = "2026-12-01T00:00:00+00:00"
HOUR = 1_764_547_200  # 2025-12-01T00:00:00Z, an hour's start


def batch(org_id: str, batch_id: str, at: float, **used: int) -> UsageBatch:
    meters = {name.replace("__", "."): n for name, n in used.items()}
    return UsageBatch(batch_id, "replica-a", org_id, PERIOD, used=meters, at=at)


async def test_a_batch_goes_to_the_hour_it_was_taken_in_once_whatever_its_replays(
    store: Store,
) -> None:
    org = await store.create_org("acme", Limits(), None)
    first = batch(org.id, "b1", HOUR + 600, items=5, traces__items=5, requests=1)
    assert await store.commit(first) is True
    assert await store.commit(first) is False  # a replay: neither counters nor history move
    await store.commit(batch(org.id, "b2", HOUR + 3599, items=-2, traces__items=-2))  # refund
    await store.commit(batch(org.id, "b3", HOUR + 2 * 3600 + 5, items=7))
    assert await store.usage_history(org.id, "items", HOUR, HOUR + 3 * 3600) == [
        (HOUR, 3),
        (HOUR + 2 * 3600, 7),
    ]
    assert await store.usage_history(org.id, "traces.items", HOUR, HOUR + 3600) == [(HOUR, 3)]
    assert await store.usage_history(org.id, "items", HOUR + 3600, HOUR + 3 * 3600) == [
        (HOUR + 2 * 3600, 7)
    ]
    counters = await store.usage(org.id, PERIOD)
    for meter in ("items", "traces.items", "requests"):
        hours = await store.usage_history(org.id, meter, 0, 2**40)
        assert sum(n for _, n in hours) == counters[meter], meter


async def test_a_key_s_meters_have_their_history_and_orgs_never_share(store: Store) -> None:
    org = await store.create_org("acme", Limits(), None)
    other = await store.create_org("other", Limits(), None)
    await store.commit(batch(org.id, "k1", HOUR, items=4, **{"key/key_a/items": 4}))
    await store.commit(batch(other.id, "k2", HOUR, items=9))
    assert await store.usage_history(org.id, "key/key_a/items", HOUR, HOUR + 3600) == [(HOUR, 4)]
    assert await store.usage_history(org.id, "items", HOUR, HOUR + 3600) == [(HOUR, 4)]
    assert await store.usage_history(other.id, "items", HOUR, HOUR + 3600) == [(HOUR, 9)]


async def test_prune_forgets_the_hours_before_a_time_and_keeps_the_rest(store: Store) -> None:
    org = await store.create_org("acme", Limits(), None)
    await store.commit(batch(org.id, "old", HOUR, items=1))
    await store.commit(batch(org.id, "new", HOUR + 3600, items=2))
    await store.prune_history(HOUR + 3600)
    assert await store.usage_history(org.id, "items", 0, 2**40) == [(HOUR + 3600, 2)]
