"""Stale marks in the truth, on every backend (see conftest.py): what tells Redis counters
in front to rebuild before they grant again."""

from __future__ import annotations

from dataclasses import replace

from gateway.store import Granted, Store
from tests.store.test_contract import PERIOD, ask, org_with


async def test_a_grant_from_counters_older_than_the_last_mark_is_not_recorded(
    store: Store,
) -> None:
    org = await org_with(store, requests=10)
    request = ask(org, holder="a", requests=2)
    assert await store.add_reservation(request, {"requests": 2}, 0) is False
    assert (await store.quota_snapshot(org.id, PERIOD, 1_000.0)).stale == 0

    await store.mark_stale([(org.id, PERIOD), (org.id, PERIOD)])
    assert await store.add_reservation(request, {"requests": 3}, 0) is True  # nothing recorded
    first = (await store.quota_snapshot(org.id, PERIOD, 1_000.0)).stale
    assert first > 0
    # Counters rebuilt from that snapshot record again, until the next mark.
    assert await store.add_reservation(request, {"requests": 1}, first) is False
    await store.mark_stale([(org.id, PERIOD)])
    assert await store.add_reservation(request, {"requests": 4}, first) is True
    snapshot = await store.quota_snapshot(org.id, PERIOD, 1_000.0)
    assert snapshot.stale > first
    assert [(r.holder, r.amount) for r in snapshot.reservations] == [("a", 3)]


async def test_a_fallback_grant_marks_its_counter_and_others_are_untouched(store: Store) -> None:
    org, other = await org_with(store, requests=10), await org_with(store, requests=10)
    fallback = replace(ask(org, holder="b", requests=4), mark_stale=True)
    truth = getattr(store, "durable", store)  # the flag is the truth's, not Redis's in front
    assert await truth.reserve(fallback) == Granted({"requests": 4})
    assert (await store.quota_snapshot(org.id, PERIOD, 1_000.0)).stale > 0
    assert (await store.quota_snapshot(other.id, PERIOD, 1_000.0)).stale == 0
    assert (
        await store.add_reservation(ask(other, holder="a", requests=1), {"requests": 1}, 0) is False
    )
    assert await store.add_reservation(ask(org, holder="a", requests=1), {"requests": 1}, 0) is True
